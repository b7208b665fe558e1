"""End to end through the pipeline: openai SDK -> ingress -> NATS -> router ->
worker -> mock upstream, and back. Real NATS, real HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import httpx
import openai
import pytest

from gateway_harness import LIMITED_KEY, TEST_KEY, UPSTREAM_KEY, VIEWER_KEY

CHAT = "/v1/chat/completions"


def client(gw: Any, key: str = TEST_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=15)


def chats(upstream: Any) -> list[Any]:
    return upstream.requests_to(CHAT)


async def test_chat_non_stream(gateway: Any, upstream: Any) -> None:
    raw = await client(gateway).chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hello there"}])
    completion = raw.parse()
    assert completion.choices[0].message.content == "mock reply to: hello there"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert raw.headers["x-request-id"]
    assert raw.headers["x-content-type-options"] == "nosniff"
    (record,) = chats(upstream)
    # The target model replaces the alias; the provider key replaces the gateway key.
    assert record.body["model"] == "ok"
    assert record.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


async def test_unknown_fields_are_forwarded(gateway: Any, upstream: Any) -> None:
    await client(gateway).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=50,
        logit_bias={"50256": -100}, parallel_tool_calls=False, metadata={"team": "x"},
        extra_body={"reasoning_effort": "low", "some_future_field": [1, 2]})
    body = chats(upstream)[0].body
    assert body["logit_bias"] == {"50256": -100}
    assert body["parallel_tool_calls"] is False
    assert body["metadata"] == {"team": "x"}
    assert body["max_completion_tokens"] == 50
    assert body["reasoning_effort"] == "low"
    assert body["some_future_field"] == [1, 2]


async def test_request_id_is_echoed_or_replaced(gateway: Any, upstream: Any) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        auth = {"authorization": f"Bearer {TEST_KEY}"}
        ok = await http.post(CHAT, json=body, headers={**auth, "x-request-id": "abc.DEF_1-2"})
        assert ok.headers["x-request-id"] == "abc.DEF_1-2"
        bad = await http.post(CHAT, json=body, headers={**auth, "x-request-id": "no spaces!"})
        rid = bad.headers["x-request-id"]
        assert rid != "no spaces!" and len(rid) == 36 and rid[14] == "7"  # a UUIDv7


async def test_chat_stream_strips_usage_unless_asked(gateway: Any, upstream: Any) -> None:
    stream = await client(gateway).chat.completions.create(
        model="m", stream=True, messages=[{"role": "user", "content": "one two three"}])
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "mock reply to: one two three"
    assert all(c.usage is None for c in chunks)
    # Usage is always requested upstream so the gateway can account for it.
    assert chats(upstream)[0].body["stream_options"] == {"include_usage": True}


async def test_chat_stream_with_usage(gateway: Any, upstream: Any) -> None:
    stream = await client(gateway).chat.completions.create(
        model="m", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "hey"}])
    chunks = [c async for c in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens > 0


async def test_embeddings_batch(gateway: Any, upstream: Any) -> None:
    result = await client(gateway).embeddings.create(model="emb", input=["a", "b", "c"],
                                                     dimensions=4)
    assert [d.index for d in result.data] == [0, 1, 2]
    assert all(len(d.embedding) == 4 for d in result.data)
    assert result.usage.prompt_tokens > 0
    assert upstream.requests_to("/v1/embeddings")[0].body["dimensions"] == 4


async def test_models_lists_route_aliases(gateway: Any) -> None:
    models = [m.id async for m in client(gateway).models.list()]
    assert "m" in models and "failover-500" in models and "emb" in models
    assert "off" not in models  # its only provider is disabled
    with pytest.raises(openai.APIStatusError) as err:
        await client(gateway).chat.completions.create(
            model="off", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 503 and err.value.code == "no_provider_available"
    # A key with an allowlist only sees what it may call.
    limited = [m.id async for m in client(gateway, LIMITED_KEY).models.list()]
    assert set(limited) == {"m", "failover-500", "failover-429"}


async def test_auth_errors(gateway: Any, upstream: Any) -> None:
    for key in ("gnd_wrong", "sk-not-a-gateway-key"):
        with pytest.raises(openai.AuthenticationError) as err:
            await client(gateway, key).chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}])
        assert err.value.status_code == 401
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        resp = await http.post(CHAT, json={"model": "m", "messages": []})
        assert resp.status_code == 401
        assert resp.json()["error"]["type"] == "authentication_error"
    assert chats(upstream) == []


async def test_viewer_and_allowlist_are_enforced(gateway: Any, upstream: Any) -> None:
    with pytest.raises(openai.PermissionDeniedError):
        await client(gateway, VIEWER_KEY).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.PermissionDeniedError) as err:
        await client(gateway, LIMITED_KEY).chat.completions.create(
            model="emb", messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "model_not_allowed"
    ok = await client(gateway, LIMITED_KEY).chat.completions.create(
        model="failover-500", messages=[{"role": "user", "content": "x"}])
    assert ok.choices[0].message.content
    assert all(r.body["model"] != "ok" for r in chats(upstream))


async def test_unknown_model_is_404(gateway: Any, upstream: Any) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        await client(gateway).chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "model_not_found"
    assert chats(upstream) == []


@pytest.mark.parametrize(("body", "needle"), [
    (b"{not json", "invalid JSON"),
    (b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', "$.model"),
    (b'{"model": "m", "messages": "hello"}', "$.messages"),
    (b'{"model": "m", "messages": []}', "$.messages"),
    (b'{"model": "m", "messages": [{"content": "x"}]}', "role"),
    (b'{"model": "m", "messages": [{"role": "user"}], "temperature": "hot"}',
     "$.temperature"),
    (b'{"model": "m", "messages": [{"role": "user"}], "api_base": "http://evil"}',
     "api_base"),
    (b"", "empty"),
    (b'{"model": "m", "messages": [{"role": "user", "content": ' + b"[" * 100_000
     + b"]" * 100_000 + b"}]}", "nested too deeply"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "\xff\xfe"}]}', "invalid"),
    (b"[1, 2]", "object"),
])
async def test_bad_bodies_are_400(gateway: Any, upstream: Any, body: bytes, needle: str) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        resp = await http.post(CHAT, content=body,
                               headers={"authorization": f"Bearer {TEST_KEY}"})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert needle in error["message"]
    assert chats(upstream) == []


async def test_body_size_limit_is_413(gateway: Any, upstream: Any) -> None:
    big = "x" * (5 * 1024 * 1024)  # over this gateway's 4 MiB limit
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        resp = await http.post(CHAT, headers={"authorization": f"Bearer {TEST_KEY}"},
                               json={"model": "m", "messages": [{"role": "user",
                                                                 "content": big}]})
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "request_too_large"
    assert chats(upstream) == []


async def test_body_larger_than_nats_max_payload(gateway: Any, upstream: Any) -> None:
    # Larger than NATS's default 1 MiB max_payload: staged in the object store.
    text = "word " * (600 * 1024)
    assert len(text) > gateway.nc.max_payload
    completion = await client(gateway).chat.completions.create(
        model="m", messages=[{"role": "user", "content": text}])
    assert completion.choices[0].message.content.startswith("mock reply to: word word")
    assert chats(upstream)[0].body["messages"][0]["content"] == text


async def test_failover_on_500(gateway: Any, upstream: Any) -> None:
    completion = await client(gateway).chat.completions.create(
        model="failover-500", messages=[{"role": "user", "content": "x"}])
    assert completion.model == "fo-ok"
    assert [r.body["model"] for r in chats(upstream)] == ["fail-500", "fo-ok"]


async def test_failover_on_429(gateway: Any, upstream: Any) -> None:
    completion = await client(gateway).chat.completions.create(
        model="failover-429", messages=[{"role": "user", "content": "x"}])
    assert completion.model == "fo429-ok"


async def test_upstream_400_is_returned_without_failover(gateway: Any, upstream: Any) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await client(gateway).chat.completions.create(
            model="bad-400", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 400
    assert "mock upstream error 400" in err.value.message
    assert [r.body["model"] for r in chats(upstream)] == ["fail-400"]


async def test_all_targets_failed_is_502(gateway: Any, upstream: Any) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        await client(gateway).chat.completions.create(
            model="all-fail", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 502
    assert "503" in err.value.message  # the last error is reported
    assert len(chats(upstream)) == 2


async def test_all_targets_rate_limited_is_429_with_retry_after(gateway: Any,
                                                                upstream: Any) -> None:
    with pytest.raises(openai.RateLimitError) as err:
        await client(gateway).chat.completions.create(
            model="all-429", messages=[{"role": "user", "content": "x"}])
    assert err.value.response.headers["retry-after"] == "7"


async def test_no_worker_is_503_and_fails_over(gateway: Any, upstream: Any) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        await client(gateway).chat.completions.create(
            model="ghost-only", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 503
    assert err.value.response.headers.get("retry-after")
    completion = await client(gateway).chat.completions.create(
        model="ghost-then-ok", messages=[{"role": "user", "content": "x"}])
    assert completion.model == "after-ghost"


async def _raw_stream(gw: Any, model: str, **extra: Any) -> tuple[int, str]:
    async with httpx.AsyncClient(base_url=gw.url, timeout=15) as http, http.stream(
            "POST", CHAT, headers={"authorization": f"Bearer {TEST_KEY}"},
            json={"model": model, "stream": True,
                  "messages": [{"role": "user", "content": "x"}], **extra}) as resp:
        text = "".join([part async for part in resp.aiter_text()])
        return resp.status_code, text


async def test_failure_after_first_chunk_is_an_error_event(gateway: Any,
                                                           upstream: Any) -> None:
    from gandalf_ingress.metrics import STREAM_ERRORS

    before = STREAM_ERRORS.labels("upstream_stream_cut")._value.get()
    status, text = await _raw_stream(gateway, "cut")
    assert status == 200
    # Counted as a failure, though the status line said 200.
    assert STREAM_ERRORS.labels("upstream_stream_cut")._value.get() == before + 1
    assert text.count("data: {") >= 3
    assert "event: error" in text and text.rstrip().endswith("data: [DONE]")
    error = json.loads(text.split("event: error\ndata: ")[1].split("\n")[0])
    assert error["error"]["type"] == "stream_error"
    # Invariant 2: no failover once bytes reached the client.
    assert [r.body["model"] for r in chats(upstream)] == ["cut-3+words-20"]


async def test_stream_failure_before_first_chunk_fails_over(gateway: Any,
                                                            upstream: Any) -> None:
    status, text = await _raw_stream(gateway, "failover-500")
    assert status == 200 and "event: error" not in text
    assert text.rstrip().endswith("data: [DONE]")
    assert [r.body["model"] for r in chats(upstream)] == ["fail-500", "fo-ok"]


async def test_stream_error_before_start_is_json(gateway: Any, upstream: Any) -> None:
    status, text = await _raw_stream(gateway, "bad-400")
    assert status == 400
    assert json.loads(text)["error"]["message"].endswith("mock upstream error 400")


async def test_keepalive_before_first_token(gateway: Any, upstream: Any) -> None:
    # The upstream takes 1.2 s to answer; keep-alive is 300 ms in this gateway.
    status, text = await _raw_stream(gateway, "slow-start")
    assert status == 200
    first_data = text.index("data: ")
    assert text[:first_data].count(": keep-alive") >= 2
    assert text.rstrip().endswith("data: [DONE]")


async def test_stream_disconnect_cancels_upstream(gateway: Any, upstream: Any) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as http, http.stream(
            "POST", CHAT, headers={"authorization": f"Bearer {TEST_KEY}"},
            json={"model": "slow-stream", "stream": True,
                  "messages": [{"role": "user", "content": "x"}]}) as resp:
        async for line in resp.aiter_lines():
            if line.startswith("data: {"):
                break  # got the first chunk; now walk away
    closed_at = time.monotonic()
    record = chats(upstream)[0]
    assert await upstream.wait_closed_async(record, timeout=1.0), "upstream call not aborted"
    assert record.client_closed_at - closed_at < 1.0
    assert record.chunks_sent < 50


async def test_non_stream_disconnect_cancels_upstream(gateway: Any, upstream: Any) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        task = asyncio.create_task(http.post(
            CHAT, headers={"authorization": f"Bearer {TEST_KEY}"},
            json={"model": "hang", "messages": [{"role": "user", "content": "x"}]}))
        assert await upstream.wait_requests_async(1, timeout=5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await upstream.wait_closed_async(0, timeout=1.0), "upstream call not aborted"
    # The router stops waiting too (not at the 20 s deadline).
    for _ in range(100):
        if not gateway.router._tasks and not gateway.workers.inflight():
            break
        await asyncio.sleep(0.01)
    assert not gateway.router._tasks and gateway.workers.inflight() == 0


async def test_metrics_and_probes(gateway: Any, upstream: Any) -> None:
    await client(gateway).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}])
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (await http.get("/healthz")).text == "ok"
        metrics = (await http.get("/metrics")).text
        assert 'gandalf_requests_total{method="POST",path="/v1/chat/completions",status="200"}' \
            in metrics
        assert "gandalf_request_duration_seconds_bucket" in metrics
        ready = await http.get("/readyz")
        # "ghost" has no worker in this gateway, so it is not ready, and says why.
        assert ready.status_code == 503 and "ghost" in ready.text
        unknown = await http.get("/v1/nothing-here")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_path"


async def test_timeout_ms_bounds_first_byte_not_the_stream(gateway: Any, upstream: Any) -> None:
    # "quick" has timeout_ms 500: an upstream silent for 1.5 s is cut at ~0.5 s...
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as err:
        await client(gateway).chat.completions.create(
            model="ttfb-timeout", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 504
    assert time.monotonic() - t0 < 1.4
    assert await upstream.wait_closed_async(0, timeout=1.0)
    # ...but a stream that starts at once may run longer than timeout_ms.
    status, text = await _raw_stream(gateway, "long-stream")
    assert status == 200 and "event: error" not in text
    assert text.count("data: {") >= 8 and text.rstrip().endswith("data: [DONE]")


async def test_response_larger_than_nats_max_payload(gateway: Any, upstream: Any) -> None:
    inputs = [f"text {i}" for i in range(40)]
    result = await client(gateway).embeddings.create(model="emb", input=inputs,
                                                     dimensions=2048, encoding_format="float")
    assert len(result.data) == 40 and all(len(d.embedding) == 2048 for d in result.data)
    size = len(json.dumps(result.model_dump()))
    assert size > gateway.nc.max_payload  # it really crossed the bus in parts


async def test_mass_disconnect_leaves_nothing_waiting(gateway: Any, upstream: Any) -> None:
    # Clients vanish at every stage of their requests (as when a load tool
    # stops): no router or worker task may be left waiting for its deadline.
    body = {"model": "slow-start", "messages": [{"role": "user", "content": "x"}]}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=15,
                                 limits=httpx.Limits(max_connections=64)) as http:
        for delay in (0.0, 0.001, 0.005, 0.02, 0.3):
            tasks = [asyncio.create_task(http.post(
                CHAT, json=body, headers={"authorization": f"Bearer {TEST_KEY}"}))
                for _ in range(16)]
            await asyncio.sleep(delay)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    for _ in range(300):
        if not gateway.router._tasks and not gateway.workers.inflight():
            break
        await asyncio.sleep(0.01)
    assert len(gateway.router._tasks) == 0
    assert gateway.workers.inflight() == 0


async def test_secrets_never_reach_logs(gateway: Any, upstream: Any,
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    gw = client(gateway)
    await gw.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    await gw.chat.completions.create(model="failover-500",
                                     messages=[{"role": "user", "content": "x"}])
    for model in ("bad-400", "all-fail"):
        with pytest.raises(openai.APIStatusError):
            await gw.chat.completions.create(model=model,
                                             messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.AuthenticationError):
        await client(gateway, "gnd_some_wrong_key").chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}])
    text = caplog.text + repr(gateway.cfg)
    assert caplog.records  # the requests were logged...
    for secret in (TEST_KEY, UPSTREAM_KEY, "gnd_some_wrong_key", LIMITED_KEY):
        assert secret not in text  # ...without any key in them


async def test_mangled_bodies_never_give_500(gateway: Any, upstream: Any) -> None:
    import random

    rng = random.Random(1234)
    valid = json.dumps({"model": "m", "stream": False, "temperature": 0.2, "n": 1,
                        "messages": [{"role": "user", "content": "héllo ✓"}],
                        "tools": [{"type": "function", "function": {"name": "f"}}]}).encode()
    junk = [b"\x00", b"\xff", b"{", b"}", b"[", b'"', b"\\", b"null", b"1e999", b"-", b"\xe2\x9c"]
    statuses: dict[int, int] = {}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as http:
        for _ in range(300):
            body = bytearray(valid)
            for _ in range(rng.randint(1, 4)):
                pos = rng.randrange(len(body))
                action = rng.random()
                if action < 0.4:
                    body[pos:pos] = rng.choice(junk)
                elif action < 0.7:
                    del body[pos:pos + rng.randint(1, 8)]
                else:
                    body[pos] = rng.randrange(256)
            resp = await http.post(CHAT, content=bytes(body),
                                   headers={"authorization": f"Bearer {TEST_KEY}"})
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
            assert resp.status_code < 500 or resp.status_code in (502, 503), resp.text
            if resp.status_code >= 400:
                assert "error" in resp.json()
    assert statuses.get(400, 0) > 100  # most mutations are caught at the edge


async def test_slow_body_is_408(gateway: Any, upstream: Any) -> None:
    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                 b"Authorization: Bearer " + TEST_KEY.encode() + b"\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"mo")
    await writer.drain()
    t0 = time.monotonic()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 408")
    assert time.monotonic() - t0 < 3  # read_timeout is 1 s in this gateway
    writer.close()
    assert chats(upstream) == []


async def test_duplicate_authorization_is_400(gateway: Any, upstream: Any) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        resp = await http.post(CHAT, json={"model": "m", "messages": [{"role": "user"}]},
                               headers=[("authorization", f"Bearer {TEST_KEY}"),
                                        ("authorization", "Bearer gnd_other")])
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "duplicate_header"
    assert chats(upstream) == []
