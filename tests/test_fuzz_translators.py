"""Property tests: every translator and stream parser of the provider
workers, fed random and adversarial input, raises nothing but its own
documented error type and finishes each example quickly."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gandalf_workers.providers import native as sniff
from gandalf_workers.providers.base import UpstreamFailure
from gandalf_workers.providers.gemini import _ArraySniffer
from gandalf_workers.providers.streams import (
    FrameError,
    SSEError,
    iter_eventstream,
    iter_ndjson,
    iter_sse,
)
from gandalf_workers.translate import anthropic as anth
from gandalf_workers.translate import gemini as gem
from gandalf_workers.translate import messages_in as msg_in
from gandalf_workers.translate import ollama as oll
from gandalf_workers.translate.anthropic_stream import (
    AnthropicStreamError,
    AnthropicStreamTranslator,
)
from gandalf_workers.translate.messages_in_stream import MessagesStreamEncoder

#: More examples for a deeper hunt: GANDALF_FUZZ_EXAMPLES=2000 pytest ...
FUZZ = settings(max_examples=int(os.environ.get("GANDALF_FUZZ_EXAMPLES", "40")),
                deadline=timedelta(seconds=5),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

#: Keys the translators look at, so random objects reach deep code paths.
KEYS = ["role", "content", "type", "text", "tool_calls", "function", "name", "arguments",
        "id", "index", "messages", "tools", "parameters", "tool_choice", "tool_call_id",
        "image_url", "url", "source", "data", "media_type", "input", "model", "stream",
        "response_format", "json_schema", "schema", "candidates", "parts", "functionCall",
        "args", "finishReason", "usageMetadata", "promptTokenCount", "delta", "choices",
        "usage", "message", "content_block", "stop_reason", "input_tokens", "output_tokens",
        "partial_json", "thinking", "done", "done_reason", "eval_count", "error",
        "max_tokens", "system", "tool_use_id", "properties", "items", "$ref", "$defs",
        "anyOf", "required", "embeddings", "embedding", "values", "predictions",
        "finish_reason", "responseId", "thought", "is_error", "input_schema", "n"]
WORDS = st.sampled_from(["user", "assistant", "system", "tool", "developer", "text",
                         "image_url", "function", "tool_use", "tool_result", "image",
                         "document", "message_start", "content_block_start",
                         "content_block_delta", "content_block_stop", "message_delta",
                         "message_stop", "error", "text_delta", "input_json_delta",
                         "thinking_delta", "STOP", "MAX_TOKENS", "SAFETY", "json_schema",
                         "json_object", "data:image/png;base64,AAAA", "http://x/y.png",
                         "#/$defs/a", "{}", "{\"a\": 1}", "[", "", "base64", "object"])
SCALARS = (st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20) | WORDS)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner, max_size=6),
    max_leaves=40)
OBJECTS = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=8)

#: Tool-call arguments are JSON in a string: the ingress cannot bound their
#: nesting, and msgspec raised RecursionError (a 5xx) on them.
DEEP_ARGS = {"messages": [{"role": "user", "content": "x"}, {
    "role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
        "name": "f", "arguments": "[" * 5000 + "]" * 5000}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "ok"}]}


def _only(allowed: tuple[type[BaseException], ...], fn: Callable[[], Any]) -> None:
    try:
        fn()
    except allowed:
        pass


# ------------------------------------------------------------- translators


@FUZZ
@given(OBJECTS)
@example(DEEP_ARGS)
def test_gemini_request(payload: dict[str, Any]) -> None:
    _only((gem.TranslationError,), lambda: gem.chat_request(payload))


@FUZZ
@given(VALUES)
def test_gemini_schema(schema: Any) -> None:
    _only((gem.TranslationError,), lambda: gem.clean_schema(schema))


@FUZZ
@given(OBJECTS, st.lists(OBJECTS, max_size=5))
@example({"candidates": [{"finishReason": []}]}, [{"candidates": [{"finishReason": {}}]}])
def test_gemini_response_and_stream(data: dict[str, Any], events: list[Any]) -> None:
    gem.chat_response(data, "m")
    translator = gem.StreamTranslator("m")
    for event in events:
        translator.feed(event)
    translator.usage_chunk()


@FUZZ
@given(OBJECTS)
def test_gemini_embeddings(payload: dict[str, Any]) -> None:
    def run() -> None:
        inputs = gem.embedding_inputs(payload)
        gem.encoding_format(payload)
        gem.batch_embed_request(payload, inputs, "m")
        gem.vertex_embed_request(payload, inputs)
    _only((gem.TranslationError,), run)
    for fn in (gem.batch_embed_vectors, gem.vertex_embed_vectors):
        _only((ValueError,), lambda fn=fn: fn(payload))


@FUZZ
@given(OBJECTS)
@example(DEEP_ARGS)
def test_anthropic_request(payload: dict[str, Any]) -> None:
    _only((anth.TranslationError,), lambda: anth.to_anthropic_request(payload, model="m"))
    anth.json_schema_tool(payload)


@FUZZ
@given(OBJECTS, st.lists(OBJECTS, max_size=6))
@example({"content": True}, [])  # was TypeError: 'bool' object is not iterable
@example({"stop_reason": [None]}, [])  # was TypeError: unhashable type: 'list'
def test_anthropic_response_and_stream(data: dict[str, Any], events: list[Any]) -> None:
    anth.from_anthropic_response(data, model="m")
    translator = AnthropicStreamTranslator(model="m", json_tool="json_response")
    for event in events:
        _only((AnthropicStreamError,), lambda event=event: translator.feed(event))


@FUZZ
@given(OBJECTS)
@example(DEEP_ARGS)
def test_ollama_request(payload: dict[str, Any]) -> None:
    _only((UpstreamFailure,), lambda: oll.chat_request(payload, "m"))
    _only((UpstreamFailure,), lambda: oll.embed_request(payload, "m"))


@FUZZ
@given(OBJECTS, st.lists(OBJECTS, max_size=5))
def test_ollama_response_and_stream(data: dict[str, Any], events: list[Any]) -> None:
    _only((UpstreamFailure,), lambda: oll.chat_response(data, model="m"))
    _only((UpstreamFailure,), lambda: oll.embed_response(data, model="m"))
    stream = oll.ChatStream("m")
    for event in events:
        _only((UpstreamFailure,), lambda event=event: stream.feed(event))


@FUZZ
@given(OBJECTS)
def test_messages_in_request(body: dict[str, Any]) -> None:
    _only((msg_in.MessagesInputError,), lambda: msg_in.messages_to_openai(body, "m"))


@FUZZ
@given(OBJECTS | st.binary(max_size=60), st.lists(OBJECTS | st.binary(max_size=30),
                                                   max_size=5))
def test_messages_in_response_and_stream(body: Any, chunks: list[Any]) -> None:
    _only((ValueError,), lambda: msg_in.openai_to_message(body, "m"))
    encoder = MessagesStreamEncoder("m")
    for chunk in chunks:
        _only((ValueError,), lambda chunk=chunk: encoder.feed(chunk))
    encoder.finish()


# ----------------------------------------------------------- stream parsers


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


async def _aiter(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _drain(gen: AsyncIterator[Any]) -> list[Any]:
    async def run() -> list[Any]:
        return [item async for item in gen]
    return asyncio.run(run())


#: Stream bytes: random, or lines built from SSE/NDJSON pieces.
LINE_PARTS = st.sampled_from([b"data: ", b"data:", b"event: ", b"event:", b":", b"id: 1",
                              b"\n", b"\r\n", b"\r", b"\n\n", b"{", b"}", b"[", b"]",
                              b"[DONE]", b'{"type": "message_stop"}', b'{"done": true}',
                              b'{"error": "x"}', b'{"candidates": [{"finishReason": "STOP"}]}',
                              b'{"type": "error", "error": {"type": "x"}}', b"\xff", b"\x00",
                              b"1e9999", b"[" * 1200])
STREAM = st.binary(max_size=200) | st.lists(LINE_PARTS, max_size=30).map(b"".join)
CUTS = st.lists(st.integers(0, 10_000), max_size=8)


@FUZZ
@given(STREAM, CUTS)
def test_sse_and_ndjson_readers(data: bytes, cuts: list[int]) -> None:
    chunks = _chunked(data, cuts)
    _only((SSEError,), lambda: _drain(iter_sse(_aiter(chunks))))
    _only((FrameError,), lambda: _drain(iter_ndjson(_aiter(chunks))))


@FUZZ
@given(STREAM, CUTS)
def test_eventstream_reader(data: bytes, cuts: list[int]) -> None:
    _only((FrameError,), lambda: _drain(iter_eventstream(_aiter(_chunked(data, cuts)))))


def _sniffers() -> list[Any]:
    """The sniffers the workers use, and Gemini's JSON-array stream's."""
    return [_ArraySniffer()] + [sniff.sniffer_for(kind, stream=stream)
                                for kind in ("anthropic", "gemini", "ollama", "openai")
                                for stream in (False, True)]


@FUZZ
@given(STREAM, CUTS)
@example(b"[" * 1200, [])  # JSONBodySniffer: was RecursionError, not UpstreamFailure
@example(b"data: " + b"[" * 1200 + b"\n\n", [3])  # SSESniffer: the same
@example(b"[" * 1200 + b"\n", [])  # NDJSONSniffer: the same
@example(b"data:[DONE]", [])
def test_native_sniffers(data: bytes, cuts: list[int]) -> None:
    chunks = _chunked(data, cuts)
    for sniffer in _sniffers():
        def run(sniffer: Any = sniffer) -> None:
            for chunk in chunks:
                sniffer.feed(chunk)
            sniffer.finish()
        _only((UpstreamFailure,), run)


def test_long_line_in_small_chunks_is_linear() -> None:
    # A 4 MiB line in 1 KiB chunks: re-scanning the growing buffer per chunk
    # took ~19 s in iter_sse and ~5 s in the native SSE sniffer.
    chunks = [b"data: "] + [b"x" * 1024] * 4096 + [b"\n\n"]
    started = time.monotonic()
    ((_, data),) = _drain(iter_sse(_aiter(chunks)))
    assert len(data) == 4096 * 1024
    (line,) = _drain(iter_ndjson(_aiter(chunks)))
    assert line.startswith(b"data: x")
    sniffer = sniff.sniffer_for("openai", stream=True)
    for chunk in chunks[:-1]:
        sniffer.feed(chunk)
    assert time.monotonic() - started < 3


def test_line_past_the_limit_is_a_stream_error() -> None:
    chunks = [b"data: "] + [b"x" * (1024 * 1024)] * 9 + [b"\n\n"]
    with pytest.raises(SSEError):
        _drain(iter_sse(_aiter(chunks)))
    with pytest.raises(FrameError):
        _drain(iter_ndjson(_aiter([b"".join(chunks)])))
    sniffer = sniff.sniffer_for("openai", stream=True)
    with pytest.raises(UpstreamFailure):
        for chunk in chunks:
            sniffer.feed(chunk)
