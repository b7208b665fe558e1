"""Anthropic Messages as an input format (translate/messages_in*.py).

Golden fixtures in tests/golden/messages_in/ pin the exact translations; every
response and stream is also parsed by the official ``anthropic`` SDK (its
models, its stream accumulator, and a real client over a mock transport), so a
shape the SDK would reject fails here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import msgspec
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from gandalf_common.contract import Usage
from gandalf_workers.translate.messages_in import (
    MessagesInputError,
    MessagesStreamEncoder,
    messages_to_openai,
    openai_to_message,
)

GOLDEN = Path(__file__).parent / "golden" / "messages_in"
CASES = sorted(GOLDEN.glob("*.json"))
EVENT = TypeAdapter(RawMessageStreamEvent)
MODEL = "claude-gateway-alias"
#: The fields of an accumulated message that the translation decides.
MESSAGE_FIELDS = {"id", "type", "role", "model", "content", "stop_reason", "stop_sequence",
                  "usage"}
USAGE_FIELDS = {"input_tokens", "output_tokens", "cache_read_input_tokens",
                "cache_creation_input_tokens"}


# ---------------------------------------------------------------- helpers


def parse_sse(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) pairs; checks the framing Anthropic uses."""
    assert raw.endswith(b"\n\n")
    events = []
    for frame in raw.decode().split("\n\n")[:-1]:
        event_line, data_line = frame.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        event, data = event_line[7:], json.loads(data_line[6:])
        assert data["type"] == event
        events.append((event, data))
    return events


