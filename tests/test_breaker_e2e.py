"""The circuit breaker through the pipeline: a failing provider instance
trips, every router skips it (health events), it half-opens after the open
timeout, and a probe answered with a 4xx closes it instead of sticking."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from gateway_harness import TEST_KEY, UPSTREAM_KEY, free_port, pipeline


def config(port: int, upstream: str) -> str:
    return f"""
server: {{addr: "127.0.0.1:{port}", write_timeout: 20s}}
circuit_breaker: {{enabled: true, min_samples: 4, error_threshold: 0.5, open_timeout: 1s}}
rate_limits: {{default_rpm: 0, default_tpm: 0}}
retries: {{max_attempts: 1}}
cache: {{enabled: false}}
providers:
  - {{name: brk, type: openai, base_url: "{upstream}", api_key: {UPSTREAM_KEY}}}
  - {{name: backup, type: openai, base_url: "{upstream}", api_key: {UPSTREAM_KEY}}}
routes:
  - model_alias: flaky
    targets:
      - {{provider: brk, model: brk-fail-500+fail-500, priority: 1}}
      - {{provider: backup, model: backup-ok, priority: 2}}
  - model_alias: client-error
    targets: [{{provider: brk, model: brk-fail-400+fail-400}}]
keys:
  - {{name: t, key: {TEST_KEY}, role: admin}}
"""


@pytest_asyncio.fixture(loop_scope="session")
async def gateway_url(managed_nats_url: str, mock_upstream: Any) -> AsyncIterator[str]:
    async with pipeline(managed_nats_url, config(free_port(), mock_upstream.base_url)) as url:
        yield url


async def test_trip_skip_half_open_and_a_4xx_probe_closes(gateway_url: str,
                                                          upstream: Any) -> None:
    auth = {"authorization": f"Bearer {TEST_KEY}"}

    def brk_calls() -> int:
        return sum(1 for r in upstream.requests if (r.model or "").startswith("brk-"))

    async with httpx.AsyncClient(base_url=gateway_url + "/v1", timeout=15) as http:
        async def ask(model: str) -> int:
            r = await http.post("/chat/completions", headers=auth, json={
                "model": model, "messages": [{"role": "user", "content": "x"}]})
            return r.status_code

        async def scrape(name: str, **labels: str) -> float:
            text = (await http.get(gateway_url + "/metrics")).text
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == name and sample.labels == labels:
                        return float(sample.value)
            return 0.0

        opened = await scrape("gandalf_circuit_transitions_total", provider="brk", state="open")
        for _ in range(4):  # each fails over to backup; 4 failures of 4 samples trip it
            assert await ask("flaky") == 200
        assert brk_calls() == 4
        # The metrics the original declared and never set: 1 = open.
        assert await scrape("gandalf_circuit_breaker_state", provider="brk") == 1
        assert await scrape("gandalf_circuit_transitions_total", provider="brk",
                            state="open") == opened + 1
        await asyncio.sleep(0.1)  # the health event reaches the router
        assert await ask("flaky") == 200
        assert brk_calls() == 4  # skipped without a round trip
        await asyncio.sleep(1.1)  # open timeout: half-open, one probe allowed
        assert await ask("client-error") == 400  # the probe gets a 4xx...
        assert brk_calls() == 5
        await asyncio.sleep(0.1)
        assert await ask("flaky") == 200  # ...which closed it: brk is tried again
        assert brk_calls() == 6
        assert await scrape("gandalf_circuit_breaker_state", provider="brk") == 0
