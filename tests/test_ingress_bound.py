"""Bounded in-flight requests: each gateway process (``server.max_inflight``)
and each router process (``MAX_INFLIGHT``) refuses one more at once with an
OpenAI-style 503 and Retry-After; probes still answer, and capacity comes
back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest_asyncio

from gateway_harness import TEST_KEY, UPSTREAM_KEY, free_port, pipeline


def config(port: int, upstream: str) -> str:
    return f"""
server: {{addr: "127.0.0.1:{port}", write_timeout: 20s, max_inflight: 2}}
rate_limits: {{default_rpm: 0, default_tpm: 0}}
retries: {{max_attempts: 1}}
cache: {{enabled: false}}
providers:
  - {{name: ib, type: openai, base_url: "{upstream}", api_key: {UPSTREAM_KEY}}}
routes:
  - model_alias: slow
    targets: [{{provider: ib, model: ib+delay-800}}]
  - model_alias: quick
    targets: [{{provider: ib, model: ib-ok}}]
keys:
  - {{name: t, key: {TEST_KEY}, role: admin}}
"""


@pytest_asyncio.fixture(loop_scope="session")
async def gateway_url(managed_nats_url: str, mock_upstream: Any) -> AsyncIterator[str]:
    async with pipeline(managed_nats_url, config(free_port(), mock_upstream.base_url)) as url:
        yield url


async def test_one_request_over_the_bound_is_refused_at_once(gateway_url: str,
                                                             upstream: Any) -> None:
    auth = {"authorization": f"Bearer {TEST_KEY}"}
    async with httpx.AsyncClient(base_url=gateway_url, timeout=15,
                                 limits=httpx.Limits(max_connections=8)) as http:
        def ask(model: str) -> Any:
            return http.post("/v1/chat/completions", headers=auth, json={
                "model": model, "messages": [{"role": "user", "content": "x"}]})

        held = [asyncio.create_task(ask("slow")) for _ in range(2)]
        assert await upstream.wait_requests_async(2, timeout=3)
        t0 = time.monotonic()
        refused = await ask("quick")
        assert time.monotonic() - t0 < 0.3
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "server_busy"
        assert (await http.get("/healthz")).status_code == 200  # probes are not counted
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
        assert (await ask("quick")).status_code == 200  # capacity is back
    assert sum(1 for r in upstream.requests if r.model == "ib-ok") == 1


async def test_a_router_at_its_bound_refuses_at_once(gateway_url: str, upstream: Any,
                                                     monkeypatch: Any) -> None:
    import gandalf_router.app

    monkeypatch.setattr(gandalf_router.app, "MAX_INFLIGHT", 1)
    auth = {"authorization": f"Bearer {TEST_KEY}"}
    async with httpx.AsyncClient(base_url=gateway_url, timeout=15) as http:
        def ask(model: str) -> Any:
            return http.post("/v1/chat/completions", headers=auth, json={
                "model": model, "messages": [{"role": "user", "content": "x"}]})

        held = asyncio.create_task(ask("slow"))  # the router's one slot
        assert await upstream.wait_requests_async(1, timeout=3)
        t0 = time.monotonic()
        refused = await ask("quick")
        assert time.monotonic() - t0 < 0.3
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "router_busy"
        assert refused.headers["retry-after"] == "1"
        assert (await held).status_code == 200
    assert sum(1 for r in upstream.requests if r.model == "ib-ok") == 0
