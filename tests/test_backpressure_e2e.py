"""Backpressure in the provider workers, through the pipeline: a worker at a
provider's ``max_concurrency`` or ``max_rps`` refuses at once (503
``provider_saturated`` with Retry-After) instead of queueing, the router
fails over to the next target, and ``max_rps`` is split over the instance's
live workers (presence heartbeats), coming back whole when one leaves."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest_asyncio

from gandalf_common.bus import connect
from gandalf_common.config import GatewayConfig, parse_config
from gandalf_common.metrics_hub import REGISTRY
from gandalf_router.app import RouterService
from gandalf_workers.app import WorkerService
from gateway_harness import TEST_KEY, UPSTREAM_KEY, free_port, pipeline

#: Served by two extra workers of the max_rps split test, not by the fixture's.
SPLIT = "bp-split"
SPLIT_RPS = 4


def config(port: int, upstream: str) -> str:
    def provider(name: str, extra: str = "") -> str:
        return (f'  - {{name: {name}, type: openai, base_url: "{upstream}", '
                f"api_key: {UPSTREAM_KEY}{extra}}}\n")

    return f"""
server: {{addr: "127.0.0.1:{port}", write_timeout: 20s}}
rate_limits: {{default_rpm: 0, default_tpm: 0}}
retries: {{max_attempts: 1}}
cache: {{enabled: false}}
providers:
{provider("bp-conc", ", max_concurrency: 2")}\
{provider("bp-sat", ", max_concurrency: 1")}\
{provider("bp-spare")}\
{provider("bp-rps", ", max_rps: 3")}\
{provider(SPLIT, f", max_rps: {SPLIT_RPS}")}\
routes:
  - model_alias: conc
    targets: [{{provider: bp-conc, model: conc+delay-1500}}]
  - model_alias: sat
    targets:
      - {{provider: bp-sat, model: sat+delay-1000, priority: 1}}
      - {{provider: bp-spare, model: spare-ok, priority: 2}}
  - model_alias: rps
    targets: [{{provider: bp-rps, model: rps-ok}}]
  - model_alias: split
    targets: [{{provider: {SPLIT}, model: split-ok}}]
keys:
  - {{name: t, key: {TEST_KEY}, role: admin}}
