"""OpenAI <-> Anthropic Messages translation against golden fixtures
(tests/golden/anthropic): requests, responses and streams."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gandalf_common.contract import Usage
from gandalf_workers.translate.anthropic import (
    TranslationError,
    from_anthropic_response,
    json_schema_tool,
    to_anthropic_request,
)
from gandalf_workers.translate.anthropic_stream import (
    AnthropicStreamError,
    AnthropicStreamTranslator,
)

GOLDEN = Path(__file__).parent / "golden" / "anthropic"


def _load(name: str) -> dict[str, Any]:
    return json.loads((GOLDEN / name).read_text())


def _cases(prefix: str) -> list[Any]:
    out = []
    for path in sorted(GOLDEN.glob(f"{prefix}*.json")):
        for case in json.loads(path.read_text())["cases"]:
            out.append(pytest.param(case, id=f"{path.stem}: {case['name']}"))
    return out


# ------------------------------------------------------------------ requests


@pytest.mark.parametrize("case", _cases("request_"))
def test_request_golden(case: dict[str, Any]) -> None:
    original = json.dumps(case["openai"])
    assert to_anthropic_request(case["openai"]) == case["anthropic"]
    assert json.dumps(case["openai"]) == original  # the client's payload is not modified


def test_request_model_override() -> None:
    body = to_anthropic_request({"model": "alias", "messages": [{"role": "user", "content": "x"}]},
                                model="claude-upstream-id")
    assert body["model"] == "claude-upstream-id"


@pytest.mark.parametrize(("payload", "fragment"), [
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{nope"}}]}]},
     "not valid JSON"),
    ({"messages": [{"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]},
     "JSON object"),
    ({"messages": []}, "non-empty"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n > 1"),
    ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "unsupported role"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "tool_call_id"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
     "input_audio"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]}, "data: or http"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search"}]},
     "tools"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [
        {"type": "function", "function": {"name": "f"}}], "tool_choice": "sometimes"},
     "tool_choice"),
])
def test_request_errors(payload: dict[str, Any], fragment: str) -> None:
    with pytest.raises(TranslationError, match=fragment):
        to_anthropic_request({"model": "m", **payload})


def test_json_schema_tool_name() -> None:
    assert json_schema_tool({"response_format": {"type": "json_schema", "json_schema": {
        "name": "verdict", "schema": {}}}}) == "verdict"
    assert json_schema_tool({"response_format": {"type": "json_object"}}) is None
    assert json_schema_tool({}) is None


# ----------------------------------------------------------------- responses


@pytest.mark.parametrize("case", _cases("response"))
def test_response_golden(case: dict[str, Any]) -> None:
    created = _load("response.json")["created"]
    body, usage = from_anthropic_response(case["anthropic"], model="fallback",
                                          json_tool=case.get("json_tool"), created=created)
    assert body == case["openai"]
    assert usage == Usage(**case["usage"])


def test_response_created_is_now_and_model_falls_back() -> None:
    body, _ = from_anthropic_response({"id": "msg_x", "content": [], "stop_reason": "end_turn",
                                       "usage": {}}, model="fallback")
    assert body["model"] == "fallback"
    assert isinstance(body["created"], int) and body["created"] > 1_700_000_000


# ------------------------------------------------------------------- streams


@pytest.mark.parametrize("name", ["stream_tools.json", "stream_json_schema.json"])
def test_stream_golden(name: str) -> None:
    golden = _load(name)
    translator = AnthropicStreamTranslator(model=golden["model"], created=golden["created"],
                                           json_tool=golden["json_tool"])
    outs = [out for event in golden["events"] for out in translator.feed(event)]
    assert [o.chunk for o in outs] == golden["chunks"]
    assert translator.done
    # Only the last chunk is usage-only, and it carries the usage.
    assert [o.usage_only for o in outs] == [False] * (len(outs) - 1) + [True]
    assert outs[-1].usage == translator.usage == Usage(**golden["usage"])


def test_stream_tool_call_headers_carry_id_and_name() -> None:
    """Each call's first delta has id, type and name; later ones only arguments."""
    golden = _load("stream_tools.json")
    translator = AnthropicStreamTranslator(created=golden["created"])
    seen: dict[int, list[dict[str, Any]]] = {}
    for event in golden["events"]:
        for out in translator.feed(event):
            for choice in out.chunk["choices"]:
                for call in choice["delta"].get("tool_calls", []):
                    seen.setdefault(call["index"], []).append(call)
    assert sorted(seen) == [0, 1, 2]
    for calls in seen.values():
        assert calls[0]["id"] and calls[0]["function"]["name"] and calls[0]["type"] == "function"
        assert all("id" not in c and "name" not in c["function"] for c in calls[1:])
    args = {i: "".join(c["function"]["arguments"] for c in calls) for i, calls in seen.items()}
    assert [json.loads(a) for a in args.values()] == [{"city": "Paris"}, {"city": "Rome"}, {}]


@pytest.mark.parametrize("etype", ["overloaded_error", "rate_limit_error"])
def test_stream_error_event_raises(etype: str) -> None:
    translator = AnthropicStreamTranslator()
    translator.feed(_load("stream_tools.json")["events"][0])
    with pytest.raises(AnthropicStreamError) as info:
        translator.feed({"type": "error", "error": {"type": etype, "message": "busy"}})
    assert (info.value.type, info.value.message) == (etype, "busy")
    assert not translator.done


def test_stream_without_message_stop_is_not_done() -> None:
    translator = AnthropicStreamTranslator()
    for event in _load("stream_tools.json")["events"][:-1]:
        translator.feed(event)
    assert not translator.done and translator.usage is None
