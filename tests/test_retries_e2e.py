"""Retries on the same provider instance, through the pipeline: transient
failures are retried with backoff before failing over, Retry-After is
honoured, and the retry budget caps the extra load during an outage."""

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
server: {{addr: "127.0.0.1:{port}", write_timeout: 20s}}
retries: {{max_attempts: 3, base: 50ms, cap: 200ms, budget_ratio: 0.2, budget_min_per_s: 0.5}}
rate_limits: {{default_rpm: 0, default_tpm: 0}}
cache: {{enabled: false}}
providers:
  - {{name: rp, type: openai, base_url: "{upstream}", api_key: {UPSTREAM_KEY}}}
routes:
  - model_alias: flaky-once
    targets: [{{provider: rp, model: flaky-once}}]
  - model_alias: throttled-once
    targets: [{{provider: rp, model: throttled-once}}]
  - model_alias: down
    targets: [{{provider: rp, model: down+fail-503}}]
  - model_alias: bad
    targets: [{{provider: rp, model: bad+fail-400}}]
keys:
  - {{name: t, key: {TEST_KEY}, role: admin}}
"""


@pytest_asyncio.fixture(loop_scope="session")
async def gateway_url(managed_nats_url: str, mock_upstream: Any) -> AsyncIterator[str]:
    async with pipeline(managed_nats_url, config(free_port(), mock_upstream.base_url)) as url:
        yield url


async def ask(url: str, model: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=15) as http:
        return await http.post(url + "/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": "x"}]},
            headers={"authorization": f"Bearer {TEST_KEY}"})


def calls(upstream: Any, model: str) -> int:
    return sum(1 for r in upstream.requests if r.model == model)


async def test_a_transient_failure_is_retried_on_the_same_target(gateway_url: str,
                                                                 upstream: Any) -> None:
    upstream.set_fault("flaky-once", status=500, times=1)
    r = await ask(gateway_url, "flaky-once")
    assert r.status_code == 200
    assert calls(upstream, "flaky-once") == 2


async def test_retry_after_is_honoured(gateway_url: str, upstream: Any) -> None:
    upstream.set_fault("throttled-once", status=429, retry_after=1, times=1)
    t0 = time.monotonic()
    r = await ask(gateway_url, "throttled-once")
    assert r.status_code == 200 and calls(upstream, "throttled-once") == 2
    assert time.monotonic() - t0 >= 0.95  # waited as told, not the 50 ms backoff


async def test_client_errors_are_not_retried(gateway_url: str, upstream: Any) -> None:
    r = await ask(gateway_url, "bad")
    assert r.status_code == 400 and calls(upstream, "bad+fail-400") == 1


async def test_the_budget_caps_retries_during_an_outage(gateway_url: str,
                                                        upstream: Any) -> None:
    results = await asyncio.gather(*(ask(gateway_url, "down") for _ in range(40)))
    assert all(r.status_code >= 500 for r in results)
    # Without a budget: 40 x 3 = 120 calls. With it: 40 + 20 % + 0.5/s x 10 s.
    total = calls(upstream, "down+fail-503")
    assert 40 <= total <= 40 + 8 + 5 + 1, total