"""


@dataclass
class Gateway:
    url: str
    cfg: GatewayConfig
    nats_url: str
    worker: WorkerService


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def gw(managed_nats_url: str, mock_upstream: Any) -> AsyncIterator[Gateway]:
    """Ingress + router + one worker serving every provider but SPLIT (whose
    workers the split test starts itself)."""
    yaml = config(free_port(), mock_upstream.base_url)
    cfg, _ = parse_config(yaml)
    nc = await connect(managed_nats_url, "bp-backend")
    worker = WorkerService(cfg, [p.name for p in cfg.providers if p.name != SPLIT])
    router = RouterService(cfg)
    try:
        await worker.start(nc)
        await router.start(nc)
        async with pipeline(managed_nats_url, yaml, backend=False) as url:
            yield Gateway(url, cfg, managed_nats_url, worker)
    finally:
        await router.stop(2)
        await worker.stop(2)
        await nc.close()


@dataclass
class Answer:
    status: int
    elapsed: float
    headers: httpx.Headers
    body: Any


async def ask(http: httpx.AsyncClient, model: str) -> Answer:
    t0 = time.monotonic()
    r = await http.post("/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": "x"}]})
    elapsed = time.monotonic() - t0
    try:
        body = r.json()
    except json.JSONDecodeError:
        body = r.text
    return Answer(r.status_code, elapsed, r.headers, body)


def client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=15,
                             headers={"authorization": f"Bearer {TEST_KEY}"})


def models(upstream: Any) -> list[str]:
    return [r.model for r in upstream.requests]


def assert_saturated(a: Answer, provider: str) -> None:
    """The router's verdict when every target refused: 503, Retry-After, and
    an OpenAI-style error naming the saturated provider."""
    assert a.status == 503, (a.status, a.body)
    assert int(a.headers["retry-after"]) >= 1
    err = a.body["error"]
    assert err["code"] == "provider_saturated"
    assert err["type"] == "api_error"
    assert err["message"].startswith("no provider available: ") and provider in err["message"]


async def until(predicate: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= end:
            return False
        await asyncio.sleep(0.02)
    return True


def shed(provider: str) -> float:
    return REGISTRY.get_sample_value("gandalf_worker_shed_total", {"provider": provider}) or 0.0


async def test_max_concurrency_refuses_at_once_instead_of_queueing(gw: Gateway,
                                                                   upstream: Any) -> None:
    shed_before = shed("bp-conc")
    async with client(gw.url) as http:
        answers = await asyncio.gather(*(ask(http, "conc") for _ in range(5)))
    ok = [a for a in answers if a.status == 200]
    refused = [a for a in answers if a.status != 200]
    assert len(ok) == 2 and len(refused) == 3, [(a.status, a.body) for a in answers]
    for a in ok:
        assert a.elapsed >= 1.4  # the upstream's delay: these two really went
    for a in refused:
        assert_saturated(a, "bp-conc")
        assert "max_concurrency" in a.body["error"]["message"]
        assert a.elapsed < 0.8, a.elapsed  # refused at once, not queued behind the slow two
    assert models(upstream) == ["conc+delay-1500"] * 2
    assert shed("bp-conc") == shed_before + 3


async def test_a_saturated_target_fails_over_to_the_next(gw: Gateway, upstream: Any) -> None:
    async with client(gw.url) as http:
        first = asyncio.ensure_future(ask(http, "sat"))
        # bp-sat's single slot is taken once the upstream has the first call.
        assert await upstream.wait_requests_async(1, timeout=5)
        rest = await asyncio.gather(*(ask(http, "sat") for _ in range(3)))
        assert [a.status for a in rest] == [200] * 3
        assert all(a.body["model"] == "spare-ok" for a in rest)
        assert all(a.elapsed < 0.8 for a in rest), [a.elapsed for a in rest]
        head = await first
    assert head.status == 200 and head.body["model"] == "sat+delay-1000"
    seen = models(upstream)
    assert sorted(seen) == ["sat+delay-1000"] + ["spare-ok"] * 3, seen


async def test_max_rps_refuses_beyond_the_burst_and_recovers(gw: Gateway,
                                                              upstream: Any) -> None:
    rate = gw.worker.pools["bp-rps"].rate
    assert rate is not None and rate.rate == 3  # the only worker: the whole rate
    async with client(gw.url) as http:
        t0 = time.monotonic()
        answers = [await ask(http, "rps") for _ in range(6)]
        elapsed = time.monotonic() - t0
        statuses = [a.status for a in answers]
        # A full bucket: one second's worth (3) goes at once...
        assert statuses[:3] == [200] * 3, statuses
        # ...then at most what refilled meanwhile (3/s; none on a machine that
        # sends six requests in under a third of a second).
        assert statuses.count(200) <= 3 + int(elapsed * 3), (statuses, elapsed)
        assert 503 in statuses, (statuses, elapsed)
        for a in answers[3:]:
            if a.status != 200:
                assert_saturated(a, "bp-rps")
                assert "max_rps" in a.body["error"]["message"]
                assert a.elapsed < 0.5, a.elapsed
        assert len(upstream.requests) == statuses.count(200)
        await asyncio.sleep(1.1)  # the bucket refills
        again = [await ask(http, "rps") for _ in range(3)]
        assert [a.status for a in again] == [200] * 3, [(a.status, a.body) for a in again]


async def test_max_rps_is_split_over_the_live_workers(gw: Gateway) -> None:
    cfg = gw.cfg
    services: list[tuple[WorkerService, Any]] = []
    try:
        for i in range(2):
            nc = await connect(gw.nats_url, f"bp-split-worker-{i}")
            svc = WorkerService(cfg, [SPLIT])
            services.append((svc, nc))
            await svc.start(nc)
        (a, _), (b, nc_b) = services
        pool_a, pool_b = a.pools[SPLIT], b.pools[SPLIT]
        assert pool_a.worker_id != pool_b.worker_id
        assert pool_a.rate is not None and pool_b.rate is not None
        # Each hears the other's presence (at once, or at the next heartbeat).
        assert await until(lambda: pool_a.rate.rate == pool_b.rate.rate == SPLIT_RPS / 2,
                           timeout=3 + 0.5), (pool_a.rate.rate, pool_b.rate.rate)
        assert pool_a.rate.capacity == pool_b.rate.capacity == SPLIT_RPS / 2
        # B leaves (it says so): A takes the whole rate again, without waiting
        # for B's presence to expire.
        services.pop()
        await b.stop(2)
        await nc_b.close()
        assert await until(lambda: pool_a.rate.rate == SPLIT_RPS, timeout=1.0), \
            pool_a.rate.rate
    finally:
        for svc, nc in services:
            await svc.stop(2)
            await nc.close()
