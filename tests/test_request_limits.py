"""Client trees over the gateway's bounds are 400s through the whole
pipeline, and the gateway keeps answering: exponential ``$ref`` schemas on
a Gemini route, and (at the ingress) numbers out of range, nesting too deep
and proxy fields that would redirect the upstream call."""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gandalf_common.errors import BadRequestError
from gandalf_ingress.body_policy import FORBIDDEN_FIELDS, FORBIDDEN_PREFIXES, check_body
from gateway_harness import TEST_KEY

CHAT = "/v1/chat/completions"
AUTH = {"authorization": f"Bearer {TEST_KEY}"}
#: 129 bytes that would expand to ~2^33 nodes if inlined to depth 32.
SELF_REF = json.loads('{"$defs":{"a":{"type":"object","properties":{"x":{"$ref":"#/$defs/a"},'
                      '"y":{"$ref":"#/$defs/a"}}}},"$ref":"#/$defs/a","type":"object"}')


def _chat(model: str = "gem", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def _calls(upstream: Any) -> list[Any]:
    return [r for r in upstream.requests if r.path != "/oauth2/token"]


async def _post(gateway: Any, body: dict[str, Any] | bytes) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as http:
        return await http.post(CHAT, content=content,
                               headers={**AUTH, "content-type": "application/json"})


def _error(resp: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error: dict[str, Any] = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    return error


@pytest.mark.parametrize("alias", ["gem", "gem-vertex"])
@pytest.mark.parametrize("where", ["tools", "response_format"])
async def test_recursive_schema_is_400_on_gemini(gateway: Any, upstream: Any, alias: str,
                                                where: str) -> None:
    extra = {"tools": [{"type": "function", "function": {"name": "f", "parameters": SELF_REF}}]} \
        if where == "tools" else \
        {"response_format": {"type": "json_schema", "json_schema": {"name": "r",
                                                                     "schema": SELF_REF}}}
    started = time.monotonic()
    error = _error(await _post(gateway, _chat(alias, **extra)))
    assert time.monotonic() - started < 5
    assert error["code"] == "schema_recursive" and "recursive" in error["message"]
    assert _calls(upstream) == []
    ok = await _post(gateway, _chat(alias))
    assert ok.status_code == 200, ok.text


async def test_wide_schema_is_400_too_large(gateway: Any, upstream: Any) -> None:
    defs = {f"L{i}": {"type": "object", "properties": {
        f"p{j}": {"$ref": f"#/$defs/L{i + 1}"} for j in range(10)}} for i in range(6)}
    defs["L6"] = {"type": "string"}
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "$defs": defs, "$ref": "#/$defs/L0"}}}
    error = _error(await _post(gateway, _chat(tools=[tool])))
    assert error["code"] == "schema_too_large" and "10000" in error["message"]
    assert _calls(upstream) == []


# ------------------------------------------------------------- ingress policy


@pytest.mark.parametrize(("raw", "where"), [
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "x": 1e9999}', "$.x"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": -1e9999}',
     "$.temperature"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], '
     b'"metadata": {"n": [1, 18446744073709551616]}}', "$.metadata.n[1]"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "seed": -'
     + b"9" * 5000 + b"}", "$"),  # too long for int(): the decoder names no key
])
async def test_number_out_of_range_is_400(gateway: Any, upstream: Any, raw: bytes,
                                          where: str) -> None:
    error = _error(await _post(gateway, raw))
    assert error["code"] == "number_out_of_range" and where in error["message"]
    assert _calls(upstream) == []


async def test_number_out_of_range_on_a_native_endpoint(gateway: Any, upstream: Any) -> None:
    body = b'{"model": "claude", "max_tokens": 5, "messages": [], "x": [1e400]}'
    async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as http:
        resp = await http.post("/v1/messages", content=body, headers={
            "x-api-key": TEST_KEY, "content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    # Anthropic's error shape (no code): the message says it.
    assert "number out of range at $.x[0]" in resp.json()["error"]["message"]
    assert _calls(upstream) == []


async def test_in_range_numbers_pass(gateway: Any, upstream: Any) -> None:
    body = _chat("m", seed=2 ** 63 - 1, temperature=1e-300,
                 metadata={"big": -(2 ** 63), "f": 1.7e308})
    resp = await _post(gateway, body)
    assert resp.status_code == 200, resp.text


async def test_nesting_past_64_levels_is_400(gateway: Any, upstream: Any) -> None:
    ok = {"model": "m", "messages": [{"role": "user", "content": "x"}],
          "metadata": json.loads("[" * 60 + "]" * 60)}
    assert (await _post(gateway, ok)).status_code == 200
    deep = {**ok, "metadata": json.loads("[" * 70 + "]" * 70)}
    error = _error(await _post(gateway, deep))
    assert error["code"] == "too_deep" and "64" in error["message"]
    assert (await _post(gateway, _chat("m"))).status_code == 200


@pytest.mark.parametrize("field", ["api_base", "extra_headers", "extra_body", "extra_query",
                                   "custom_llm_provider", "litellm_params", "aws_session_token"])
async def test_forbidden_field_is_400(gateway: Any, upstream: Any, field: str) -> None:
    error = _error(await _post(gateway, _chat("m", **{field: {"x": "http://evil"}})))
    assert error["code"] == "forbidden_field" and error["param"] == field
    assert f"`{field}`" in error["message"]
    assert _calls(upstream) == []


async def test_forbidden_field_on_a_native_endpoint(gateway: Any, upstream: Any) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as http:
        resp = await http.post("/v1/messages", headers={"x-api-key": TEST_KEY}, json={
            "model": "claude", "max_tokens": 5, "api_base": "http://evil",
            "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 400 and "`api_base`" in resp.text
    assert _calls(upstream) == []


def test_readme_lists_the_refused_fields() -> None:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text.split("### Request body limits", 1)[1].split("\n#", 1)[0]
    listed = section.split("Refused fields:", 1)[1].split("(`metadata`", 1)[0]
    names = re.findall(r"`([a-z_]+)`", listed)
    assert names[-1] == "litellm_" and FORBIDDEN_PREFIXES == ("litellm_",)
    assert names[:-1] == list(FORBIDDEN_FIELDS)


# ------------------------------------------------------------- unit checks


@pytest.mark.parametrize(("depth", "ok"), [(64, True), (65, False)])
def test_depth_bound_is_exact(depth: int, ok: bool) -> None:
    body = b'{"a": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
    if ok:
        check_body(body)
    else:
        with pytest.raises(BadRequestError, match="too deeply"):
            check_body(body)


@settings(max_examples=200, deadline=timedelta(milliseconds=500))
@given(st.binary(max_size=200) | st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                               max_size=3),
    max_leaves=30).map(lambda v: json.dumps(v).encode()))
def test_check_body_raises_only_bad_request(body: bytes) -> None:
    try:
        check_body(body)
    except BadRequestError as exc:
        assert exc.code in ("number_out_of_range", "too_deep", "forbidden_field")
