"""Tests for the mock OpenAI upstream (tests/mock_upstream.py), driven by the real SDK."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from mock_upstream import (
    Fault,
    MockUpstream,
    mock_embedding,
    parse_model_faults,
)

API_KEY = "sk-mock-test"
USER_MSG = [{"role": "user", "content": "hello brave new world"}]
EXPECTED_REPLY = "mock reply to: hello brave new world"


@pytest.fixture(scope="module")
def upstream() -> Iterator[MockUpstream]:
    with MockUpstream(api_key=API_KEY) as mock:
        yield mock


@pytest.fixture
def mock(upstream: MockUpstream) -> MockUpstream:
    upstream.reset()
    return upstream


@pytest.fixture
async def client(mock: MockUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    c = openai.AsyncOpenAI(base_url=mock.base_url, api_key=API_KEY, max_retries=0, timeout=5)
    yield c
    await c.close()


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def _sse_payloads(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


# ----------------------------------------------------------------- directive parsing


def test_parse_model_faults() -> None:
    assert parse_model_faults("gpt-4o") == Fault()
    assert parse_model_faults("ok") == Fault()
    assert parse_model_faults("gpt-4o;fail-503+retry-after-2") == Fault(status=503, retry_after=2)
    # chunk-delay must not be mistaken for delay, and vice versa
    assert parse_model_faults("chunk-delay-200") == Fault(chunk_delay_ms=200)
    assert parse_model_faults("delay-500+words-50") == Fault(delay_ms=500, words=50)
    assert parse_model_faults("mock/cut-3;hang") == Fault(cut=3, hang=True)
    assert parse_model_faults("fail-500x") == Fault()  # tokens must match exactly


# ----------------------------------------------------------------------- happy path


async def test_chat_non_stream(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},  # 14 chars
        {"role": "user", "content": "hello brave new world"},  # 21 chars
    ]
    r1 = await client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    r2 = await client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert r1.object == "chat.completion"
    assert re.fullmatch(r"chatcmpl-mock-\d+", r1.id) and r1.id != r2.id
    assert isinstance(r1.created, int)
    assert r1.model == "gpt-4o-mini"
    choice = r1.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == EXPECTED_REPLY
    assert choice.finish_reason == "stop"
    assert r1.usage is not None
    assert r1.usage.prompt_tokens == (14 + 21) // 4 + 1
    assert r1.usage.completion_tokens == len(EXPECTED_REPLY.split())
    assert r1.usage.total_tokens == r1.usage.prompt_tokens + r1.usage.completion_tokens
    assert r2.choices[0].message.content == choice.message.content  # deterministic

    rec = mock.requests[0]
    assert (rec.method, rec.path) == ("POST", "/v1/chat/completions")
    assert rec.headers["authorization"] == f"Bearer {API_KEY}"
    assert all(k == k.lower() for k in rec.headers)
    assert rec.body["messages"] == messages and rec.body["model"] == "gpt-4o-mini"
    assert rec.status == 200 and rec.completed and rec.client_closed_at is None
    assert rec.finished_at is not None and rec.finished_at >= rec.received_at


async def test_words_directive(client: openai.AsyncOpenAI) -> None:
    r = await client.chat.completions.create(model="gpt-4o+words-50", messages=USER_MSG)
    content = r.choices[0].message.content
    assert content is not None and len(content.split()) == 50
    assert content.startswith(EXPECTED_REPLY)
    assert r.usage is not None and r.usage.completion_tokens == 50


async def test_stream_without_usage(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(model="gpt-4o", messages=USER_MSG, stream=True)
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    words = EXPECTED_REPLY.split()
    assert len(chunks) == 1 + len(words) + 1  # role, one per word, finish
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == EXPECTED_REPLY
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert all(c.choices for c in chunks)  # no usage chunk
    assert all(c.object == "chat.completion.chunk" and c.model == "gpt-4o" for c in chunks)
    assert len({c.id for c in chunks}) == 1

    # wire format: no "usage" key at all, ends with [DONE]
    async with httpx.AsyncClient() as h:
        resp = await h.post(
            f"{mock.base_url}/chat/completions",
            json={"model": "gpt-4o", "messages": USER_MSG, "stream": True},
            headers=_auth(),
        )
    assert resp.headers["content-type"].startswith("text/event-stream")
    payloads = _sse_payloads(resp.text)
    assert payloads[-1] == "[DONE]"
    assert all("usage" not in json.loads(p) for p in payloads[:-1])
    assert mock.requests[-1].stream and mock.requests[-1].chunks_sent == len(payloads)


async def test_stream_with_usage(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o",
        messages=USER_MSG,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.prompt_tokens == len(USER_MSG[0]["content"]) // 4 + 1
    assert usage_chunk.usage.completion_tokens == len(EXPECTED_REPLY.split())
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert all(c.usage is None and c.choices for c in chunks[:-1])

    async with httpx.AsyncClient() as h:
        resp = await h.post(
            f"{mock.base_url}/chat/completions",
            json={
                "model": "gpt-4o",
                "messages": USER_MSG,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            headers=_auth(),
        )
    payloads = _sse_payloads(resp.text)
    assert payloads[-1] == "[DONE]"
    objs = [json.loads(p) for p in payloads[:-1]]
    # every non-usage chunk carries an explicit "usage": null, like OpenAI
    assert all("usage" in o and o["usage"] is None for o in objs[:-1])
    assert objs[-1]["choices"] == [] and objs[-1]["usage"]["total_tokens"] > 0


async def test_chunk_delay_spaces_out_chunks(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="chunk-delay-60+words-2", messages=USER_MSG, stream=True
    )
    arrivals = []
    async for _ in stream:
        arrivals.append(time.monotonic())
    assert len(arrivals) == 4  # role, 2 words, finish
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) >= 0.04


async def test_embeddings(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    texts = ["alpha", "beta", "gamma"]
    # SDK default requests base64 and decodes it
    r = await client.embeddings.create(model="text-embedding-3-small", input=texts, dimensions=16)
    assert r.object == "list" and r.model == "text-embedding-3-small"
    assert [d.index for d in r.data] == [0, 1, 2]
    for d, text in zip(r.data, texts, strict=True):
        assert d.object == "embedding"
        assert len(d.embedding) == 16
        assert d.embedding == pytest.approx(mock_embedding(text, 16))
        assert math.isclose(math.fsum(v * v for v in d.embedding), 1.0, rel_tol=1e-5)
    assert len({tuple(d.embedding) for d in r.data}) == 3
    assert r.usage.prompt_tokens == sum(len(t) // 4 + 1 for t in texts)
    assert r.usage.total_tokens == r.usage.prompt_tokens
    assert mock.requests[0].body["encoding_format"] == "base64"

    # explicit float format, default dimension, single string; deterministic across calls
    r2 = await client.embeddings.create(
        model="text-embedding-3-small", input="beta", encoding_format="float"
    )
    assert len(r2.data) == 1 and len(r2.data[0].embedding) == 8
    assert r2.data[0].embedding == mock_embedding("beta", 8)
    assert r2.data[0].embedding[:8] != r.data[1].embedding[:8]  # dims change the vector

    r3 = await client.embeddings.create(model="m", input=[[1, 2, 3], [4, 5]])
    assert len(r3.data) == 2 and r3.usage.prompt_tokens == 5


async def test_models(client: openai.AsyncOpenAI) -> None:
    models = [m async for m in client.models.list()]
    ids = [m.id for m in models]
    assert "gpt-4o" in ids and "text-embedding-3-small" in ids
    assert all(m.object == "model" for m in models)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("model", "exc_type", "status"),
    [
        ("fail-500", openai.InternalServerError, 500),
        ("gpt-4o;fail-503", openai.InternalServerError, 503),
        ("fail-400", openai.BadRequestError, 400),
        ("fail-408", openai.APIStatusError, 408),
        ("fail-429+retry-after-2", openai.RateLimitError, 429),
    ],
)
async def test_error_statuses(
    client: openai.AsyncOpenAI, model: str, exc_type: type[openai.APIStatusError], status: int
) -> None:
    with pytest.raises(exc_type) as info:
        await client.chat.completions.create(model=model, messages=USER_MSG)
    err = info.value
    assert err.status_code == status
    assert isinstance(err.body, dict)
    assert f"mock upstream error {status}" in err.body["message"]
    expected_type = (
        "server_error"
        if status >= 500
        else ("requests" if status == 429 else "invalid_request_error")
    )
    assert err.body["type"] == expected_type
    if status == 429:
        assert err.response.headers["retry-after"] == "2"
    else:
        assert "retry-after" not in err.response.headers


async def test_fault_applies_to_stream_requests_too(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="fail-500", messages=USER_MSG, stream=True)


async def test_auth() -> None:
    with MockUpstream(api_key="right") as mock:
        bad = openai.AsyncOpenAI(base_url=mock.base_url, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            await bad.models.list()
        assert info.value.status_code == 401
        assert info.value.code == "invalid_api_key"
        assert info.value.type == "invalid_request_error"
        good = openai.AsyncOpenAI(base_url=mock.base_url, api_key="right", max_retries=0)
        assert [m async for m in good.models.list()]
        assert [r.status for r in mock.requests] == [401, 200]
        await bad.close()
        await good.close()
    # without api_key any bearer token is accepted
    with MockUpstream() as open_mock:
        anyone = openai.AsyncOpenAI(base_url=open_mock.base_url, api_key="x", max_retries=0)
        assert [m async for m in anyone.models.list()]
        await anyone.close()


async def test_delay_before_headers(mock: MockUpstream) -> None:
    async with httpx.AsyncClient() as h:
        t0 = time.monotonic()
        async with h.stream(
            "POST",
            f"{mock.base_url}/chat/completions",
            json={"model": "delay-300", "messages": USER_MSG},
            headers=_auth(),
        ) as resp:
            headers_at = time.monotonic()
            body = json.loads(await resp.aread())
    assert headers_at - t0 >= 0.29
    assert body["choices"][0]["message"]["content"] == EXPECTED_REPLY


# ------------------------------------------------------------------------- cut-N


async def test_cut_stream(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(model="cut-3", messages=USER_MSG, stream=True)
    received = []
    with pytest.raises(openai.APIConnectionError):
        async for c in stream:
            received.append(c)
    assert len(received) == 3
    rec = mock.requests[0]
    assert rec.chunks_sent == 3 and rec.server_aborted
    assert rec.client_closed_at is None  # the mock closed it, not the client
    assert not rec.completed


async def test_cut_non_stream(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model="cut-1", messages=USER_MSG)
    rec = mock.requests[0]
    assert rec.status == 200 and rec.server_aborted and rec.first_byte_at is not None


# ------------------------------------------------------------- disconnect detection


async def test_hang_disconnect_detected(mock: MockUpstream) -> None:
    async with httpx.AsyncClient(timeout=10) as h:
        task = asyncio.create_task(
            h.post(
                f"{mock.base_url}/chat/completions",
                json={"model": "hang", "messages": USER_MSG},
                headers=_auth(),
            )
        )
        assert await mock.wait_requests_async(1)
        await asyncio.sleep(0.15)
        rec = mock.requests[0]
        assert not task.done() and rec.finished_at is None  # really hanging
        assert rec.client_closed_at is None
        cancelled_at = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await mock.wait_closed_async(0, timeout=1.0)
    assert rec.client_closed_at is not None
    assert cancelled_at <= rec.client_closed_at < cancelled_at + 0.5
    assert rec.status is None and rec.first_byte_at is None  # nothing was sent
    assert await mock.wait_for_async(lambda: rec.finished_at is not None)


async def test_slow_stream_disconnect_detected(mock: MockUpstream) -> None:
    async with (
        httpx.AsyncClient(timeout=10) as h,
        h.stream(
            "POST",
            f"{mock.base_url}/chat/completions",
            json={"model": "chunk-delay-200+words-20", "messages": USER_MSG, "stream": True},
            headers=_auth(),
        ) as resp,
    ):
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                first = json.loads(line[6:])
                break
        closed_at = time.monotonic()
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert await mock.wait_closed_async(0, timeout=1.0)
    rec = mock.requests[0]
    assert rec.client_closed_at is not None
    assert closed_at <= rec.client_closed_at < closed_at + 0.5
    assert rec.chunks_sent < 5  # 23 events were due; the mock stopped early
    assert not rec.completed


def test_sync_client_timeout_during_delay_detected(mock: MockUpstream) -> None:
    with httpx.Client(timeout=0.15) as h, pytest.raises(httpx.ReadTimeout):
        h.post(
            f"{mock.base_url}/chat/completions",
            json={"model": "delay-3000", "messages": USER_MSG},
            headers=_auth(),
        )
    gave_up_at = time.monotonic()
    assert mock.wait_closed(0, timeout=1.0)
    rec = mock.requests[0]
    assert rec.client_closed_at is not None and rec.client_closed_at < gave_up_at + 0.5
    # the handler stopped waiting as soon as the client left, not after 3 s
    assert mock.wait_for(lambda: rec.finished_at is not None, timeout=0.5)
    assert rec.status is None


# ----------------------------------------------------------------- programmatic


async def test_programmatic_fault_times(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    mock.set_fault(None, status=500, times=1)
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="gpt-4o", messages=USER_MSG)
    ok = await client.chat.completions.create(model="gpt-4o", messages=USER_MSG)
    assert ok.choices[0].message.content == EXPECTED_REPLY
    assert mock.faults == []
    assert [r.status for r in mock.requests] == [500, 200]


async def test_programmatic_fault_per_model(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    mock.set_fault("gpt-4o-mini", status=429, retry_after=1)
    for _ in range(2):  # unlimited
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="gpt-4o-mini", messages=USER_MSG)
        assert info.value.response.headers["retry-after"] == "1"
    other = await client.chat.completions.create(model="gpt-4o", messages=USER_MSG)
    assert other.choices[0].finish_reason == "stop"
    mock.set_fault(None, words=2, times=1)
    short = await client.chat.completions.create(model="gpt-4o", messages=USER_MSG)
    assert short.choices[0].message.content == "mock reply"
    mock.clear_faults()
    ok = await client.chat.completions.create(model="gpt-4o-mini", messages=USER_MSG)
    assert ok.choices[0].message.content == EXPECTED_REPLY


# ------------------------------------------------------------------- standalone


def test_standalone_cli() -> None:
    script = Path(__file__).with_name("mock_upstream.py")
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line)
        assert match, line
        resp = httpx.get(f"{match.group(1)}/models", headers={"Authorization": "Bearer x"})
        assert resp.status_code == 200 and resp.json()["object"] == "list"
    finally:
        proc.terminate()
        proc.wait(timeout=5)
