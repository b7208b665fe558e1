"""OllamaProvider against the in-process mock upstream, over real HTTP:
translated chat (whole and streamed), tools, images, embeddings, model
listing, error mapping, broken streams and the native passthroughs."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from gandalf_common.config import ProviderConfig
from gandalf_common.contract import NativeCall, Usage
from gandalf_workers.providers.base import Provider, StreamItem, UpstreamFailure
from gandalf_workers.providers.registry import build_provider
from mock_data import count_prompt_tokens, mock_embedding
from mock_ollama import NDJSON, OLLAMA_MODELS

KEY = "sk-upstream-secret"
TIMEOUT = 5.0
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "days": {"type": "integer"}},
                   "required": ["city"]}}}


def make(upstream: Any, **overrides: Any) -> Provider:
    fields: dict[str, Any] = {"name": "ol", "type": "ollama", "base_url": upstream.url,
                              "api_key": KEY, "timeout_ms": 5000,
                              "model_map": {"local": "llama3.2:latest"}}
    return build_provider(ProviderConfig(**{**fields, **overrides}))


@pytest_asyncio.fixture
async def provider(upstream: Any) -> AsyncIterator[Provider]:
    p = make(upstream)
    yield p
    await p.aclose()


def chat(model: str = "local", text: Any = "hello world", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def complete(provider: Provider, payload: dict[str, Any],
                   op: str = "chat") -> tuple[dict[str, Any], Usage | None]:
    result = await provider.complete(op, payload, ttfb_timeout=TIMEOUT)
    return json.loads(result.body), result.usage


async def collect(provider: Provider, payload: dict[str, Any]) -> list[StreamItem]:
    return [item async for item in provider.stream(payload, ttfb_timeout=TIMEOUT)]


def chunks(items: list[StreamItem]) -> list[dict[str, Any]]:
    return [json.loads(i.data) for i in items if i.data is not None]


async def failure(awaitable: Any) -> UpstreamFailure:
    with pytest.raises(UpstreamFailure) as info:
        await awaitable
    return info.value


async def stream_failure(provider: Provider, payload: dict[str, Any]
                         ) -> tuple[UpstreamFailure, list[StreamItem]]:
    items: list[StreamItem] = []
    with pytest.raises(UpstreamFailure) as info:
        async for item in provider.stream(payload, ttfb_timeout=TIMEOUT):
            items.append(item)
    return info.value, items


# ---------------------------------------------------------------- chat


async def test_complete_round_trip(provider: Provider, upstream: Any) -> None:
    body, usage = await complete(provider, chat(temperature=0.1, max_tokens=50))
    (record,) = upstream.requests
    assert record.path == "/api/chat"
    assert record.headers["authorization"] == f"Bearer {KEY}"
    sent = record.body
    assert sent["model"] == "llama3.2:latest"  # model_map applied
    assert sent["stream"] is False  # explicit: Ollama would stream otherwise
    assert sent["options"] == {"temperature": 0.1, "num_predict": 50}
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "llama3.2:latest"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "mock reply to: hello world"}
    assert choice["finish_reason"] == "stop"
    prompt = count_prompt_tokens(sent["messages"])
    assert body["usage"] == {"prompt_tokens": prompt, "completion_tokens": 5,
                             "total_tokens": prompt + 5}
    assert usage == Usage(prompt_tokens=prompt, completion_tokens=5, total_tokens=prompt + 5)


async def test_complete_cut_by_max_tokens_is_length(provider: Provider) -> None:
    body, usage = await complete(provider, chat("llama3.2;words-9", max_completion_tokens=3))
    assert body["choices"][0]["message"]["content"] == "mock reply to:"
    assert body["choices"][0]["finish_reason"] == "length"
    assert usage is not None and usage.completion_tokens == 3


async def test_stream_round_trip(provider: Provider, upstream: Any) -> None:
    items = await collect(provider, chat(stream=True))
    assert upstream.requests[0].body["stream"] is True
    assert upstream.requests[0].stream
    parsed = chunks(items)
    assert parsed[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in parsed if c["choices"])
    assert text == "mock reply to: hello world"
    assert {c["id"] for c in parsed} == {parsed[0]["id"]}
    assert parsed[-2]["choices"][0]["finish_reason"] == "stop"
    # the last item only carries usage; the worker drops it unless asked for
    last = items[-1]
    assert last.usage_only and parsed[-1]["choices"] == []
    assert last.usage is not None and last.usage.completion_tokens == 5
    assert parsed[-1]["usage"]["prompt_tokens"] == last.usage.prompt_tokens > 0
    assert not any(i.usage_only or i.usage for i in items[:-1])


async def test_tools_two_turns(provider: Provider, upstream: Any) -> None:
    question = chat(text="weather in Paris?", tools=[WEATHER])
    body, _ = await complete(provider, question)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "mock", "days": 1}
    assert upstream.requests[0].body["tools"] == [WEATHER]  # OpenAI shape, as Ollama takes it

    # the same call, streamed, has the same id
    items = await collect(provider, {**question, "stream": True})
    deltas = [c["choices"][0]["delta"] for c in chunks(items) if c["choices"]]
    streamed = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert streamed == [{"index": 0, **call}]
    assert chunks(items)[-2]["choices"][0]["finish_reason"] == "tool_calls"

    second = {**question, "messages": [*question["messages"], choice["message"],
                                       {"role": "tool", "tool_call_id": call["id"],
                                        "content": "sunny 21C"}]}
    body, _ = await complete(provider, second)
    sent = upstream.requests[-1].body["messages"]
    assert sent[1] == {"role": "assistant", "content": "",
                       "tool_calls": [{"function": {"name": "get_weather",
                                                    "arguments": {"city": "mock", "days": 1}}}]}
    assert sent[2] == {"role": "tool", "content": "sunny 21C", "tool_name": "get_weather"}
    assert body["choices"][0]["message"]["content"] == "mock reply to: tool result sunny 21C"
    assert body["choices"][0]["finish_reason"] == "stop"


async def test_images(provider: Provider, upstream: Any) -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
    content = [{"type": "text", "text": "what is this?"},
               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}]
    body, _ = await complete(provider, chat(text=content))
    assert upstream.requests[0].body["messages"][0] == {
        "role": "user", "content": "what is this?", "images": [png]}
    assert body["choices"][0]["message"]["content"] == "mock reply to: what is this?"

    content[1] = {"type": "image_url", "image_url": {"url": "https://example.test/cat.png"}}
    exc = await failure(complete(provider, chat(text=content)))
    assert (exc.status, exc.code, exc.retryable) == (400, "unsupported", False)
    assert len(upstream.requests) == 1  # refused before any upstream call


async def test_mock_refuses_what_ollama_refuses(provider: Provider, upstream: Any) -> None:
    """The mock validates the wire format, so a bad translation would show up."""
    async with httpx.AsyncClient() as client:
        for messages in ([{"role": "user", "content": "x", "images": ["@@"]}],
                         [{"role": "tool", "content": ["x"]}],
                         [{"role": "robot", "content": "x"}]):
            response = await client.post(f"{upstream.url}/api/chat",
                                         json={"model": "m", "messages": messages})
            assert response.status_code == 400 and "error" in response.json()
        response = await client.post(f"{upstream.url}/api/chat", json={
            "model": "m", "messages": [], "options": 3})
        assert response.status_code == 400


# ----------------------------------------------------------- embeddings / models


async def test_embeddings_batch(provider: Provider, upstream: Any) -> None:
    body, usage = await complete(provider, {"model": "emb", "input": ["hello", "world!!"],
                                            "dimensions": 4}, op="embed")
    assert upstream.requests[0].path == "/api/embed"
    assert upstream.requests[0].body == {"model": "emb", "input": ["hello", "world!!"],
                                         "dimensions": 4}
    assert body["object"] == "list" and body["model"] == "emb"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert body["data"][1]["embedding"] == mock_embedding("world!!", 4)
    assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}  # 5//4+1 + 7//4+1
    assert usage == Usage(prompt_tokens=4, total_tokens=4)

    body, _ = await complete(provider, {"model": "emb", "input": "hello",
                                        "encoding_format": "base64"}, op="embed")
    raw = base64.b64decode(body["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == mock_embedding("hello")


async def test_list_models(provider: Provider, upstream: Any) -> None:
    assert await provider.list_models(timeout=TIMEOUT) == list(OLLAMA_MODELS)
    assert upstream.requests[0].path == "/api/tags"


async def test_no_key_sends_no_authorization(upstream: Any) -> None:
    p = make(upstream, api_key="")
    try:
        body, _ = await complete(p, chat())
        assert "authorization" not in upstream.requests[0].headers
        assert body["choices"][0]["message"]["content"]
    finally:
        await p.aclose()


async def test_wrong_key_is_401_not_retried(upstream: Any) -> None:
    p = make(upstream, api_key="sk-wrong")
    try:
        exc = await failure(p.list_models(timeout=TIMEOUT))
        assert (exc.status, exc.type, exc.retryable) == (401, "authentication_error", False)
    finally:
        await p.aclose()


# --------------------------------------------------------------------- errors


async def test_model_not_found(provider: Provider) -> None:
    exc = await failure(complete(provider, chat("nope;fail-404")))
    assert exc.status == 404 and not exc.retryable
    assert exc.type == "invalid_request_error" and exc.code == "model_not_found"
    assert 'model "nope;fail-404" not found, try pulling it first' in exc.message


@pytest.mark.parametrize(("model", "status", "etype"), [
    ("m;fail-500", 500, "api_error"),
    ("m;fail-503", 503, "api_error"),
    ("m;fail-429;retry-after-3", 429, "rate_limit_error"),
])
async def test_retryable_errors(provider: Provider, model: str, status: int,
                                etype: str) -> None:
    exc = await failure(complete(provider, chat(model)))
    assert (exc.status, exc.type, exc.retryable) == (status, etype, True)
    assert f"mock upstream error {status}" in exc.message
    if status == 429:
        assert exc.retry_after == 3.0
    # a stream fails the same way, before anything was yielded
    exc, items = await stream_failure(provider, chat(model, stream=True))
    assert (exc.status, exc.retryable, items) == (status, True, [])


async def test_hang_times_out(provider: Provider) -> None:
    with pytest.raises(UpstreamFailure) as info:
        await provider.complete("chat", chat("m;hang"), ttfb_timeout=0.2)
    assert (info.value.status, info.value.code) == (504, "upstream_timeout")


async def test_cut_stream(provider: Provider) -> None:
    exc, items = await stream_failure(provider, chat("m;cut-2", stream=True))
    assert exc.code == "upstream_stream_cut" and exc.retryable
    assert [c["choices"][0]["delta"].get("content") for c in chunks(items)] == [
        "", "mock", " reply"]


async def test_stream_ending_without_final_object(provider: Provider) -> None:
    """A clean end of the body is not enough: only ``done: true`` completes."""
    exc, items = await stream_failure(provider, chat("m;no-final", stream=True))
    assert exc.code == "upstream_stream_cut" and exc.retryable
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks(items))
    assert text == "mock reply to: hello world"
    assert not any(i.usage for i in items)


async def test_cut_whole_body(provider: Provider) -> None:
    exc = await failure(complete(provider, chat("m;cut-1")))
    assert exc.status == 502 and exc.retryable


async def test_invalid_ndjson_line(provider: Provider) -> None:
    exc, items = await stream_failure(provider, chat("m;garbage-line", stream=True))
    assert exc.code == "upstream_invalid_response" and exc.status == 502
    assert len(items) == 2  # role + first word, then the broken line


async def test_error_line_in_stream(provider: Provider) -> None:
    exc, _ = await stream_failure(provider, chat("m;error-line", stream=True))
    assert (exc.status, exc.retryable) == (502, True)
    assert "mock runner crashed" in exc.message


# --------------------------------------------------------------------- native


async def read(native: Any) -> bytes:
    try:
        return b"".join([chunk async for chunk in native.body])
    finally:
        await native.close()


async def test_native_chat_stream_is_relayed_byte_for_byte(provider: Provider,
                                                           upstream: Any) -> None:
    body = json.dumps({"model": "whatever", "messages": [{"role": "user", "content": "hi"}],
                       "options": {"seed": 1}}).encode()
    native = await provider.native(NativeCall(kind="ollama", action="chat"), body, "local",
                                   stream=True, ttfb_timeout=TIMEOUT)
    assert native.status == 200 and ("content-type", NDJSON) in native.headers
    relayed = await read(native)
    (record,) = upstream.requests
    assert record.path == "/api/chat" and record.body["model"] == "llama3.2:latest"
    assert record.body["options"] == {"seed": 1}  # the rest of the body kept
    # the mock's answers are deterministic: ask it directly for the same thing
    async with httpx.AsyncClient() as client:
        direct = await client.post(f"{upstream.url}/api/chat", content=record.raw_body)
    assert relayed == direct.content
    final = json.loads(relayed.splitlines()[-1])
    assert final["done"] is True
    assert native.usage == Usage(prompt_tokens=final["prompt_eval_count"],
                                 completion_tokens=final["eval_count"],
                                 total_tokens=final["prompt_eval_count"] + final["eval_count"])


async def test_native_embed_and_generate(provider: Provider, upstream: Any) -> None:
    native = await provider.native(NativeCall(kind="ollama", action="embed"),
                                   b'{"model":"x","input":["a","b"]}', "emb",
                                   stream=False, ttfb_timeout=TIMEOUT)
    data = json.loads(await read(native))
    assert len(data["embeddings"]) == 2
    assert native.usage == Usage(prompt_tokens=2, total_tokens=2)

    native = await provider.native(NativeCall(kind="ollama", action="generate"),
                                   b'{"model":"x","prompt":"why","stream":false}', "local",
                                   stream=False, ttfb_timeout=TIMEOUT)
    data = json.loads(await read(native))
    assert data["response"] == "mock reply to: why" and data["model"] == "llama3.2:latest"
    assert native.usage is not None and native.usage.completion_tokens == 4


async def test_native_errors_are_returned_and_cuts_raised(provider: Provider) -> None:
    native = await provider.native(NativeCall(kind="ollama", action="chat"),
                                   b'{"model":"x","messages":[]}', "m;fail-404",
                                   stream=True, ttfb_timeout=TIMEOUT)
    assert native.status == 404
    assert json.loads(await read(native)) == {
        "error": 'model "m;fail-404" not found, try pulling it first'}

    native = await provider.native(NativeCall(kind="ollama", action="chat"),
                                   b'{"model":"x","messages":[]}', "m;cut-2",
                                   stream=True, ttfb_timeout=TIMEOUT)
    with pytest.raises(UpstreamFailure) as info:
        await read(native)
    assert info.value.code == "upstream_stream_cut"

    native = await provider.native(NativeCall(kind="ollama", action="chat"),
                                   b'{"model":"x","messages":[]}', "m;no-final",
                                   stream=True, ttfb_timeout=TIMEOUT)
    with pytest.raises(UpstreamFailure) as info:
        await read(native)
    assert info.value.code == "upstream_stream_cut"

    with pytest.raises(UpstreamFailure) as info:
        await provider.native(NativeCall(kind="ollama", action="pull"), b"{}", "m",
                              stream=False, ttfb_timeout=TIMEOUT)
    assert info.value.code == "unsupported"


async def test_native_azure_kind_goes_to_v1(provider: Provider, upstream: Any) -> None:
    body = json.dumps({"model": "dep", "messages": [{"role": "user", "content": "hi"}],
                       "stream": True, "stream_options": {"include_usage": True}}).encode()
    native = await provider.native(NativeCall(kind="azure", action="chat/completions"), body,
                                   "local", stream=True, ttfb_timeout=TIMEOUT)
    relayed = await read(native)
    (record,) = upstream.requests
    assert record.path == "/v1/chat/completions"
    assert record.headers["authorization"] == f"Bearer {KEY}"
    assert record.body["model"] == "llama3.2:latest"
    assert native.status == 200 and relayed.rstrip().endswith(b"data: [DONE]")
    assert native.usage is not None and native.usage.completion_tokens == 4
