"""The breaker state of a provider instance is shared by all its worker
replicas: when one worker's breaker trips, the others open too (they adopt the
health event), routers skip the instance, and a successful probe on one
worker closes them all."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest_asyncio
from nats.aio.client import Client as NATS

from gandalf_common import contract
from gandalf_common.config import parse_config
from gandalf_common.contract import ExecRequest, Failed, RouteRequest, Started, encode
from gandalf_common.metrics_hub import REGISTRY
from gandalf_router.app import RouterService
from gandalf_workers.app import WorkerService
from gateway_harness import TEST_KEY, UPSTREAM_KEY, connect, free_port, pipeline


def config(port: int, upstream: str) -> str:
    return f"""
server: {{addr: "127.0.0.1:{port}", write_timeout: 20s}}
circuit_breaker: {{enabled: true, min_samples: 4, error_threshold: 0.5, open_timeout: 1s}}
rate_limits: {{default_rpm: 0, default_tpm: 0}}
retries: {{max_attempts: 1}}
cache: {{enabled: false}}
providers:
  - {{name: shb, type: openai, base_url: "{upstream}", api_key: {UPSTREAM_KEY}}}
  - {{name: spare, type: openai, base_url: "{upstream}", api_key: {UPSTREAM_KEY}}}
routes:
  - model_alias: guarded
    targets:
      - {{provider: shb, model: shb-main, priority: 1}}
      - {{provider: spare, model: spare-ok, priority: 2}}
keys:
  - {{name: t, key: {TEST_KEY}, role: admin}}
"""


@dataclass
class Cluster:
    url: str
    nc: NATS
    workers: list[WorkerService]


@pytest_asyncio.fixture(loop_scope="session")
async def cluster(managed_nats_url: str, mock_upstream: Any) -> AsyncIterator[Cluster]:
    text = config(free_port(), mock_upstream.base_url)
    cfg = parse_config(text)[0]
    conns = [await connect(managed_nats_url, f"gandalf-test-{i}") for i in range(3)]
    router = RouterService(cfg)
    await router.start(conns[0])
    workers = [WorkerService(cfg), WorkerService(cfg)]
    for svc, nc in zip(workers, conns[1:], strict=True):
        await svc.start(nc)
    try:
        async with pipeline(managed_nats_url, text, backend=False) as url:
            yield Cluster(url, conns[0], workers)
    finally:
        for svc in workers:
            await svc.stop(2)
        await router.stop(2)
        for nc in conns:
            await nc.close()


async def direct(nc: NATS, worker: WorkerService, model: str) -> Started | Failed:
    """One exec request straight to this worker's own subject (as a router
    sends coalescable requests): its breaker sees exactly these calls."""
    pool = worker.pools["shb"]
    body = json.dumps({"model": "guarded",
                       "messages": [{"role": "user", "content": "x"}]}).encode()
    route = RouteRequest(request_id=str(uuid.uuid4()), op="chat", model="guarded", body=body)
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        req = ExecRequest(route=route, provider="shb", target_model=model, reply_to=inbox)
        msg = await nc.request(contract.worker_subject(pool.worker_id, "shb", "chat"),
                               encode(req), timeout=5)
        return contract.ctl_decoder.decode(msg.data)
    finally:
        await sub.unsubscribe()


async def until(check: Callable[[], bool], timeout: float = 2.0) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        if loop.time() > end:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_one_replica_trips_every_replica_opens_and_closes(cluster: Cluster,
                                                                upstream: Any) -> None:
    a, b = cluster.workers
    breaker_a, breaker_b = a.pools["shb"].breaker, b.pools["shb"].breaker
    assert breaker_a is not None and breaker_b is not None
    for _ in range(4):  # four 500s on worker A only: A trips
        ctl = await direct(cluster.nc, a, "shb-main+fail-500")
        assert isinstance(ctl, Failed) and ctl.status == 500
    assert breaker_a.state == "open"
    assert breaker_b.snapshot().samples == 0  # B saw none of those calls...
    assert await until(lambda: breaker_b.state == "open")  # ...and opened with A

    # B refuses at once, without calling the upstream.
    before = len(upstream.requests)
    rejects = REGISTRY.get_sample_value("gandalf_circuit_breaker_rejects_total",
                                        {"provider": "shb"}) or 0.0
    ctl = await direct(cluster.nc, b, "shb-main")
    assert isinstance(ctl, Failed) and ctl.code == "circuit_open"
    assert len(upstream.requests) == before
    assert REGISTRY.get_sample_value("gandalf_circuit_breaker_rejects_total",
                                     {"provider": "shb"}) == rejects + 1
    # Routers skip the instance: the gateway answers from the spare.
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(cluster.url + "/v1/chat/completions", json={
            "model": "guarded", "messages": [{"role": "user", "content": "x"}]},
            headers={"authorization": f"Bearer {TEST_KEY}"})
    assert r.status_code == 200
    assert [q.model for q in upstream.requests[before:]] == ["spare-ok"]

    # After the open timeout, A's probe succeeds: A closes, and so does B.
    await asyncio.sleep(1.05)
    assert isinstance(await direct(cluster.nc, a, "shb-main"), Started)
    assert breaker_a.state == "closed"
    assert await until(lambda: breaker_b.state == "closed")
    assert isinstance(await direct(cluster.nc, b, "shb-main"), Started)