def accumulate(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Validate each event with the SDK's models, fold them with its accumulator."""
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for event, data in events:
        if event == "ping":
            continue
        parsed = EVENT.validate_python(data)
        snapshot = accumulate_event(event=parsed, current_snapshot=snapshot, json_bufs=json_bufs)
    assert snapshot is not None
    return dump_message(snapshot)


def dump_message(message: Any) -> dict[str, Any]:
    data = message.model_dump(mode="json", include=MESSAGE_FIELDS)
    data["usage"] = {k: v for k, v in data["usage"].items() if k in USAGE_FIELDS}
    data["content"] = [{k: v for k, v in block.items() if v is not None or k == "text"}
                       for block in data["content"]]
    for block in data["content"]:
        block.pop("parsed_output", None)
        block.pop("caller", None)
    return data


def encode_stream(chunks: list[Any], usage: Usage | None = None, *,
                  message_id: str | None = "msg_test", model: str = MODEL) -> bytes:
    encoder = MessagesStreamEncoder(model, message_id)
    return b"".join(encoder.feed(c) for c in chunks) + encoder.finish(usage)


def chunk(delta: dict[str, Any], finish: str | None = None,
          usage: dict[str, Any] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"id": "chatcmpl-s1", "object": "chat.completion.chunk",
                            "choices": [{"index": 0, "delta": delta,
                                         "finish_reason": finish}]}
    if usage is not None:
        data["usage"] = usage
    return data


def call(index: int, arguments: str, call_id: str | None = None,
         name: str | None = None) -> dict[str, Any]:
    function: dict[str, Any] = {"arguments": arguments}
    tool: dict[str, Any] = {"index": index, "function": function}
    if call_id is not None:
        tool["id"] = call_id
    if name is not None:
        function["name"] = name
    return {"tool_calls": [tool]}


def sdk_client(handler: Callable[[httpx2.Request], httpx2.Response]) -> anthropic.Anthropic:
    """A real SDK client whose HTTP goes to ``handler``; strict response validation."""
    return anthropic.Anthropic(api_key="test", base_url="http://gateway.test", max_retries=0,
                               http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
                               _strict_response_validation=True)


# ------------------------------------------------------------------ golden


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_golden(path: Path) -> None:
    case = json.loads(path.read_text())
    if case["kind"] == "request":
        assert messages_to_openai(case["input"], case["target_model"]) == case["expected"]
    elif case["kind"] == "response":
        out = openai_to_message(case["input"], case["requested_model"])
        assert msgspec.json.decode(out) == case["expected"]
        assert dump_message(Message.model_validate_json(out)) == case["expected"]
        # Bytes in, the same answer out.
        assert openai_to_message(json.dumps(case["input"]).encode(),
                                 case["requested_model"]) == out
    else:
        encoder = MessagesStreamEncoder(case["requested_model"], case["message_id"])
        raw = b"".join(encoder.feed(c) for c in case["input"])
        usage = case["finish_usage"]
        raw += encoder.finish(Usage(**usage) if usage else None)
        events = parse_sse(raw)
        assert [{"event": e, "data": d} for e, d in events] == case["expected_events"]
        assert accumulate(events) == case["expected_message"]


def test_golden_cases_cover_the_brief() -> None:
    stems = {p.stem for p in CASES}
    assert {"request_system_string", "request_system_blocks", "request_images",
            "request_tool_turns", "request_sampling_stream", "response_text_tool_use",
            "response_cached_usage", "stream_text_two_tools"} <= stems
    assert sum(s.startswith("request_tool_choice_") for s in stems) == 4


# -------------------------------------------------- through the real SDK client


def test_sdk_client_round_trip_non_streaming() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/v1/messages"
        openai = messages_to_openai(json.loads(request.content), "gpt-4o-mini")
        seen.append(openai)
        upstream = {"id": "chatcmpl-rt1", "choices": [{
            "index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": "On it.", "tool_calls": [
                {"id": "call_9", "type": "function",
                 "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}]}}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 7}}
        return httpx2.Response(200, content=openai_to_message(upstream, MODEL),
                               headers={"content-type": "application/json"})

    client = sdk_client(handler)
    message = client.messages.create(
        model=MODEL, max_tokens=100, system=[{"type": "text", "text": "sys"}],
        tools=[{"name": "lookup", "description": "Find", "input_schema": {"type": "object"}}],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        messages=[{"role": "user", "content": "find x"}])
    assert seen[0]["messages"][0] == {"role": "system", "content": "sys"}
    assert seen[0]["parallel_tool_calls"] is False
    assert message.model == MODEL and message.stop_reason == "tool_use"
    assert message.content[0].type == "text" and message.content[0].text == "On it."
    tool = message.content[1]
    assert tool.type == "tool_use" and tool.id == "call_9" and tool.input == {"q": "x"}
    assert message.usage.input_tokens == 30 and message.usage.output_tokens == 7

    # The SDK's own follow-up turn (assistant content echoed back + tool_result).
    client.messages.create(model=MODEL, max_tokens=100, messages=[
        {"role": "user", "content": "find x"},
        message.to_param(),
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_9",
                                      "content": "found"}]}])
    assert seen[1]["messages"][1:] == [
        {"role": "assistant", "content": "On it.", "tool_calls": [
            {"id": "call_9", "type": "function",
             "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}]},
        {"role": "tool", "tool_call_id": "call_9", "content": "found"}]


def test_sdk_client_stream() -> None:
    case = json.loads((GOLDEN / "stream_text_two_tools.json").read_text())

    def handler(request: httpx2.Request) -> httpx2.Response:
        openai = messages_to_openai(json.loads(request.content), "gpt-4o")
        assert openai["stream"] is True and openai["stream_options"] == {"include_usage": True}
        body = encode_stream(case["input"], message_id=case["message_id"],
                             model=case["requested_model"])
        return httpx2.Response(200, content=body, headers={"content-type": "text/event-stream"})

    client = sdk_client(handler)
    with client.messages.stream(model=MODEL, max_tokens=50,
                                messages=[{"role": "user", "content": "go"}]) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == "Checking both."
    assert dump_message(final) == case["expected_message"]


def test_sdk_client_raises_on_error_event() -> None:
    encoder = MessagesStreamEncoder(MODEL)
    body = encoder.feed(chunk({"content": "partial"}))
    body += encoder.error("overloaded_error", "upstream went away")
    assert encoder.finish() == b""  # the error ended the stream

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=body, headers={"content-type": "text/event-stream"})

    client = sdk_client(handler)
    with pytest.raises(anthropic.APIStatusError) as info, client.messages.stream(
            model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}]) as stream:
        stream.until_done()
    assert info.value.body == {"type": "error", "error": {"type": "overloaded_error",
                                                          "message": "upstream went away"}}


# ------------------------------------------------------------- bad input


def _body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}]} | fields


def _user(*blocks: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(blocks)}]


