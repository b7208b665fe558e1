"""Budget reservations on a native door (managed mode): a budget that fits
N concurrent requests admits exactly N of them; the rest get 429 in the
door's own error shape."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from managed_harness import ADMIN_KEY, ManagedGateway, start_managed

pytestmark = pytest.mark.asyncio(loop_scope="session")

# ~1010 estimated tokens per request (max_tokens 1000 + the prompt) at
# $1000 per million: ~$1.01 each, so a $3.50 budget fits exactly 3.
EXTRA = """
  - model_alias: slow-pricey
    targets: [{provider: primary, model: delay-1500}]
    pricing: {input: 1000, output: 1000}
"""


@pytest_asyncio.fixture(loop_scope="session")
async def managed(managed_nats_url: str, fresh_pg_dsn: str, mock_upstream: Any
                  ) -> AsyncIterator[ManagedGateway]:
    gw = await start_managed(managed_nats_url, fresh_pg_dsn, mock_upstream.base_url,
                             extra=EXTRA)
    yield gw
    await gw.close()


async def test_budget_fitting_three_admits_exactly_three_concurrent_messages(
        managed: ManagedGateway, upstream: Any) -> None:
    async with httpx.AsyncClient(base_url=managed.url + "/admin/v1", timeout=10,
                                 headers={"authorization": f"Bearer {ADMIN_KEY}"}) as api:
        r = await api.post("/keys", json={"role": "member", "max_budget": 3.5,
                                          "budget_period": "daily"})
        assert r.status_code in (200, 201), r.text
        key = r.json()["key"]
    # Anthropic's Messages API, translated onto an OpenAI target.
    body = {"model": "slow-pricey", "max_tokens": 1000,
            "messages": [{"role": "user", "content": "hi"}]}
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient(base_url=managed.url, timeout=20) as http:
        for _ in range(100):  # the new key reaches the ingress through KV
            if (await http.get("/v1/models", headers={"authorization": f"Bearer {key}"})
                    ).status_code == 200:
                break
            await asyncio.sleep(0.05)
        results = await asyncio.gather(*(http.post("/v1/messages", json=body,
                                                   headers=headers) for _ in range(6)))
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200, 200, 200, 429, 429, 429], [r.text for r in results]
    refused = [r.json() for r in results if r.status_code == 429]
    assert all(b["type"] == "error" and b["error"]["type"] == "rate_limit_error"
               for b in refused)
    assert all("budget" in b["error"]["message"] for b in refused)
