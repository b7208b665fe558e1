"""The Anthropic adapter against the mock upstream over real HTTP, on its three
hostings: direct (x-api-key), Vertex AI (Google service-account token from
the mock's /oauth2/token) and Bedrock (SigV4, verified by the mock)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from cloud_creds import write_service_account
from gandalf_common.config import ProviderAuthConfig, ProviderConfig
from gandalf_common.contract import NativeCall, Usage
from gandalf_workers.providers.base import Provider, StreamItem, UpstreamFailure
from gandalf_workers.providers.registry import build_provider
from mock_anthropic import CACHED_TOKENS, eventstream_frame

HOSTINGS = ["direct", "vertex", "bedrock"]
PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5E"
       "rkJggg==")
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time"}}
TIMEOUT = 5.0


@pytest.fixture(scope="module")
def gcp_credentials(tmp_path_factory: pytest.TempPathFactory, mock_upstream: Any) -> str:
    """A service-account file with a fresh RSA key; tokens come from the mock."""
    return write_service_account(tmp_path_factory.mktemp("gcp") / "sa.json",
                                 mock_upstream.url + "/oauth2/token")


def config(hosting: str, upstream: Any, credentials: str, **extra: Any) -> ProviderConfig:
    if hosting == "vertex":
        return ProviderConfig(name="claude-vertex", type="anthropic", hosting="vertex",
                              region="us-east5", project="proj", base_url=upstream.url,
                              timeout_ms=5000, auth=ProviderAuthConfig(
                                  type="gcp_oauth", credentials_file=credentials), **extra)
    if hosting == "bedrock":
        return ProviderConfig(name="claude-bedrock", type="anthropic", hosting="bedrock",
                              region="us-east-1", base_url=upstream.url, timeout_ms=5000,
                              auth=ProviderAuthConfig(
                                  type="aws_sigv4", access_key_id="AKIDMOCKGANDALF",
                                  secret_access_key="mock-aws-secret-key"), **extra)
    return ProviderConfig(name="claude", type="anthropic", base_url=upstream.url + "/v1",
                          api_key=upstream.api_key, timeout_ms=5000, **extra)


@pytest_asyncio.fixture(params=HOSTINGS)
async def provider(request: pytest.FixtureRequest, upstream: Any,
                   gcp_credentials: str) -> AsyncIterator[Provider]:
    p = build_provider(config(request.param, upstream, gcp_credentials))
    p.hosting = request.param  # type: ignore[attr-defined]  # for the assertions
    yield p
    await p.aclose()


@pytest_asyncio.fixture
async def direct(upstream: Any, gcp_credentials: str) -> AsyncIterator[Provider]:
    p = build_provider(config("direct", upstream, gcp_credentials))
    yield p
    await p.aclose()


def sent(upstream: Any) -> list[Any]:
    """Requests the adapter sent (not the token requests of the Google auth)."""
    return [r for r in upstream.requests if r.path != "/oauth2/token"]


def chat(model: str = "claude-sonnet-4-6", text: str = "hello there",
         **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Be kind."},
        {"role": "user", "content": text}], **extra}


async def collect(p: Provider, payload: dict[str, Any]) -> list[StreamItem]:
    return [item async for item in p.stream(payload, ttfb_timeout=TIMEOUT)]


def chunks(items: list[StreamItem]) -> list[dict[str, Any]]:
    return [json.loads(i.data) for i in items if i.data is not None]


def text_of(items: list[StreamItem]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or ""
                   for c in chunks(items) if c["choices"])


def tool_calls_of(items: list[StreamItem]) -> dict[int, dict[str, str]]:
    calls: dict[int, dict[str, str]] = {}
    for c in chunks(items):
        for choice in c["choices"]:
            for call in choice["delta"].get("tool_calls", []):
                entry = calls.setdefault(call["index"], {"arguments": ""})
                if "id" in call:
                    entry.update(id=call["id"], name=call["function"]["name"])
                entry["arguments"] += call["function"]["arguments"]
    return calls


def assert_wire(hosting: str, record: Any, *, stream: bool) -> None:
    """What each hosting must (not) send."""
    body = record.body
    if hosting == "direct":
        assert record.path == "/v1/messages"
        assert record.headers["anthropic-version"] == "2023-06-01"
        assert record.headers["x-api-key"] == "sk-upstream-secret"
        assert body["model"] == "claude-sonnet-4-6" and "anthropic_version" not in body
        assert body.get("stream", False) is stream
    elif hosting == "vertex":
        action = "streamRawPredict" if stream else "rawPredict"
        assert record.path == ("/v1/projects/proj/locations/us-east5/publishers/anthropic/"
                               f"models/claude-sonnet-4-6:{action}")
        assert record.headers["authorization"].startswith("Bearer ya29.")
        assert "anthropic-version" not in record.headers
        assert "model" not in body and body["anthropic_version"] == "vertex-2023-10-16"
        assert body.get("stream", False) is stream
    else:
        action = "invoke-with-response-stream" if stream else "invoke"
        assert record.path == f"/model/claude-sonnet-4-6/{action}"
        assert record.headers["authorization"].startswith("AWS4-HMAC-SHA256 ")
        assert "model" not in body and "stream" not in body
        assert body["anthropic_version"] == "bedrock-2023-05-31"
    assert body["system"] == "Be brief.\n\nBe kind."
    assert body["max_tokens"] == 4096


# ------------------------------------------------------------- round trips


async def test_complete(provider: Provider, upstream: Any) -> None:
    result = await provider.complete("chat", chat(), ttfb_timeout=TIMEOUT)
    body = json.loads(result.body)
    assert body["object"] == "chat.completion" and body["id"].startswith("msg_mock_")
    assert body["choices"][0]["message"] == {"role": "assistant",
                                             "content": "mock reply to: hello there"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert result.usage is not None and result.usage.completion_tokens == 5
    assert body["usage"]["prompt_tokens"] == result.usage.prompt_tokens > 0
    (record,) = sent(upstream)
    assert record.status == 200
    assert_wire(provider.hosting, record, stream=False)  # type: ignore[attr-defined]


async def test_stream(provider: Provider, upstream: Any) -> None:
    items = await collect(provider, chat(stream_options={"include_usage": True}))
    data = chunks(items)
    assert data[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert text_of(items) == "mock reply to: hello there"
    assert data[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                      "finish_reason": "stop"}
    assert items[-1].usage_only and data[-1]["choices"] == []
    assert items[-1].usage == Usage(prompt_tokens=items[-1].usage.prompt_tokens,
                                    completion_tokens=5,
                                    total_tokens=items[-1].usage.prompt_tokens + 5)
    assert data[-1]["usage"]["completion_tokens"] == 5
    assert not any(i.usage_only for i in items[:-1])
    heads = {(c["id"], c["object"], c["created"], c["model"]) for c in data}
    assert len(heads) == 1 and next(iter(heads))[1] == "chat.completion.chunk"
    assert_wire(provider.hosting, sent(upstream)[0], stream=True)  # type: ignore[attr-defined]


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_tools_two_turns(provider: Provider, upstream: Any, stream: bool) -> None:
    """Definition -> call -> result -> answer, with the mock checking every turn."""
    first = chat(text="Weather in Paris?", tools=[WEATHER, CLOCK], tool_choice="auto")
    if stream:
        items = await collect(provider, first)
        calls = tool_calls_of(items)
        assert text_of(items) == "mock calling get_weather"
        assert chunks(items)[-2]["choices"][0]["finish_reason"] == "tool_calls"
        call = {"id": calls[0]["id"], "name": calls[0]["name"],
                "arguments": calls[0]["arguments"]}
        assert list(calls) == [0]
    else:
        result = await provider.complete("chat", first, ttfb_timeout=TIMEOUT)
        choice = json.loads(result.body)["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] == "mock calling get_weather"
        (raw,) = choice["message"]["tool_calls"]
        call = {"id": raw["id"], "name": raw["function"]["name"],
                "arguments": raw["function"]["arguments"]}
    assert call["id"] == "toolu_mock_1" and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "mock"}
    body = sent(upstream)[0].body
    assert body["tools"][0] == {"name": "get_weather", "description": "Weather of a city",
                                "input_schema": WEATHER["function"]["parameters"]}
    assert body["tool_choice"] == {"type": "auto"}

    second = dict(first)
    second["messages"] = [*first["messages"],
                          {"role": "assistant", "content": "mock calling get_weather",
                           "tool_calls": [{"id": call["id"], "type": "function", "function": {
                               "name": call["name"], "arguments": call["arguments"]}}]},
                          {"role": "tool", "tool_call_id": call["id"], "content": "18C sunny"}]
    if stream:
        answer = text_of(await collect(provider, second))
    else:
        result = await provider.complete("chat", second, ttfb_timeout=TIMEOUT)
        answer = json.loads(result.body)["choices"][0]["message"]["content"]
    assert answer == "mock reply to tool result: 18C sunny"
    assert sent(upstream)[1].status == 200
    assert sent(upstream)[1].body["messages"][-1] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_mock_1", "content": "18C sunny"}]}


async def test_parallel_tool_calls_stream(direct: Provider, upstream: Any) -> None:
    items = await collect(direct, chat("claude;parallel-tools", tools=[WEATHER, CLOCK],
                                       tool_choice="required"))
    calls = tool_calls_of(items)
    assert calls == {0: {"id": "toolu_mock_1", "name": "get_weather",
                         "arguments": '{"city": "mock"}'},
                     1: {"id": "toolu_mock_2", "name": "get_time",
                         "arguments": '{"query": "mock"}'}}
    assert sent(upstream)[0].body["tool_choice"] == {"type": "any"}
    # Both results (two tool messages) plus a user remark: one user turn for Anthropic.
    follow_up = chat("claude", tools=[WEATHER, CLOCK])
    follow_up["messages"] += [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": c["id"], "type": "function",
             "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in calls.values()]},
        {"role": "tool", "tool_call_id": "toolu_mock_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_mock_2", "content": "noon"},
        {"role": "user", "content": "thanks"}]
    result = await direct.complete("chat", follow_up, ttfb_timeout=TIMEOUT)
    answer = json.loads(result.body)["choices"][0]["message"]["content"]
    assert answer == "mock reply to tool result: 18C noon"
    last = sent(upstream)[1].body["messages"][-1]
    assert [b["type"] for b in last["content"]] == ["tool_result", "tool_result", "text"]


async def test_parallel_tool_calls_false(direct: Provider, upstream: Any) -> None:
    items = await collect(direct, chat("claude;parallel-tools", tools=[WEATHER, CLOCK],
                                       parallel_tool_calls=False))
    assert list(tool_calls_of(items)) == [0]
    assert sent(upstream)[0].body["tool_choice"] == {"type": "auto",
                                                        "disable_parallel_tool_use": True}


async def test_images(provider: Provider, upstream: Any) -> None:
    payload = {"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}
    result = await provider.complete("chat", payload, ttfb_timeout=TIMEOUT)
    assert json.loads(result.body)["choices"][0]["message"]["content"] == (
        "mock reply to: what is this")
    content = sent(upstream)[0].body["messages"][0]["content"]
    assert content[1] == {"type": "image", "source": {"type": "base64",
                                                      "media_type": "image/png", "data": PNG}}
    assert content[2] == {"type": "image", "source": {"type": "url",
                                                      "url": "https://example.com/cat.png"}}


async def test_json_schema(provider: Provider) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": {
        "type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}},
        "required": ["ok", "n"]}}}
    result = await provider.complete("chat", chat(response_format=fmt), ttfb_timeout=TIMEOUT)
    choice = json.loads(result.body)["choices"][0]
    assert json.loads(choice["message"]["content"]) == {"ok": True, "n": 1}
    assert choice["finish_reason"] == "stop" and "tool_calls" not in choice["message"]
    items = await collect(provider, chat(response_format=fmt))
    assert json.loads(text_of(items)) == {"ok": True, "n": 1}
    assert chunks(items)[-2]["choices"][0]["finish_reason"] == "stop"


async def test_stop_and_max_tokens(direct: Provider, upstream: Any) -> None:
    result = await direct.complete("chat", chat(text="one two three", stop="two"),
                                   ttfb_timeout=TIMEOUT)
    choice = json.loads(result.body)["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == (
        "mock reply to: one", "stop")
    assert sent(upstream)[0].body["stop_sequences"] == ["two"]
    result = await direct.complete("chat", chat(max_completion_tokens=2), ttfb_timeout=TIMEOUT)
    choice = json.loads(result.body)["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("mock reply", "length")


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_cached_usage(provider: Provider, stream: bool) -> None:
    payload = chat("claude;cached")
    if stream:
        usage = (await collect(provider, payload))[-1].usage
    else:
        usage = (await provider.complete("chat", payload, ttfb_timeout=TIMEOUT)).usage
    assert usage is not None and usage.cached_tokens == CACHED_TOKENS
    assert usage.prompt_tokens > CACHED_TOKENS
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_bedrock_model_map_inference_profile(upstream: Any, gcp_credentials: str) -> None:
    """A mapped ARN (``:`` and ``/``) stays one path segment, correctly signed."""
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-x-v1:0"
    p = build_provider(config("bedrock", upstream, gcp_credentials,
                              model_map={"claude-sonnet-4-6": arn}))
    try:
        result = await p.complete("chat", chat(), ttfb_timeout=TIMEOUT)
    finally:
        await p.aclose()
    assert json.loads(result.body)["choices"][0]["finish_reason"] == "stop"
    assert sent(upstream)[0].model == arn and sent(upstream)[0].status == 200


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(("model", "status", "otype", "retryable", "retry_after"), [
    ("claude;fail-400", 400, "invalid_request_error", False, 0.0),
    ("claude;fail-429;retry-after-7", 429, "rate_limit_error", True, 7.0),
    ("claude;fail-500", 500, "api_error", True, 0.0),
    ("claude;fail-529", 529, "api_error", True, 0.0),
])
async def test_error_mapping(provider: Provider, model: str, status: int, otype: str,
                             retryable: bool, retry_after: float) -> None:
    for attempt in ("complete", "stream"):
        with pytest.raises(UpstreamFailure) as info:
            if attempt == "complete":
                await provider.complete("chat", chat(model), ttfb_timeout=TIMEOUT)
            else:
                await collect(provider, chat(model))
        exc = info.value
        assert (exc.status, exc.type, exc.retryable, exc.retry_after) == (
            status, otype, retryable, retry_after), attempt
        assert f"mock upstream error {status}" in exc.message
        if provider.hosting == "bedrock" and status == 429:  # type: ignore[attr-defined]
            assert exc.code == "ThrottlingException"


async def test_upstream_validation_error_keeps_message(provider: Provider) -> None:
    with pytest.raises(UpstreamFailure) as info:
        await provider.complete("chat", chat(temperature=1.5), ttfb_timeout=TIMEOUT)
    assert info.value.status == 400 and not info.value.retryable
    assert "temperature" in info.value.message


async def test_invalid_tool_arguments_are_400_before_sending(direct: Provider,
                                                             upstream: Any) -> None:
    payload = chat()
    payload["messages"] += [{"role": "assistant", "tool_calls": [{
        "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]
    with pytest.raises(UpstreamFailure) as info:
        await direct.complete("chat", payload, ttfb_timeout=TIMEOUT)
    assert (info.value.status, info.value.type, info.value.code, info.value.retryable) == (
        400, "invalid_request_error", "invalid_request", False)
    assert sent(upstream) == []


@pytest.mark.parametrize("hosting", HOSTINGS)
async def test_bad_credentials(hosting: str, upstream: Any, tmp_path: Path) -> None:
    if hosting == "direct":
        cfg = ProviderConfig(name="c", type="anthropic", base_url=upstream.url + "/v1",
                             api_key="wrong", timeout_ms=5000)
        expected = (401, "authentication_error")
    elif hosting == "bedrock":
        cfg = ProviderConfig(name="c", type="anthropic", hosting="bedrock", region="us-east-1",
                             base_url=upstream.url, timeout_ms=5000, auth=ProviderAuthConfig(
                                 type="aws_sigv4", access_key_id="AKIDMOCKGANDALF",
                                 secret_access_key="not-the-secret"))
        expected = (403, "permission_error")
    else:
        # No Google token at all: an API key where Vertex wants a bearer token.
        cfg = ProviderConfig(name="c", type="anthropic", hosting="vertex", region="r",
                             project="p", base_url=upstream.url, timeout_ms=5000,
                             api_key="forged")
        expected = (401, "authentication_error")
    p = build_provider(cfg)
    try:
        with pytest.raises(UpstreamFailure) as info:
            await p.complete("chat", chat(), ttfb_timeout=TIMEOUT)
    finally:
        await p.aclose()
    assert (info.value.status, info.value.type, info.value.retryable) == (*expected, False)


async def test_cut_stream_is_a_failure(provider: Provider) -> None:
    received: list[StreamItem] = []
    with pytest.raises(UpstreamFailure) as info:
        async for item in provider.stream(chat("claude;cut-4"), ttfb_timeout=TIMEOUT):
            received.append(item)
    assert info.value.code == "upstream_stream_cut" and info.value.retryable
    assert received and not any(i.usage_only for i in received)


async def test_cut_body_is_a_failure(provider: Provider) -> None:
    with pytest.raises(UpstreamFailure) as info:
        await provider.complete("chat", chat("claude;cut-1"), ttfb_timeout=TIMEOUT)
    assert info.value.code in ("upstream_read_error", "upstream_invalid_response")


@pytest.mark.parametrize(("directive", "status"), [("stream-error", 502),
                                                   ("stream-throttle", 429)])
async def test_error_event_mid_stream(provider: Provider, directive: str, status: int) -> None:
    received: list[StreamItem] = []
    with pytest.raises(UpstreamFailure) as info:
        async for item in provider.stream(chat(f"claude;{directive}"), ttfb_timeout=TIMEOUT):
            received.append(item)
    assert info.value.status == status and info.value.retryable
    expected = {("direct", 502): "overloaded_error", ("direct", 429): "rate_limit_error",
                ("bedrock", 502): "modelStreamErrorException",
                ("bedrock", 429): "throttlingException"}
    hosting = provider.hosting  # type: ignore[attr-defined]
    assert info.value.code == expected[("direct" if hosting == "vertex" else hosting, status)]
    assert text_of(received) == "mock"  # the part before the error was delivered


async def test_invalid_stream_event(provider: Provider) -> None:
    with pytest.raises(UpstreamFailure) as info:
        await collect(provider, chat("claude;bad-json"))
    assert info.value.code == "upstream_invalid_response"


async def test_bedrock_truncated_frame(upstream: Any, gcp_credentials: str) -> None:
    """cut-N on Bedrock: N frames, half a frame, then a clean end of the body."""
    p = build_provider(config("bedrock", upstream, gcp_credentials))
    try:
        with pytest.raises(UpstreamFailure) as info:
            await collect(p, chat("claude;cut-3"))
    finally:
        await p.aclose()
    assert info.value.code == "upstream_stream_cut"
    assert "inside a frame" in info.value.message
    assert sent(upstream)[0].completed  # not a dropped connection


async def test_embeddings_unsupported(provider: Provider, upstream: Any) -> None:
    with pytest.raises(UpstreamFailure) as info:
        await provider.complete("embed", {"model": "m", "input": "x"}, ttfb_timeout=TIMEOUT)
    assert (info.value.status, info.value.code, info.value.retryable) == (
        400, "unsupported", False)
    assert "embeddings" in info.value.message and sent(upstream) == []


# -------------------------------------------------------------- list models


async def test_list_models(upstream: Any, gcp_credentials: str) -> None:
    cfg = ProviderConfig(name="c", type="anthropic", base_url=upstream.url + "/anthropic/v1",
                         api_key=upstream.api_key, timeout_ms=5000)
    p = build_provider(cfg)
    try:
        assert await p.list_models(timeout=TIMEOUT) == ["claude-opus-4-6", "claude-sonnet-4-6",
                                                       "claude-haiku-4-5"]
    finally:
        await p.aclose()
    assert sent(upstream)[0].headers["x-api-key"] == upstream.api_key
    for hosting, extra, expected in [
            ("bedrock", {"models": ["claude-a"], "model_map": {"claude-b": "anthropic.b:0"}},
             ["claude-a", "claude-b"]),
            ("vertex", {}, ["claude-opus-4-6", "claude-sonnet-4-6", "claude-haiku-4-5"])]:
        p = build_provider(config(hosting, upstream, gcp_credentials, **extra))
        try:
            assert await p.list_models(timeout=TIMEOUT) == expected
        finally:
            await p.aclose()


# ------------------------------------------------------------------ native


def messages_body(stream: bool, model: str = "alias-model") -> bytes:
    return json.dumps({"model": model, "max_tokens": 64, "stream": stream,
                       "messages": [{"role": "user", "content": "native hi"}]}).encode()


async def read(resp: Any) -> bytes:
    try:
        return b"".join([chunk async for chunk in resp.body])
    finally:
        await resp.close()


def sse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in raw.decode().split("\n\n"):
        if block.strip():
            lines = dict(line.split(": ", 1) for line in block.split("\n"))
            out.append((lines["event"], json.loads(lines["data"])))
    return out


NATIVE = NativeCall(kind="anthropic", action="messages",
                    headers=[("anthropic-beta", "tools-2024-05-16"),
                             ("anthropic-version", "2023-01-01")])


async def test_native_direct_stream_is_byte_for_byte(direct: Provider, upstream: Any) -> None:
    resp = await direct.native(NATIVE, messages_body(True), "claude-sonnet-4-6", stream=True,
                               ttfb_timeout=TIMEOUT)
    assert resp.status == 200
    got = await read(resp)
    # The same request straight to the mock: identical bytes but for the message id.
    async with httpx.AsyncClient() as client:
        direct_resp = await client.post(upstream.url + "/v1/messages",
                                        content=messages_body(True, "claude-sonnet-4-6"),
                                        headers={"x-api-key": upstream.api_key,
                                                 "anthropic-version": "2023-06-01"})
    normal = re.compile(rb"msg_mock_\d+")
    assert normal.sub(b"ID", got) == normal.sub(b"ID", direct_resp.content)
    assert dict(resp.headers)["content-type"].startswith("text/event-stream")
    assert resp.usage is not None and resp.usage.completion_tokens == 5
    record = sent(upstream)[0]
    assert record.body["model"] == "claude-sonnet-4-6" and record.body["stream"] is True
    assert record.headers["anthropic-beta"] == "tools-2024-05-16"
    assert record.headers["anthropic-version"] == "2023-01-01"  # the client's own


async def test_native_bedrock_stream_arrives_as_sse(upstream: Any, gcp_credentials: str) -> None:
    p = build_provider(config("bedrock", upstream, gcp_credentials))
    try:
        resp = await p.native(NATIVE, messages_body(True), "claude-sonnet-4-6", stream=True,
                              ttfb_timeout=TIMEOUT)
        raw = await read(resp)
    finally:
        await p.aclose()
    assert resp.status == 200
    assert dict(resp.headers)["content-type"].startswith("text/event-stream")
    events = sse_events(raw)
    assert all(name == data["type"] for name, data in events)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == "mock reply to: native hi"
    assert resp.usage is not None and resp.usage.completion_tokens == 5
    record = sent(upstream)[0]
    assert record.path == "/model/claude-sonnet-4-6/invoke-with-response-stream"
    assert "model" not in record.body and "stream" not in record.body
    assert record.body["anthropic_version"] == "bedrock-2023-05-31"
    assert record.body["anthropic_beta"] == ["tools-2024-05-16"]


async def test_native_bedrock_stream_error_fails(upstream: Any, gcp_credentials: str) -> None:
    p = build_provider(config("bedrock", upstream, gcp_credentials))
    try:
        resp = await p.native(NATIVE, messages_body(True), "claude;stream-error", stream=True,
                              ttfb_timeout=TIMEOUT)
        with pytest.raises(UpstreamFailure) as info:
            await read(resp)
    finally:
        await p.aclose()
    assert info.value.status == 502 and info.value.code == "modelStreamErrorException"


async def test_native_vertex_complete(upstream: Any, gcp_credentials: str) -> None:
    p = build_provider(config("vertex", upstream, gcp_credentials))
    try:
        resp = await p.native(NATIVE, messages_body(False), "claude-sonnet-4-6", stream=False,
                              ttfb_timeout=TIMEOUT)
        data = json.loads(await read(resp))
    finally:
        await p.aclose()
    assert resp.status == 200 and data["type"] == "message"
    assert data["content"][0]["text"] == "mock reply to: native hi"
    assert resp.usage == Usage(prompt_tokens=data["usage"]["input_tokens"],
                               completion_tokens=5,
                               total_tokens=data["usage"]["input_tokens"] + 5)
    record = sent(upstream)[-1]
    assert record.path.endswith("/models/claude-sonnet-4-6:rawPredict")
    assert "model" not in record.body
    assert record.body["anthropic_version"] == "vertex-2023-10-16"
    assert record.headers["anthropic-beta"] == "tools-2024-05-16"


async def test_native_error_is_returned(upstream: Any, gcp_credentials: str) -> None:
    p = build_provider(config("bedrock", upstream, gcp_credentials))
    try:
        resp = await p.native(NATIVE, messages_body(False), "claude;fail-429", stream=False,
                              ttfb_timeout=TIMEOUT)
        data = json.loads(await read(resp))
    finally:
        await p.aclose()
    assert resp.status == 429 and data == {"message": "mock upstream error 429"}


async def test_native_count_tokens_and_unsupported(direct: Provider, upstream: Any,
                                                   gcp_credentials: str) -> None:
    count = NativeCall(kind="anthropic", action="messages/count_tokens")
    body = json.dumps({"model": "x", "messages": [{"role": "user", "content": "abcdefgh"}]})
    resp = await direct.native(count, body.encode(), "claude-sonnet-4-6", stream=False,
                               ttfb_timeout=TIMEOUT)
    assert resp.status == 200 and json.loads(await read(resp)) == {"input_tokens": 3}
    assert sent(upstream)[0].path == "/v1/messages/count_tokens"
    with pytest.raises(UpstreamFailure) as info:
        await direct.native(NativeCall(kind="gemini", action="generateContent"), b"{}", "m",
                            stream=False, ttfb_timeout=TIMEOUT)
    assert info.value.status == 400 and info.value.code == "unsupported"
    p = build_provider(config("vertex", upstream, gcp_credentials))
    try:
        with pytest.raises(UpstreamFailure) as info:
            await p.native(count, body.encode(), "m", stream=False, ttfb_timeout=TIMEOUT)
    finally:
        await p.aclose()
    assert info.value.code == "unsupported"


# ---------------------------------------------------------- the mock itself


@pytest.mark.parametrize(("path", "body", "fragment"), [
    ("/v1/messages", {"model": "m", "messages": [{"role": "user", "content": "x"}]},
     "max_tokens"),
    ("/v1/messages", {"model": "m", "max_tokens": 5, "messages": [
        {"role": "system", "content": "s"}, {"role": "user", "content": "x"}]}, "system"),
    ("/v1/messages", {"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "x"}, {"role": "user", "content": "y"}]}, "alternate"),
    ("/v1/messages", {"model": "m", "max_tokens": 5, "tools": [{"name": "f"}],
                      "messages": [{"role": "user", "content": "x"}]}, "input_schema"),
    ("/v1/messages", {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": "r"}]}]}, "tool_use_id"),
    ("/v1/messages", {"model": "m", "max_tokens": 5, "n": 2,
                      "messages": [{"role": "user", "content": "x"}]}, "Extra inputs"),
    ("/v1/messages", {"model": "m", "max_tokens": 5, "stop_sequences": "x",
                      "messages": [{"role": "user", "content": "x"}]}, "stop_sequences"),
    ("/v1/messages", {"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f",
                                           "input": {}}]},
        {"role": "user", "content": "no result"}]}, "without `tool_result`"),
])
async def test_mock_rejects_what_anthropic_rejects(upstream: Any, path: str,
                                                   body: dict[str, Any], fragment: str) -> None:
    async with httpx.AsyncClient() as client:
        resp = await client.post(upstream.url + path, json=body, headers={
            "x-api-key": upstream.api_key, "anthropic-version": "2023-06-01"})
    assert resp.status_code == 400
    error = resp.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert fragment in error["error"]["message"]


async def test_mock_rejects_hosted_body_mistakes(provider: Provider, upstream: Any) -> None:
    """A model field or the direct API's version on Vertex/Bedrock is a 400."""
    hosting = provider.hosting  # type: ignore[attr-defined]
    if hosting == "direct":
        return
    from mock_anthropic import validate_request
    good = {"anthropic_version": "vertex-2023-10-16" if hosting == "vertex"
            else "bedrock-2023-05-31", "max_tokens": 5,
            "messages": [{"role": "user", "content": "x"}]}
    assert validate_request(good, hosting) is None
    assert "model" in str(validate_request({**good, "model": "m"}, hosting))
    assert "anthropic_version" in str(validate_request(
        {**good, "anthropic_version": "2023-06-01"}, hosting))
    if hosting == "bedrock":
        assert "stream" in str(validate_request({**good, "stream": True}, hosting))


def test_eventstream_frame_is_what_botocore_parses() -> None:
    from botocore.eventstream import EventStreamBuffer

    buffer = EventStreamBuffer()
    buffer.add_data(eventstream_frame({":message-type": "event"}, b'{"a":1}'))
    (message,) = list(buffer)
    assert message.headers == {":message-type": "event"} and message.payload == b'{"a":1}'
