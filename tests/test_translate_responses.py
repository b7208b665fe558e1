"""The Responses API translators of the workers (translated targets): the
chat request they build, the Responses objects and events they give back,
and, fed random input, nothing raised but their own documented errors."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gandalf_common.contract import Usage
from gandalf_workers.translate.responses_in import (
    MAX_INPUT_ITEMS,
    ResponsesInputError,
    responses_to_chat,
)
from gandalf_workers.translate.responses_out import ResponsesStreamEncoder, chat_to_response


def chat(data: dict[str, Any]) -> dict[str, Any]:
    return responses_to_chat(data, provider_type="anthropic")


def test_items_become_chat_messages() -> None:
    out = chat({"model": "x", "instructions": "be kind", "input": [
        {"role": "developer", "content": "terse"},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "hi"},
            {"type": "input_image", "image_url": "https://example.com/a.png"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
        {"type": "function_call_output", "call_id": "c2",
         "output": [{"type": "input_text", "text": "two"}]}],
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        "tool_choice": {"type": "function", "name": "f"}, "max_output_tokens": 9,
        "temperature": 0.5, "text": {"format": {"type": "json_schema", "name": "n",
                                                "schema": {"type": "object"}}}})
    assert out["messages"] == [
        {"role": "system", "content": "be kind"}, {"role": "system", "content": "terse"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {
            "type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]},
        {"role": "assistant", "content": None, "tool_calls": [  # parallel calls: one turn
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"}]
    assert out["tools"] == [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object"}}}]
    assert out["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert out["max_completion_tokens"] == 9 and out["temperature"] == 0.5
    assert out["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "n", "schema": {"type": "object"}}}


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "x", "include": ["a"]}, "include"),
    ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"input": "x", "background": True}, "background"),
    ({"input": "x", "tools": [{"type": "file_search"}]}, "tools[0].type"),
    ({"input": "x", "reasoning": {"effort": "high"}}, "reasoning"),
    ({"input": "x", "truncation": "auto"}, "truncation"),
    ({"input": "x", "text": {"verbosity": "low"}}, "text.verbosity"),
    ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_file"}]}]},
     "input[0].content[0].type"),
    ({"input": [{"role": "user", "content": "x"}] * (MAX_INPUT_ITEMS + 1)}, "input"),
    ({"input": []}, "input"),
])
def test_what_cannot_be_honoured_is_a_400_naming_it(body: dict[str, Any],
                                                    param: str) -> None:
    with pytest.raises(ResponsesInputError) as info:
        chat({"model": "x", **body})
    assert info.value.param == param and str(info.value).startswith(param)


def _events(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for block in raw.decode().split("\n\n"):
        if block:
            kind, data = block.split("\n")
            event = json.loads(data.removeprefix("data: "))
            assert kind == f"event: {event['type']}"
            out.append(event)
    return out


def test_stream_encoder_emits_the_responses_event_sequence() -> None:
    enc = ResponsesStreamEncoder({"input": "x"}, "alias")
    chunks = [{"choices": [{"delta": {"role": "assistant", "content": "Hel"}}]},
              {"choices": [{"delta": {"content": "lo"}}]},
              {"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "c1", "function": {
                  "name": "f", "arguments": '{"a"'}}]}}]},
              {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {
                  "arguments": ": 1}"}}]}}]},
              {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]}]
    raw = b"".join(enc.feed(msgspec.json.encode(c)) for c in chunks)
    raw += enc.finish(Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7,
                            cached_tokens=1))
    events = _events(raw)
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = events[-1]["response"]
    assert final["model"] == "alias" and final["status"] == "completed"
    assert [o["type"] for o in final["output"]] == ["message", "function_call"]
    assert final["output"][0]["content"][0]["text"] == "Hello"
    assert final["output"][1]["arguments"] == '{"a": 1}'
    assert final["usage"] == {"input_tokens": 3, "input_tokens_details": {"cached_tokens": 1},
                              "output_tokens": 4,
                              "output_tokens_details": {"reasoning_tokens": 0},
                              "total_tokens": 7}


def test_a_truncated_answer_is_incomplete() -> None:
    body = msgspec.json.encode({"choices": [{"message": {"content": "cut"},
                                             "finish_reason": "length"}]})
    out = json.loads(chat_to_response(body, {}, "a", None))
    assert out["status"] == "incomplete"
    assert out["incomplete_details"] == {"reason": "max_output_tokens"}


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5)
    | st.sampled_from(["message", "function_call", "function_call_output", "user",
                       "assistant", "developer", "input_text", "function", "json_schema",
                       "auto", "input_image"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["type", "role", "content", "text", "input", "call_id", "name",
                         "arguments", "output", "tools", "tool_choice", "format", "schema",
                         "instructions", "image_url", "choices", "delta", "tool_calls",
                         "index", "function", "message", "finish_reason", "reasoning"]),
        inner, max_size=5),
    max_leaves=20)
FUZZ = settings(max_examples=150, deadline=timedelta(seconds=5),
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(JSON)
def test_fuzz_request_translation(data: Any) -> None:
    if not isinstance(data, dict):
        return
    try:
        chat(data)
    except ResponsesInputError:
        pass


@FUZZ
@given(st.lists(JSON, max_size=5))
def test_fuzz_answer_translation(chunks: list[Any]) -> None:
    try:
        chat_to_response(msgspec.json.encode(chunks[0] if chunks else {}), {}, "a", None)
    except ValueError:
        pass
    enc = ResponsesStreamEncoder({}, "a")
    try:
        for chunk in chunks:
            enc.feed(msgspec.json.encode(chunk))
        enc.finish(None)
    except ValueError:
        pass
