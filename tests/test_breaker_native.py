"""Native API calls count for the circuit breaker (the original skipped
them): failures trip it like any others, and a native call sent as the
half-open probe releases the probe slot, so the breaker cannot stick."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest_asyncio

from gateway_harness import TEST_KEY, UPSTREAM_KEY, free_port, pipeline


def config(port: int, upstream: str) -> str:
    return f"""
server: {{addr: "127.0.0.1:{port}", write_timeout: 20s}}
circuit_breaker: {{enabled: true, min_samples: 3, error_threshold: 0.5, open_timeout: 1s}}
rate_limits: {{default_rpm: 0, default_tpm: 0}}
retries: {{max_attempts: 1}}
cache: {{enabled: false}}
providers:
  - {{name: nb, type: openai, base_url: "{upstream}", api_key: {UPSTREAM_KEY}}}
routes:
  - model_alias: broken
    targets: [{{provider: nb, model: nb+fail-500}}]
  - model_alias: fine
    targets: [{{provider: nb, model: nb-ok}}]
keys:
  - {{name: t, key: {TEST_KEY}, role: admin}}
"""


@pytest_asyncio.fixture(loop_scope="session")
async def gateway_url(managed_nats_url: str, mock_upstream: Any) -> AsyncIterator[str]:
    async with pipeline(managed_nats_url, config(free_port(), mock_upstream.base_url)) as url:
        yield url


async def test_native_calls_trip_and_a_native_probe_closes(gateway_url: str,
                                                           upstream: Any) -> None:
    async with httpx.AsyncClient(base_url=gateway_url, timeout=15,
                                 headers={"x-api-key": TEST_KEY,
                                          "anthropic-version": "2023-06-01"}) as http:
        async def messages(model: str) -> int:
            r = await http.post("/v1/messages", json={
                "model": model, "max_tokens": 16,
                "messages": [{"role": "user", "content": "hi"}]})
            return r.status_code

        async def chat(model: str) -> httpx.Response:
            return await http.post("/v1/chat/completions", json={
                "model": model, "messages": [{"role": "user", "content": "hi"}]},
                headers={"authorization": f"Bearer {TEST_KEY}"})

        for _ in range(3):  # native (Messages -> OpenAI) calls failing with 500
            assert await messages("broken") >= 500
        await asyncio.sleep(0.1)
        before = len(upstream.requests)
        refused = await chat("fine")  # open: refused without an upstream call
        assert refused.status_code == 503 and len(upstream.requests) == before
        await asyncio.sleep(1.1)  # half-open: the next call is the probe
        assert await messages("fine") == 200  # a native probe...
        await asyncio.sleep(0.1)
        assert (await chat("fine")).status_code == 200  # ...closed it
        assert (await chat("fine")).status_code == 200
