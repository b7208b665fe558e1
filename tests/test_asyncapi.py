"""The AsyncAPI document of the bus cannot drift from contract.py."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import msgspec

from gandalf_common import asyncapi, contract

ROOT = Path(__file__).resolve().parent.parent


def test_committed_document_is_current() -> None:
    committed = (ROOT / asyncapi.DEFAULT_PATH).read_text()
    assert committed == asyncapi.render(), (
        "docs/asyncapi.yaml is stale: run `python -m gandalf_common.asyncapi`")


def _addresses() -> list[str]:
    return [ch.address for ch in asyncapi.CHANNELS if ch.address]


def _matches(subject: str) -> bool:
    for address in _addresses():
        pattern = "^" + re.sub(r"\\\{[a-z]+\\\}", r"[^.]+", re.escape(address)) + "$"
        if re.match(pattern, subject):
            return True
    return False


def test_every_subject_of_the_contract_has_a_channel() -> None:
    for name, value in vars(contract).items():
        if not isinstance(value, str) or not value.startswith("gandalf."):
            continue
        if value.endswith((".*", ".>")):  # wildcards cover channels listed on their own
            continue
        assert _matches(value), f"contract.{name} = {value!r} has no channel in asyncapi.py"
    # and every subject function
    for name, fn in vars(contract).items():
        if not (inspect.isfunction(fn) and name.endswith("_subject")):
            continue
        args = ["x"] * len(inspect.signature(fn).parameters)
        subject = fn(*args)
        assert _matches(subject), f"contract.{name}() = {subject!r} has no channel"
    for name in ("ping_provider",):
        assert _matches(getattr(contract, name)("x"))


def test_every_struct_of_the_contract_has_a_schema() -> None:
    schemas = asyncapi.document()["components"]["schemas"]
    structs = [v for v in vars(contract).values()
               if isinstance(v, type) and issubclass(v, msgspec.Struct)
               and v is not msgspec.Struct]
    assert structs
    missing = [s.__name__ for s in structs if s.__name__ not in schemas]
    assert not missing, f"Structs without a schema in the AsyncAPI document: {missing}"


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        for v in node.values():
            found += _refs(v)
        return found
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_reference_resolves() -> None:
    doc = asyncapi.document()
    refs = _refs(doc)
    assert len(refs) > 30
    for ref in refs:
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            assert part in node, f"unresolved {ref}"
            node = node[part]
    assert doc["asyncapi"] == "3.0.0"
    for op in doc["operations"].values():
        assert op["action"] in ("send", "receive")
