"""Load balancing through the pipeline, with latency injected by the mock
upstream: ``least-latency`` (Peak-EWMA + P2C) sends most requests to the
faster of two provider instances, and ``weighted`` splits by weight."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest_asyncio

from gateway_harness import TEST_KEY, UPSTREAM_KEY, free_port, pipeline

FAST, SLOW = "fast+delay-5", "slow+delay-120"


def config(port: int, upstream: str) -> str:
    providers = "".join(
        f'  - {{name: {n}, type: openai, base_url: "{upstream}", api_key: {UPSTREAM_KEY}}}\n'
        for n in ("lb-fast", "lb-slow", "lb-a", "lb-b"))
    return f"""
server: {{addr: "127.0.0.1:{port}", write_timeout: 20s}}
rate_limits: {{default_rpm: 0, default_tpm: 0}}
retries: {{max_attempts: 1}}
cache: {{enabled: false}}
providers:
{providers}routes:
  - model_alias: lat
    strategy: least-latency
    targets:
      - {{provider: lb-slow, model: "{SLOW}"}}
      - {{provider: lb-fast, model: "{FAST}"}}
  - model_alias: wt
    strategy: weighted
    targets:
      - {{provider: lb-a, model: a-ok, weight: 3}}
      - {{provider: lb-b, model: b-ok, weight: 1}}
keys:
  - {{name: t, key: {TEST_KEY}, role: admin}}
"""


@pytest_asyncio.fixture(loop_scope="session")
async def gateway_url(managed_nats_url: str, mock_upstream: Any) -> AsyncIterator[str]:
    async with pipeline(managed_nats_url, config(free_port(), mock_upstream.base_url)) as url:
        yield url


async def run(url: str, alias: str, count: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=15) as http:
        for _ in range(count):
            r = await http.post("/v1/chat/completions", json={
                "model": alias, "messages": [{"role": "user", "content": "x"}]},
                headers={"authorization": f"Bearer {TEST_KEY}"})
            assert r.status_code == 200


def served(upstream: Any, model: str) -> int:
    return sum(1 for r in upstream.requests if r.model == model)


async def test_least_latency_prefers_the_faster_instance(gateway_url: str,
                                                         upstream: Any) -> None:
    await run(gateway_url, "lat", 40)
    fast, slow = served(upstream, FAST), served(upstream, SLOW)
    assert fast + slow == 40
    # The slow one is listed first and still loses once both are measured
    # (a new target is tried a few times before its latency is known).
    assert fast >= 32, (fast, slow)


async def test_weighted_splits_by_weight(gateway_url: str, upstream: Any) -> None:
    await run(gateway_url, "wt", 200)
    a, b = served(upstream, "a-ok"), served(upstream, "b-ok")
    assert a + b == 200
    # Expected 150/50 (binomial sd ~6): 3+ standard deviations of slack.
    assert 130 <= a <= 170, (a, b)