@pytest.mark.parametrize(("body", "match"), [
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
     "^max_tokens: Field required$"),
    (_body(max_tokens=0), "max_tokens"),
    (_body(max_tokens=True), "max_tokens"),
    (_body(max_tokens="10"), "max_tokens"),
    (_body(messages=[]), "messages: at least one message"),
    ({"model": MODEL, "max_tokens": 10}, "messages: at least one message"),
    (_body(messages=[{"role": "system", "content": "x"}]),
     r"messages\.0\.role: Input should be 'user' or 'assistant'"),
    (_body(messages=[{"role": "user", "content": 5}]), r"messages\.0\.content"),
    (_body(tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]),
     "web_search_20250305"),
    (_body(tools=[{"type": "bash_20250124", "name": "bash"}]), "bash_20250124"),
    (_body(tools=[{"name": "f"}]), r"tools\.0\.input_schema"),
    (_body(tool_choice={"type": "sometimes"}), "tool_choice"),
    (_body(tool_choice={"type": "tool"}), r"tool_choice\.name"),
    (_body(system=[{"type": "image"}]), "system.0"),
    (_body(messages=_user({"type": "document", "source": {
        "type": "base64", "media_type": "application/pdf", "data": "JVBE"}})),
     "document blocks with a 'base64' source"),
    (_body(messages=_user({"type": "image", "source": {"type": "file", "file_id": "f1"}})),
     "image source type 'file'"),
    (_body(messages=_user({"type": "tool_use", "id": "t", "name": "f", "input": {}})),
     "'tool_use' content blocks are not supported in user turns"),
    (_body(messages=[{"role": "assistant", "content": [
        {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}]}]),
     "'server_tool_use' blocks in an assistant turn"),
    (_body(messages=_user({"type": "tool_result", "tool_use_id": "t", "content": [
        {"type": "search_result", "source": "s", "title": "t", "content": []}]})),
     "'search_result' blocks in a tool result"),
    (_body(stop_sequences="END"), "stop_sequences"),
])
def test_bad_input(body: dict[str, Any], match: str) -> None:
    with pytest.raises(MessagesInputError, match=match):
        messages_to_openai(body, "gpt")


def test_input_error_is_a_value_error() -> None:
    assert issubclass(MessagesInputError, ValueError)


def test_request_edge_cases() -> None:
    out = messages_to_openai(_body(system="", messages=[
        {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "x"}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t2",
                                      "is_error": True, "content": [
                                          {"type": "image", "source": {
                                              "type": "url", "url": "https://x/y.png"}}]}]},
    ]), "gpt")
    assert out["messages"] == [
        # Thinking-only turn: content "" (OpenAI rejects neither content nor calls).
        {"role": "assistant", "content": ""},
        # No content, no other blocks: just the tool message.
        {"role": "tool", "tool_call_id": "t1", "content": ""},
        {"role": "tool", "tool_call_id": "t2", "content": "Error: "},
        {"role": "user", "content": [{"type": "image_url",
                                      "image_url": {"url": "https://x/y.png"}}]},
    ]
    assert "stream" not in out and "tools" not in out


# --------------------------------------------------------------- responses


@pytest.mark.parametrize(("finish", "reason"), [
    ("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"),
    ("function_call", "tool_use"), ("content_filter", "refusal"), (None, "end_turn"),
    ("something_new", "end_turn"),
])
def test_response_stop_reasons(finish: str | None, reason: str) -> None:
    out = openai_to_message({"id": "chatcmpl-1", "choices": [
        {"index": 0, "finish_reason": finish, "message": {"content": "x"}}]}, MODEL)
    message = Message.model_validate_json(out)
    assert message.stop_reason == reason and message.stop_sequence is None


def test_response_refusal_and_legacy_function_call() -> None:
    refusal = Message.model_validate_json(openai_to_message({"id": "chatcmpl-r", "choices": [
        {"finish_reason": "stop", "message": {"content": None, "refusal": "I can't."}}]}, MODEL))
    assert refusal.stop_reason == "refusal" and refusal.content[0].text == "I can't."

    legacy = Message.model_validate_json(openai_to_message({"choices": [
        {"finish_reason": "function_call", "message": {
            "content": None, "function_call": {"name": "f", "arguments": "{\"a\":1}"}}}]},
        MODEL))
    assert legacy.id.startswith("msg_") and len(legacy.id) > 10  # no upstream id: random
    block = legacy.content[0]
    assert block.type == "tool_use" and block.id.startswith("toolu_")
    assert block.name == "f" and block.input == {"a": 1}


def test_response_empty_content_is_valid() -> None:
    out = openai_to_message({"id": "chatcmpl-e", "choices": [
        {"finish_reason": "stop", "message": {"role": "assistant", "content": ""}}]}, MODEL)
    assert Message.model_validate_json(out).content == []


