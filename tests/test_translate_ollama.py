"""OpenAI <-> Ollama translation (translate/ollama.py): golden fixtures both
directions, the stream translator, and the requests that must be refused."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from gandalf_workers.providers.base import UpstreamFailure
from gandalf_workers.translate import ollama as tr

GOLDEN = Path(__file__).parent / "golden" / "ollama"


def golden(name: str) -> dict[str, Any]:
    return json.loads((GOLDEN / f"{name}.json").read_text())


def user(content: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": content}]}


def refused(payload: dict[str, Any]) -> UpstreamFailure:
    with pytest.raises(UpstreamFailure) as info:
        tr.chat_request(payload, "m", provider="ol")
    assert info.value.status == 400 and not info.value.retryable
    return info.value


# ------------------------------------------------------------------- golden


def test_golden_chat_request() -> None:
    case = golden("chat_request")
    assert tr.chat_request(case["openai"], "llama3.2:latest") == case["ollama"]


@pytest.mark.parametrize("name", ["chat_response", "chat_response_tools"])
def test_golden_chat_response(name: str) -> None:
    case = golden(name)
    assert tr.chat_response(case["ollama"], model="ignored", id=case["id"]) == case["openai"]


def test_golden_chat_stream() -> None:
    case = golden("chat_stream")
    stream = tr.ChatStream("ignored", id=case["id"])
    chunks: list[dict[str, Any]] = []
    for line in case["ollama"]:
        assert not stream.done
        chunks += stream.feed(line)
    assert stream.done
    assert chunks == case["openai"]
    assert stream.usage == {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52}


def test_golden_embeddings_both_ways() -> None:
    case = golden("embed")
    request = tr.embed_request(case["openai_request"], "nomic-embed-text:latest")
    assert request == case["ollama_request"]
    assert tr.embed_response(case["ollama_response"], model="x") == case["openai_response"]
    encoded = tr.embed_response(case["ollama_response"], encoding_format="base64")
    assert encoded == case["openai_response_base64"]
    # base64 is little-endian float32, as OpenAI sends it
    raw = base64.b64decode(encoded["data"][1]["embedding"])
    assert struct.unpack("<3f", raw) == (0.0, 2.0, -1.5)


def test_stream_and_whole_response_give_the_same_tool_call_ids() -> None:
    """A tool result must be matchable however the call was received."""
    whole = golden("chat_response_tools")["openai"]["choices"][0]["message"]["tool_calls"]
    stream = tr.ChatStream("m")
    first = golden("chat_response_tools")["ollama"]
    chunks = stream.feed({**first, "done": False}) + stream.feed({"done": True})
    deltas = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks
              if c["choices"] and "tool_calls" in c["choices"][0]["delta"]]
    assert [d["id"] for d in deltas] == [c["id"] for c in whole]
    assert [d["index"] for d in deltas] == [0, 1]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


# ------------------------------------------------------------------ requests


def test_stream_flag_is_always_explicit() -> None:
    """Ollama streams by default: an absent flag must become false."""
    assert tr.chat_request(user("hi"), "m")["stream"] is False
    assert tr.chat_request({**user("hi"), "stream": True}, "m")["stream"] is True
    assert tr.chat_request({**user("hi"), "stream": True}, "m", stream=False)["stream"] is False


def test_options_fall_back_to_max_tokens_and_keep_stop_lists() -> None:
    out = tr.chat_request({**user("hi"), "max_tokens": 7, "stop": ["a", "b"]}, "m")
    assert out["options"] == {"num_predict": 7, "stop": ["a", "b"]}
    assert "options" not in tr.chat_request(user("hi"), "m")


@pytest.mark.parametrize(("response_format", "expected"), [
    ({"type": "json_object"}, "json"),
    ({"type": "text"}, None),
])
def test_response_format(response_format: dict[str, Any], expected: str | None) -> None:
    out = tr.chat_request({**user("hi"), "response_format": response_format}, "m")
    assert out.get("format") == expected


def test_tool_choice_none_withholds_the_tools() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    assert "tools" not in tr.chat_request({**user("hi"), "tools": tools,
                                           "tool_choice": "none"}, "m")
    assert tr.chat_request({**user("hi"), "tools": tools, "tool_choice": "auto"},
                           "m")["tools"] == tools


def test_image_urls_as_strings_and_percent_encoded_data() -> None:
    out = tr.chat_request(user([
        {"type": "image_url", "image_url": "data:image/png;base64,iVBO\nRw0KGgo="},
        {"type": "image_url", "image_url": {"url": "data:text/plain,hi%20there"}},
    ]), "m")
    message = out["messages"][0]
    assert message["images"] == ["iVBORw0KGgo=", base64.b64encode(b"hi there").decode()]
    assert message["content"] == ""


def test_http_image_url_is_unsupported() -> None:
    exc = refused(user([{"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]))
    assert exc.code == "unsupported"
    assert "ol:" in exc.message and "data: URL" in exc.message


@pytest.mark.parametrize("payload", [
    user([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]),
    user([{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]),
    {"model": "m", "messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{bad"}}]}]},
    {"model": "m", "messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]},
    {**user("hi"), "n": 2},
    {**user("hi"), "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
    {"model": "m", "messages": "hi"},
])
def test_untranslatable_requests_are_refused(payload: dict[str, Any]) -> None:
    refused(payload)


def test_tool_result_without_a_known_call_keeps_its_own_name() -> None:
    out = tr.chat_request({"model": "m", "messages": [
        {"role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "zz", "name": "g", "content": "two"},
        {"role": "tool", "tool_call_id": "zz", "content": "three"},
    ]}, "m")["messages"]
    assert out[0]["tool_calls"] == [{"function": {"name": "f", "arguments": {}}}]
    assert [m.get("tool_name") for m in out[1:]] == ["f", "g", None]


def test_embed_request_refusals() -> None:
    with pytest.raises(UpstreamFailure) as info:
        tr.embed_request({"input": [[1, 2, 3]]}, "m")
    assert info.value.code == "unsupported"
    for payload in ({"input": []}, {"input": "x", "encoding_format": "int8"}):
        with pytest.raises(UpstreamFailure) as info:
            tr.embed_request(payload, "m")
        assert info.value.status == 400


# ----------------------------------------------------------------- responses


def test_response_thinking_and_missing_fields() -> None:
    out = tr.chat_response({"message": {"content": "4", "thinking": "2+2"}, "done": True},
                           model="m", now=123.0)
    assert out["model"] == "m" and out["created"] == 123
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "4",
                                            "reasoning_content": "2+2"}
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert out["id"].startswith("chatcmpl-")


def test_stream_without_done_is_not_done() -> None:
    stream = tr.ChatStream("m")
    chunks = stream.feed({"message": {"content": "a"}, "done": False})
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""}, {"content": "a"}]
    assert not stream.done and stream.usage is None
