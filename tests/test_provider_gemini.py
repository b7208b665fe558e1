"""The Gemini adapter against the mock upstream over real HTTP: Google AI
(API key) and Vertex AI (service-account OAuth through the mock's token
endpoint), chat, streams, tools, images, embeddings, models, errors and
native passthrough."""

from __future__ import annotations

import base64
import json
import re
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest

from cloud_creds import write_service_account
from gandalf_common.config import ProviderAuthConfig, ProviderConfig
from gandalf_common.contract import NativeCall, Usage
from gandalf_workers.providers.base import Provider, StreamItem, UpstreamFailure
from gandalf_workers.providers.gemini import failure_from_response
from gandalf_workers.providers.registry import build_provider
from mock_data import mock_embedding
from mock_gemini import GEMINI_MODELS

KEY = "sk-upstream-secret"
MODEL = "gemini-2.0-flash"
TTFB = 5.0
VERTEX_PREFIX = "/v1/projects/proj/locations/us-central1/publishers/google/models/"
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather now", "strict": True,
    "parameters": {"type": "object", "additionalProperties": False,
                   "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city", "days"]}}}


def _chat(text: str = "hello gemini", model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def _decode(data: bytes | None) -> dict[str, Any]:
    assert data is not None
    return msgspec.json.decode(data)


async def _collect(provider: Provider, payload: dict[str, Any]) -> list[StreamItem]:
    return [item async for item in provider.stream(payload, ttfb_timeout=TTFB)]


async def _read(body: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in body])


@pytest.fixture
async def direct(upstream: Any) -> AsyncIterator[Provider]:
    provider = build_provider(ProviderConfig(
        name="gem", type="gemini", base_url=upstream.url + "/v1beta", api_key=KEY,
        timeout_ms=5000, model_map={"fast": MODEL}))
    yield provider
    await provider.aclose()


@pytest.fixture(scope="module")
def service_account(tmp_path_factory: pytest.TempPathFactory, mock_upstream: Any) -> str:
    """A service-account file whose token_uri is the mock's Google token endpoint."""
    return write_service_account(tmp_path_factory.mktemp("gcp") / "sa.json",
                                 mock_upstream.url + "/oauth2/token")


def _vertex_provider(upstream: Any, credentials: str, **extra: Any) -> Provider:
    return build_provider(ProviderConfig(
        name="vtx", type="gemini", hosting="vertex", project="proj", region="us-central1",
        base_url=upstream.url, timeout_ms=5000,
        auth=ProviderAuthConfig(type="gcp_oauth", credentials_file=credentials), **extra))


@pytest.fixture
async def vertex(upstream: Any, service_account: str) -> AsyncIterator[Provider]:
    provider = _vertex_provider(upstream, service_account)
    yield provider
    await provider.aclose()


def _gemini_posts(upstream: Any) -> list[Any]:
    return [r for r in upstream.requests if r.method == "POST" and "oauth2" not in r.path]


# ------------------------------------------------------------------------ chat