@pytest.mark.parametrize("body", [b"not json", b"[1]", {"choices": []}, {"object": "x"}])
def test_response_invalid(body: bytes | dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        openai_to_message(body, MODEL)


# ----------------------------------------------------------------- streams


def test_stream_empty_upstream() -> None:
    events = parse_sse(encode_stream([]))
    assert [e for e, _ in events] == ["message_start", "ping", "message_delta", "message_stop"]
    message = accumulate(events)
    assert message["content"] == [] and message["stop_reason"] == "end_turn"


def test_stream_finish_usage_argument_wins_and_keeps_cached_reads() -> None:
    chunks = [chunk({"content": "hi"}, "stop"),
              {"choices": [], "usage": {"prompt_tokens": 100, "completion_tokens": 5,
                                        "prompt_tokens_details": {"cached_tokens": 64}}}]
    # A Usage decoded without prompt_tokens_details: cached reads come from the chunk.
    message = accumulate(parse_sse(encode_stream(
        chunks, Usage(prompt_tokens=100, completion_tokens=6))))
    assert message["usage"] == {"input_tokens": 36, "output_tokens": 6,
                                "cache_read_input_tokens": 64, "cache_creation_input_tokens": 0}
    other = accumulate(parse_sse(encode_stream(
        chunks, Usage(prompt_tokens=120, completion_tokens=7, cached_tokens=20))))
    assert other["usage"]["input_tokens"] == 100 and other["usage"]["output_tokens"] == 7


def test_stream_servers_that_number_every_call_zero() -> None:
    # One whole call per chunk, all at index 0 (some OpenAI-compatible servers).
    chunks = [chunk(call(0, "{\"a\":1}", "c1", "f")), chunk(call(0, "{\"b\":2}", "c2", "g")),
              chunk({}, "stop")]
    message = accumulate(parse_sse(encode_stream(chunks)))
    assert message["content"] == [
        {"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}},
        {"type": "tool_use", "id": "c2", "name": "g", "input": {"b": 2}}]
    assert message["stop_reason"] == "tool_use"  # "stop" with tool calls


def test_stream_name_arriving_late_and_missing_id() -> None:
    chunks = [chunk(call(0, "{\"x\"")), chunk(call(0, ":1}", name="late")),
              chunk(call(1, "{}")), chunk({}, "tool_calls")]
    events = parse_sse(encode_stream(chunks))
    message = accumulate(events)
    first, second = message["content"]
    assert first["name"] == "late" and first["input"] == {"x": 1}
    assert second["name"] == "" and second["input"] == {}  # its name never came
    assert first["id"].startswith("toolu_") and second["id"].startswith("toolu_")


def test_stream_text_after_tool_and_block_indexes() -> None:
    chunks = [chunk({"role": "assistant", "content": ""}), chunk(call(0, "{}", "c1", "f")),
              chunk({"content": "after"}), chunk({}, "length")]
    events = parse_sse(encode_stream(chunks))
    starts = [d["index"] for e, d in events if e == "content_block_start"]
    stops = [d["index"] for e, d in events if e == "content_block_stop"]
    assert starts == stops == [0, 1]
    message = accumulate(events)
    assert [b["type"] for b in message["content"]] == ["tool_use", "text"]
    assert message["stop_reason"] == "max_tokens"


def test_stream_refusal_and_unfinished_block() -> None:
    events = parse_sse(encode_stream([chunk({"refusal": "No."})]))  # no finish_reason
    assert [e for e, _ in events][-3:] == ["content_block_stop", "message_delta", "message_stop"]
    message = accumulate(events)
    assert message["content"] == [{"type": "text", "text": "No."}]
    assert message["stop_reason"] == "refusal"


def test_stream_bytes_ids_and_done() -> None:
    encoder = MessagesStreamEncoder(MODEL)
    first = encoder.feed(json.dumps(chunk({"content": "a"})).encode())
    assert parse_sse(first)[0][1]["message"]["id"] == "msg_s1"  # from the chunk id
    assert encoder.feed(b'{"choices": [{"index": 1, "delta": {"content": "n=2"}}]}') == b""
    closing = encoder.finish()
    assert encoder.finish() == b"" and encoder.feed(chunk({"content": "late"})) == b""
    message = accumulate(parse_sse(first + closing))
    assert message["content"] == [{"type": "text", "text": "a"}]


@pytest.mark.parametrize("raw", [b"{broken", b"[]", b'"text"'])
def test_stream_invalid_chunk(raw: bytes) -> None:
    with pytest.raises(ValueError):
        MessagesStreamEncoder(MODEL).feed(raw)


def test_stream_usage_in_first_chunk_reaches_message_start() -> None:
    events = parse_sse(encode_stream([chunk({"content": "x"}, usage={
        "prompt_tokens": 9, "completion_tokens": 1})]))
    assert events[0][1]["message"]["usage"]["input_tokens"] == 9
    assert accumulate(events)["usage"]["output_tokens"] == 1
