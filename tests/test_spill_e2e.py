"""A full worker does not make its whole provider instance look full: the
router asks the instance's other live workers before failing over, so the
503 comes only when every worker is at ``max_concurrency``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest_asyncio

from gandalf_common.config import parse_config
from gandalf_router.app import RouterService
from gandalf_workers.app import WorkerService
from gateway_harness import TEST_KEY, UPSTREAM_KEY, connect, free_port, pipeline

SLOW = "spill+delay-700"


def config(port: int, upstream: str) -> str:
    return f"""
server: {{addr: "127.0.0.1:{port}", write_timeout: 20s}}
rate_limits: {{default_rpm: 0, default_tpm: 0}}
retries: {{max_attempts: 1}}
cache: {{enabled: false}}
providers:
  - {{name: sp, type: openai, base_url: "{upstream}", api_key: {UPSTREAM_KEY},
      max_concurrency: 1}}
routes:
  - model_alias: spill
    targets: [{{provider: sp, model: "{SLOW}"}}]
keys:
  - {{name: t, key: {TEST_KEY}, role: admin}}
"""


@pytest_asyncio.fixture(loop_scope="session")
async def gateway_url(managed_nats_url: str, mock_upstream: Any) -> AsyncIterator[str]:
    text = config(free_port(), mock_upstream.base_url)
    cfg = parse_config(text)[0]
    conns = [await connect(managed_nats_url, f"gandalf-spill-{i}") for i in range(3)]
    router = RouterService(cfg)
    await router.start(conns[0])
    workers = [WorkerService(cfg), WorkerService(cfg)]
    for svc, nc in zip(workers, conns[1:], strict=True):
        await svc.start(nc)
    for _ in range(100):  # both workers known to the router
        if len(router.members.live("sp")) == 2:
            break
        await asyncio.sleep(0.02)
    try:
        async with pipeline(managed_nats_url, text, backend=False) as url:
            yield url
    finally:
        for svc in workers:
            await svc.stop(2)
        await router.stop(2)
        for nc in conns:
            await nc.close()


async def test_two_workers_of_one_take_two_calls_the_third_is_refused_fast(
        gateway_url: str, upstream: Any) -> None:
    async with httpx.AsyncClient(base_url=gateway_url, timeout=15) as http:
        async def one() -> tuple[int, float, str | None]:
            t0 = time.monotonic()
            r = await http.post("/v1/chat/completions", json={
                "model": "spill", "messages": [{"role": "user", "content": "x"}]},
                headers={"authorization": f"Bearer {TEST_KEY}"})
            return r.status_code, time.monotonic() - t0, r.headers.get("retry-after")

        # Several rounds: a queue group picks a worker at random, so without
        # the router asking the other worker, about half the rounds would
        # send the second call to the busy one and answer 503.
        for _ in range(5):
            first = asyncio.create_task(one())
            await asyncio.sleep(0.1)  # the first call holds one worker's only slot
            second = asyncio.create_task(one())
            await asyncio.sleep(0.1)
            third = await one()  # both workers are full now
            assert third[0] == 503 and third[1] < 0.5 and third[2] is not None
            assert (await first)[0] == 200
            assert (await second)[0] == 200
    assert sum(1 for r in upstream.requests if r.model == SLOW) == 10
