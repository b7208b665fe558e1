"""Request coalescing through the pipeline: identical deterministic
non-streaming requests in flight together make one upstream call, even with
two workers serving the provider (the router sends them to the key's owner);
sampled and streaming requests stay independent; one waiter leaving does not
cancel the shared call, all of them leaving does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest_asyncio

from gandalf_common.config import parse_config
from gandalf_workers.app import WorkerService
from gateway_harness import TEST_KEY, UPSTREAM_KEY, connect, free_port, pipeline

SLOW = "co+delay-600"


def config(port: int, upstream: str) -> str:
    return f"""
server: {{addr: "127.0.0.1:{port}", write_timeout: 20s}}
rate_limits: {{default_rpm: 0, default_tpm: 0}}
retries: {{max_attempts: 1}}
cache: {{enabled: false}}
providers:
  - {{name: co, type: openai, base_url: "{upstream}", api_key: {UPSTREAM_KEY}}}
routes:
  - model_alias: shared
    targets: [{{provider: co, model: {SLOW}}}]
keys:
  - {{name: t, key: {TEST_KEY}, role: admin}}
"""


@pytest_asyncio.fixture(loop_scope="session")
async def gateway_url(managed_nats_url: str, mock_upstream: Any) -> AsyncIterator[str]:
    text = config(free_port(), mock_upstream.base_url)
    async with pipeline(managed_nats_url, text) as url:
        # A second worker process for the same provider: identical requests
        # must still meet in one of them.
        nc = await connect(managed_nats_url, "gandalf-test-worker-2")
        second = WorkerService(parse_config(text)[0])
        await second.start(nc)
        await asyncio.sleep(0.3)  # presence reaches the router
        try:
            yield url
        finally:
            await second.stop(2)
            await nc.close()


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "shared", "messages": [{"role": "user", "content": content}], **extra}


def calls(upstream: Any) -> int:
    return sum(1 for r in upstream.requests if r.model == SLOW)


async def post_all(url: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, timeout=15, limits=limits) as http:
        return await asyncio.gather(*(
            http.post("/v1/chat/completions", json=b,
                      headers={"authorization": f"Bearer {TEST_KEY}"}) for b in bodies))


async def test_fifty_identical_requests_make_one_upstream_call(gateway_url: str,
                                                               upstream: Any) -> None:
    replies = await post_all(gateway_url, [chat("same question", temperature=0)] * 50)
    assert [r.status_code for r in replies] == [200] * 50
    assert calls(upstream) == 1
    # Every waiter got the one answer (same completion id).
    assert len({r.json()["id"] for r in replies}) == 1


async def test_a_seed_makes_a_request_deterministic_too(gateway_url: str,
                                                         upstream: Any) -> None:
    replies = await post_all(gateway_url, [chat("seeded", seed=7, temperature=1)] * 10)
    assert all(r.status_code == 200 for r in replies)
    assert calls(upstream) == 1


async def test_sampled_and_different_requests_stay_independent(gateway_url: str,
                                                                upstream: Any) -> None:
    sampled = [chat("sampled", temperature=1)] * 5 + [chat("default temperature")] * 5
    different = [chat(f"question {i}", temperature=0) for i in range(5)]
    several = [chat("n=2", temperature=0, n=2)] * 3
    replies = await post_all(gateway_url, sampled + different + several)
    assert all(r.status_code == 200 for r in replies)
    assert calls(upstream) == 10 + 5 + 3


async def test_streams_are_not_coalesced(gateway_url: str, upstream: Any) -> None:
    replies = await post_all(gateway_url, [chat("stream me", temperature=0, stream=True)] * 4)
    assert all(r.status_code == 200 and "[DONE]" in r.text for r in replies)
    assert calls(upstream) == 4


async def test_one_waiter_leaving_does_not_cancel_the_shared_call(gateway_url: str,
                                                                  upstream: Any) -> None:
    body = chat("who leaves", temperature=0)
    async with httpx.AsyncClient(base_url=gateway_url, timeout=15) as http:
        async def one() -> httpx.Response:
            return await http.post("/v1/chat/completions", json=body,
                                   headers={"authorization": f"Bearer {TEST_KEY}"})

        first = asyncio.create_task(one())
        assert await upstream.wait_requests_async(1, timeout=3)
        stays = asyncio.create_task(one())
        await asyncio.sleep(0.15)  # the second request has joined the flight
        first.cancel()  # the first client (whose call it was) goes away
        reply = await stays
    assert reply.status_code == 200
    assert calls(upstream) == 1
    # The shared upstream call ran to the end (not closed by the gateway).
    assert not await upstream.wait_closed_async(upstream.requests[-1], timeout=0.2)


async def test_every_waiter_leaving_cancels_the_shared_call(gateway_url: str,
                                                            upstream: Any) -> None:
    body = chat("everyone leaves", temperature=0)
    async with httpx.AsyncClient(base_url=gateway_url, timeout=15) as http:
        tasks = [asyncio.create_task(http.post(
            "/v1/chat/completions", json=body,
            headers={"authorization": f"Bearer {TEST_KEY}"})) for _ in range(3)]
        assert await upstream.wait_requests_async(1, timeout=3)
        await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    # Nobody waits any more: the upstream call is abandoned before it answers.
    assert await upstream.wait_closed_async(upstream.requests[-1], timeout=2)
    assert calls(upstream) == 1


async def test_coalescing_can_be_turned_off(managed_nats_url: str, mock_upstream: Any,
                                            upstream: Any) -> None:
    text = config(free_port(), mock_upstream.base_url).replace(
        "cache: {enabled: false}", "cache: {enabled: false}\ncoalescing: {enabled: false}")
    async with pipeline(managed_nats_url, text) as url:
        replies = await post_all(url, [chat("not shared", temperature=0)] * 5)
    assert all(r.status_code == 200 for r in replies)
    assert calls(upstream) == 5