async def test_direct_chat_round_trip(direct: Provider, upstream: Any) -> None:
    payload = _chat(messages=[{"role": "system", "content": "be brief"},
                              {"role": "system", "content": "be kind"},
                              {"role": "user", "content": "hello gemini"}],
                    max_tokens=50, stream=False)
    result = await direct.complete("chat", payload, ttfb_timeout=TTFB)
    body = _decode(result.body)
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    assert body["id"].startswith("chatcmpl-mock-")
    assert body["choices"][0]["message"] == {"role": "assistant",
                                             "content": "mock reply to: hello gemini"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert result.usage is not None and result.usage.completion_tokens == 5
    assert result.usage.total_tokens == result.usage.prompt_tokens + 5
    (req,) = upstream.requests
    assert req.path == f"/v1beta/models/{MODEL}:generateContent"
    assert req.headers["x-goog-api-key"] == KEY and "authorization" not in req.headers
    assert "model" not in req.body and "stream" not in req.body
    assert req.body["systemInstruction"] == {"parts": [{"text": "be brief\n\nbe kind"}]}
    assert req.body["generationConfig"] == {"maxOutputTokens": 50}


async def test_model_map_and_max_tokens_length(direct: Provider, upstream: Any) -> None:
    result = await direct.complete("chat", _chat(model="fast", max_completion_tokens=2),
                                   ttfb_timeout=TTFB)
    body = _decode(result.body)
    assert result.model == "fast" and body["model"] == "fast"
    assert body["choices"][0] == {"index": 0, "logprobs": None, "finish_reason": "length",
                                  "message": {"role": "assistant", "content": "mock reply"}}
    assert upstream.requests[0].path == f"/v1beta/models/{MODEL}:generateContent"


async def test_direct_stream(direct: Provider, upstream: Any) -> None:
    items = await _collect(direct, _chat("one two three four", stream=True))
    chunks = [_decode(i.data) for i in items]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks[1:] if c["choices"]]
    text = "".join(d for d in deltas if d)
    assert text == "mock reply to: one two three four"
    # The mock sends two-word events, every other one as two text parts: each
    # part is its own delta (the original read only parts[0]).
    assert [d for d in deltas if d] == ["mock reply", " to:", " one", " two three", " four"]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    assert all(not i.usage_only and i.usage is None for i in items[:-1])
    last = items[-1]
    assert last.usage_only and _decode(last.data)["choices"] == []
    assert last.usage == Usage(prompt_tokens=5, completion_tokens=7, total_tokens=12)
    assert len({c["id"] for c in chunks}) == 1
    (req,) = upstream.requests
    assert req.path == f"/v1beta/models/{MODEL}:streamGenerateContent"
    assert req.query == {"alt": "sse"} and req.headers["accept-encoding"] == "identity"


async def test_thinking_parts_are_not_content(direct: Provider) -> None:
    result = await direct.complete("chat", _chat(model=f"{MODEL}+thinking"), ttfb_timeout=TTFB)
    assert _decode(result.body)["choices"][0]["message"]["content"] == (
        "mock reply to: hello gemini")
    assert result.usage is not None and result.usage.completion_tokens == 5 + 3
    items = await _collect(direct, _chat(model=f"{MODEL}+thinking"))
    text = "".join(_decode(i.data)["choices"][0]["delta"].get("content", "")
                   for i in items if not i.usage_only)
    assert text == "mock reply to: hello gemini"


async def test_blocked_prompt_is_content_filter(direct: Provider) -> None:
    result = await direct.complete("chat", _chat(model=f"{MODEL}+blocked"), ttfb_timeout=TTFB)
    choice = _decode(result.body)["choices"][0]
    assert choice["finish_reason"] == "content_filter"
    assert choice["message"]["content"] == ""


async def test_tools_two_turns(direct: Provider, upstream: Any) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "weather in Paris?"}]
    first = await direct.complete("chat", _chat(messages=messages, tools=[WEATHER_TOOL]),
                                  ttfb_timeout=TTFB)
    choice = _decode(first.body)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "mock", "days": 1}
    sent_tools = upstream.requests[0].body["tools"]
    assert sent_tools == [{"functionDeclarations": [{
        "name": "get_weather", "description": "Weather now",
        "parameters": {"type": "object", "required": ["city", "days"], "properties": {
            "city": {"type": "string"}, "days": {"type": "integer"}}}}]}]

    messages += [choice["message"],
                 {"role": "tool", "tool_call_id": call["id"], "content": '{"temp": 21}'}]
    second = await direct.complete("chat", _chat(messages=messages, tools=[WEATHER_TOOL]),
                                   ttfb_timeout=TTFB)
    answer = _decode(second.body)["choices"][0]
    assert answer["finish_reason"] == "stop"
    # The mock echoes the function result it received: name and object made it.
    assert answer["message"]["content"] == 'mock reply to: get_weather={"temp":21}'
    contents = upstream.requests[1].body["contents"]
    assert contents[1] == {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": {"city": "mock", "days": 1}}}]}
    assert contents[2] == {"role": "user", "parts": [
        {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}}]}


async def test_stream_tool_call(direct: Provider) -> None:
    items = await _collect(direct, _chat("weather?", tools=[WEATHER_TOOL],
                                         tool_choice="required"))
    chunks = [_decode(i.data) for i in items if not i.usage_only]
    calls = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert len(calls) == 1
    assert calls[0]["index"] == 0 and calls[0]["id"].startswith("call_")
    assert calls[0]["function"] == {"name": "get_weather",
                                    "arguments": '{"city":"mock","days":1}'}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert items[-1].usage_only and items[-1].usage is not None


async def test_images_reach_gemini_as_parts(direct: Provider, upstream: Any) -> None:
    png = base64.b64encode(b"\x89PNG fake").decode()
    content = [{"type": "text", "text": "what is this"},
               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
               {"type": "image_url", "image_url": {"url": "https://example.com/a.webp"}}]
    result = await direct.complete("chat", _chat(content), ttfb_timeout=TTFB)
    assert _decode(result.body)["choices"][0]["message"]["content"] == (
        "mock reply to: what is this")
    assert upstream.requests[0].body["contents"][0]["parts"] == [
        {"text": "what is this"},
        {"inlineData": {"mimeType": "image/png", "data": png}},
        {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/a.webp"}}]


async def test_bad_request_is_rejected_before_sending(direct: Provider, upstream: Any) -> None:
    payload = _chat(messages=[{"role": "user", "content": "x"},
                              {"role": "tool", "tool_call_id": "nope", "content": "y"}])
    with pytest.raises(UpstreamFailure) as err:
        await direct.complete("chat", payload, ttfb_timeout=TTFB)
    assert err.value.status == 400 and not err.value.retryable
    assert upstream.requests == []


# ---------------------------------------------------------------------- errors


async def test_upstream_400_keeps_status_and_message(direct: Provider, upstream: Any) -> None:
    with pytest.raises(UpstreamFailure) as err:
        await direct.complete("chat", _chat(model=f"{MODEL}+fail-400"), ttfb_timeout=TTFB)
    exc = err.value
    assert (exc.status, exc.type, exc.code, exc.retryable) == (
        400, "invalid_request_error", "INVALID_ARGUMENT", False)
    assert "mock upstream error 400" in exc.message


async def test_wrong_api_key_is_googles_400(upstream: Any) -> None:
    provider = build_provider(ProviderConfig(
        name="gem", type="gemini", base_url=upstream.url + "/v1beta", api_key="wrong",
        timeout_ms=5000))
    try:
        with pytest.raises(UpstreamFailure) as err:
            await provider.complete("chat", _chat(), ttfb_timeout=TTFB)
    finally:
        await provider.aclose()
    assert err.value.status == 400 and "API key not valid" in err.value.message


async def test_429_is_retryable_with_retry_after(direct: Provider) -> None:
    with pytest.raises(UpstreamFailure) as err:
        await direct.complete("chat", _chat(model=f"{MODEL}+fail-429+retry-after-7"),
                              ttfb_timeout=TTFB)
    exc = err.value
    assert (exc.status, exc.type, exc.code, exc.retryable, exc.retry_after) == (
        429, "rate_limit_error", "RESOURCE_EXHAUSTED", True, 7.0)


async def test_500_and_stream_503_are_retryable(direct: Provider) -> None:
    with pytest.raises(UpstreamFailure) as err:
        await direct.complete("chat", _chat(model=f"{MODEL}+fail-500"), ttfb_timeout=TTFB)
    assert (err.value.status, err.value.type, err.value.retryable) == (500, "api_error", True)
    with pytest.raises(UpstreamFailure) as err:
        await _collect(direct, _chat(model=f"{MODEL}+fail-503"))
    assert (err.value.status, err.value.code, err.value.retryable) == (503, "UNAVAILABLE", True)


def test_retry_info_without_retry_after_header() -> None:
    body = json.dumps({"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED",
                                 "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                              "retryDelay": "12.5s"}]}}).encode()
    exc = failure_from_response("gem", 429, body, httpx.Headers())
    assert exc.retry_after == 12.5 and exc.retryable
    plain = failure_from_response("gem", 403, b"<html>denied</html>", httpx.Headers())
    assert plain.type == "permission_error" and "denied" in plain.message
    assert not plain.retryable


async def test_cut_stream_is_a_failure(direct: Provider) -> None:
    seen: list[StreamItem] = []
    with pytest.raises(UpstreamFailure) as err:
        async for item in direct.stream(_chat("a b c d e f", model=f"{MODEL}+cut-2"),
                                        ttfb_timeout=TTFB):
            seen.append(item)
    assert err.value.code == "upstream_stream_cut"
    assert seen and not any(i.usage_only for i in seen)


async def test_cut_body_is_a_failure(direct: Provider) -> None:
    with pytest.raises(UpstreamFailure) as err:
        await direct.complete("chat", _chat(model=f"{MODEL}+cut-1"), ttfb_timeout=TTFB)
    assert err.value.status == 502


async def test_stream_without_finish_reason_is_cut(direct: Provider) -> None:
    seen: list[StreamItem] = []
    with pytest.raises(UpstreamFailure) as err:
        async for item in direct.stream(_chat(model=f"{MODEL}+nofinish"), ttfb_timeout=TTFB):
            seen.append(item)
    assert err.value.code == "upstream_stream_cut"
    assert "finish reason" in err.value.message and len(seen) > 1


async def test_error_object_in_stream(direct: Provider) -> None:
    seen: list[StreamItem] = []
    with pytest.raises(UpstreamFailure) as err:
        async for item in direct.stream(_chat(model=f"{MODEL}+midstream-error"),
                                        ttfb_timeout=TTFB):
            seen.append(item)
    assert (err.value.status, err.value.code, err.value.retryable) == (503, "UNAVAILABLE", True)
    assert "overloaded" in err.value.message and seen


async def test_invalid_json_in_stream(direct: Provider) -> None:
    with pytest.raises(UpstreamFailure) as err:
        await _collect(direct, _chat(model=f"{MODEL}+badjson"))
    assert err.value.code == "upstream_invalid_response"


async def test_ttfb_timeout(direct: Provider) -> None:
    with pytest.raises(UpstreamFailure) as err:
        await direct.complete("chat", _chat(model=f"{MODEL}+delay-2000"), ttfb_timeout=0.3)
    assert err.value.status == 504 and err.value.retryable


# ------------------------------------------------------------------ embeddings


async def test_direct_embeddings_batch(direct: Provider, upstream: Any) -> None:
    texts = ["alpha", "beta gamma", "delta"]
    result = await direct.complete("embed", {"model": "text-embedding-004", "input": texts,
                                             "dimensions": 4}, ttfb_timeout=TTFB)
    body = _decode(result.body)
    assert body["object"] == "list" and body["model"] == "text-embedding-004"
    assert [d["embedding"] for d in body["data"]] == [mock_embedding(t, 4) for t in texts]
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    # ceil(5/4) + ceil(10/4) + ceil(5/4): Gemini's batch API has no counts.
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert result.usage == Usage(prompt_tokens=7, total_tokens=7)
    (req,) = upstream.requests
    assert req.path == "/v1beta/models/text-embedding-004:batchEmbedContents"
    assert req.body["requests"][1] == {"model": "models/text-embedding-004",
                                       "content": {"parts": [{"text": "beta gamma"}]},
                                       "outputDimensionality": 4}


async def test_direct_embeddings_large_batch_and_base64(direct: Provider,
                                                        upstream: Any) -> None:
    texts = [f"t{i}" for i in range(150)]
    result = await direct.complete("embed", {"model": "text-embedding-004", "input": texts,
                                             "dimensions": 2, "encoding_format": "base64"},
                                   ttfb_timeout=TTFB)
    data = _decode(result.body)["data"]
    assert len(data) == 150 and data[149]["index"] == 149
    assert list(struct.unpack("<2f", base64.b64decode(data[149]["embedding"]))) == (
        mock_embedding("t149", 2))
    assert [len(r.body["requests"]) for r in upstream.requests] == [100, 50]


async def test_token_array_embeddings_are_unsupported(direct: Provider,
                                                      upstream: Any) -> None:
    with pytest.raises(UpstreamFailure) as err:
        await direct.complete("embed", {"model": "text-embedding-004", "input": [1, 2, 3]},
                              ttfb_timeout=TTFB)
    assert (err.value.status, err.value.code, err.value.retryable) == (400, "unsupported", False)
    assert upstream.requests == []


async def test_list_models_follows_pages(direct: Provider, upstream: Any) -> None:
    assert await direct.list_models(timeout=TTFB) == list(GEMINI_MODELS)
    pages = [r for r in upstream.requests if r.path == "/v1beta/models"]
    assert len(pages) == 2 and pages[1].query["pageToken"] == "4"


# ---------------------------------------------------------------------- vertex


async def test_vertex_chat_and_stream(vertex: Provider, upstream: Any) -> None:
    result = await vertex.complete("chat", _chat(), ttfb_timeout=TTFB)
    assert _decode(result.body)["choices"][0]["message"]["content"] == (
        "mock reply to: hello gemini")
    items = await _collect(vertex, _chat("streamed"))
    assert items[-1].usage_only and items[-1].usage is not None
    posts = _gemini_posts(upstream)
    assert [r.path for r in posts] == [f"{VERTEX_PREFIX}{MODEL}:generateContent",
                                       f"{VERTEX_PREFIX}{MODEL}:streamGenerateContent"]
    assert posts[1].query == {"alt": "sse"}
    for req in posts:
        token = req.headers["authorization"].removeprefix("Bearer ")
        assert token in upstream.issued_tokens and "x-goog-api-key" not in req.headers
    assert len([r for r in upstream.requests if r.path == "/oauth2/token"]) == 1


async def test_vertex_embeddings_predict(vertex: Provider, upstream: Any) -> None:
    texts = ["alpha", "beta gamma"]
    result = await vertex.complete("embed", {"model": "text-embedding-005", "input": texts,
                                             "dimensions": 3}, ttfb_timeout=TTFB)
    body = _decode(result.body)
    assert [d["embedding"] for d in body["data"]] == [mock_embedding(t, 3) for t in texts]
    # statistics.token_count per text from the mock: len // 4 + 1.
    assert body["usage"] == {"prompt_tokens": 2 + 3, "total_tokens": 5}
    (req,) = _gemini_posts(upstream)
    assert req.path == f"{VERTEX_PREFIX}text-embedding-005:predict"
    assert req.body == {"instances": [{"content": "alpha"}, {"content": "beta gamma"}],
                        "parameters": {"outputDimensionality": 3}}


async def test_vertex_gemini_embedding_one_text_per_request(vertex: Provider,
                                                            upstream: Any) -> None:
    result = await vertex.complete("embed", {"model": "gemini-embedding-001",
                                             "input": ["a", "b", "c"]}, ttfb_timeout=TTFB)
    assert len(_decode(result.body)["data"]) == 3
    assert [len(r.body["instances"]) for r in _gemini_posts(upstream)] == [1, 1, 1]


async def test_vertex_list_models(upstream: Any, service_account: str) -> None:
    static = _vertex_provider(upstream, service_account)
    configured = _vertex_provider(upstream, service_account, models=["gemini-2.5-pro"])
    try:
        listed = await static.list_models(timeout=TTFB)
        assert "gemini-2.5-flash" in listed and "text-embedding-005" in listed
        assert await configured.list_models(timeout=TTFB) == ["gemini-2.5-pro"]
    finally:
        await static.aclose()
        await configured.aclose()
    assert upstream.requests == []


# ---------------------------------------------------------------------- native


_RESPONSE_ID = re.compile(rb'"responseId": "mock-\d+"')


async def test_native_stream_is_relayed_byte_for_byte(direct: Provider,
                                                      upstream: Any) -> None:
    body = json.dumps({"contents": [{"role": "user", "parts": [{"text": "hi there you"}]}]})
    call = NativeCall(kind="gemini", action="streamGenerateContent",
                      query="alt=sse&key=client-own-key")
    resp = await direct.native(call, body.encode(), "fast", stream=True, ttfb_timeout=TTFB)
    try:
        assert resp.status == 200
        assert ("content-type", "text/event-stream") in resp.headers
        relayed = await _read(resp.body)
    finally:
        await resp.close()
    req = upstream.requests[0]
    assert req.path == f"/v1beta/models/{MODEL}:streamGenerateContent"
    assert req.query == {"alt": "sse"}  # the client's key= never goes upstream
    assert req.headers["x-goog-api-key"] == KEY and req.raw_body == body.encode()
    # The same request straight to the mock: identical bytes but for the id.
    async with httpx.AsyncClient() as client:
        direct_answer = await client.post(
            f"{upstream.url}/v1beta/models/{MODEL}:streamGenerateContent?alt=sse",
            content=body, headers={"x-goog-api-key": KEY, "content-type": "application/json"})
    assert _RESPONSE_ID.sub(b"", relayed) == _RESPONSE_ID.sub(b"", direct_answer.content)
    assert relayed.count(b"\r\n\r\n") == 3
    assert resp.usage == Usage(prompt_tokens=4, completion_tokens=6, total_tokens=10)


async def test_native_generate_count_tokens_and_json_array_stream(direct: Provider) -> None:
    body = json.dumps({"contents": [{"parts": [{"text": "count me please"}]}]}).encode()
    resp = await direct.native(NativeCall(kind="gemini", action="generateContent"), body, MODEL,
                               stream=False, ttfb_timeout=TTFB)
    answer = json.loads(await _read(resp.body))
    await resp.close()
    assert answer["candidates"][0]["content"]["parts"][0]["text"].startswith("mock reply")
    assert resp.usage is not None and resp.usage.completion_tokens == 6

    resp = await direct.native(NativeCall(kind="gemini", action="countTokens"), body, MODEL,
                               stream=False, ttfb_timeout=TTFB)
    assert json.loads(await _read(resp.body)) == {"totalTokens": 4}
    await resp.close()
    assert resp.usage is None

    resp = await direct.native(NativeCall(kind="gemini", action="embedContent"),
                               b'{"content": {"parts": [{"text": "embed me"}]}, '
                               b'"outputDimensionality": 3}', "text-embedding-004",
                               stream=False, ttfb_timeout=TTFB)
    assert json.loads(await _read(resp.body)) == {
        "embedding": {"values": mock_embedding("embed me", 3)}}
    await resp.close()

    # Without alt=sse Gemini streams one JSON array, not SSE.
    resp = await direct.native(NativeCall(kind="gemini", action="streamGenerateContent"), body,
                               MODEL, stream=True, ttfb_timeout=TTFB)
    items = json.loads(await _read(resp.body))
    await resp.close()
    assert isinstance(items, list) and items[-1]["candidates"][0]["finishReason"] == "STOP"
    assert resp.usage is not None and resp.usage.completion_tokens == 6


async def test_native_errors(direct: Provider, upstream: Any) -> None:
    body = json.dumps({"contents": [{"role": "user", "parts": [{"text": "a b c d e"}]}]})
    resp = await direct.native(NativeCall(kind="gemini", action="generateContent"),
                               body.encode(), f"{MODEL}+fail-429", stream=False,
                               ttfb_timeout=TTFB)
    assert resp.status == 429  # returned, not raised: the worker decides
    assert json.loads(await _read(resp.body))["error"]["status"] == "RESOURCE_EXHAUSTED"
    await resp.close()

    resp = await direct.native(NativeCall(kind="gemini", action="streamGenerateContent",
                                          query="alt=sse"), body.encode(), f"{MODEL}+cut-1",
                               stream=True, ttfb_timeout=TTFB)
    with pytest.raises(UpstreamFailure) as err:
        await _read(resp.body)
    await resp.close()
    assert err.value.code == "upstream_stream_cut"

    with pytest.raises(UpstreamFailure) as err:
        await direct.native(NativeCall(kind="gemini", action="deleteEverything"), b"{}", MODEL,
                            stream=False, ttfb_timeout=TTFB)
    assert err.value.status == 400 and err.value.code == "unsupported"


async def test_native_vertex_url(vertex: Provider, upstream: Any) -> None:
    body = json.dumps({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).encode()
    resp = await vertex.native(NativeCall(kind="gemini", action="streamGenerateContent",
                                          query="alt=sse"), body, MODEL, stream=True,
                               ttfb_timeout=TTFB)
    assert resp.status == 200
    await _read(resp.body)
    await resp.close()
    assert resp.usage is not None and resp.usage.completion_tokens == 4
    (req,) = _gemini_posts(upstream)
    assert req.path == f"{VERTEX_PREFIX}{MODEL}:streamGenerateContent"
    assert req.query == {"alt": "sse"}
    assert req.headers["authorization"].removeprefix("Bearer ") in upstream.issued_tokens


# ------------------------------------------------------------- mock fidelity


@pytest.mark.parametrize(("body", "message"), [
    ({"contents": []}, "contents is not specified"),
    ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "valid role"),
    # The original's bug: the tool_call_id as the function name.
    ({"contents": [{"role": "user", "parts": [{"functionResponse": {
        "name": "call_123", "response": {"a": 1}}}]}],
      "tools": [{"functionDeclarations": [{"name": "f"}]}]}, "does not match"),
    ({"contents": [{"role": "user", "parts": [{"functionResponse": {
        "name": "f", "response": "raw text"}}]}],
      "tools": [{"functionDeclarations": [{"name": "f"}]}]}, "Struct"),
    ({"contents": [{"role": "user", "parts": [{"text": "x"}]}],
      "generationConfig": {"max_tokens": 5}}, "Unknown name"),
    ({"contents": [{"role": "user", "parts": [{"text": "x"}]}],
      "tools": [{"functionDeclarations": [{"name": "f", "parameters": {
          "type": "object", "properties": {"a": {"type": "string"}},
          "additionalProperties": False}}]}]}, "additionalProperties"),
    ({"model": "x", "contents": [{"role": "user", "parts": [{"text": "x"}]}]}, "Unknown name"),
])
async def test_mock_rejects_what_gemini_rejects(upstream: Any, body: dict[str, Any],
                                                message: str) -> None:
    async with httpx.AsyncClient() as client:
        resp = await client.post(f"{upstream.url}/v1beta/models/{MODEL}:generateContent",
                                 json=body, headers={"x-goog-api-key": KEY})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT" and message in error["message"]


async def test_mock_checks_credentials(upstream: Any) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "x"}]}]}
    async with httpx.AsyncClient() as client:
        direct = await client.post(f"{upstream.url}/v1beta/models/{MODEL}:generateContent",
                                   json=body)
        vertex = await client.post(f"{upstream.url}{VERTEX_PREFIX}{MODEL}:generateContent",
                                   json=body, headers={"authorization": "Bearer forged"})
    assert direct.status_code == 400
    assert direct.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    assert vertex.status_code == 401 and vertex.json()["error"]["status"] == "UNAUTHENTICATED"
