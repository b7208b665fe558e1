"""Usage end to end in managed mode: requests through the public port ->
USAGE stream -> usage service -> PostgreSQL raw rows and rollups -> spend in
KV -> the ingress refuses a key whose budget is spent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import openai
import pytest
import pytest_asyncio

from gandalf_common.usage_stream import ensure_usage_stream
from managed_harness import ADMIN_KEY, ManagedGateway, start_managed

pytestmark = pytest.mark.asyncio(loop_scope="session")

EXTRA = """
  - model_alias: pricey
    targets: [{provider: primary, model: gpt-4o}]
    pricing: {input: 100000, output: 100000}
"""


@pytest_asyncio.fixture(loop_scope="session")
async def managed(managed_nats_url: str, fresh_pg_dsn: str, mock_upstream: Any
                  ) -> AsyncIterator[ManagedGateway]:
    import nats

    nc = await nats.connect(managed_nats_url)
    js = nc.jetstream()
    try:  # a clean stream: other tests' events must not land in this database
        await js.delete_stream("USAGE")
    except Exception:  # absent
        pass
    await ensure_usage_stream(nc)
    await nc.close()
    gw = await start_managed(managed_nats_url, fresh_pg_dsn, mock_upstream.base_url, extra=EXTRA,
                             usage=True)
    yield gw
    await gw.close()


async def rows(gw: ManagedGateway, sql: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(gw.cfg.database.url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def until(check: Any, timeout: float = 10.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result or loop.time() > deadline:
            return result
        await asyncio.sleep(0.05)


async def test_requests_become_rows_rollups_and_spend(managed: ManagedGateway,
                                                      upstream: Any) -> None:
    async with httpx.AsyncClient(base_url=managed.url + "/admin/v1", timeout=10,
                                 headers={"authorization": f"Bearer {ADMIN_KEY}"}) as api:
        r = await api.post("/keys", json={"role": "member", "max_budget": 1.0,
                                          "budget_period": "daily"})
        key, key_id = r.json()["key"], r.json()["id"]
    client = openai.AsyncOpenAI(base_url=managed.base_url, api_key=key, max_retries=0)
    # Each call costs > $1 at the route's price: the first spends the budget.
    for _ in range(2):
        await client.chat.completions.create(
            model="pricey", messages=[{"role": "user", "content": "spend it all"}])

    async def written() -> list[Any]:
        found = await rows(managed, "SELECT * FROM usage_records WHERE key_id = $1", key_id)
        return found if len(found) == 2 else []

    records = await until(written)
    assert len(records) == 2
    assert {r["provider_id"] for r in records} == {"primary"}
    assert {r["provider_model"] for r in records} == {"gpt-4o"}
    assert all(r["cost_usd"] >= 1 for r in records)  # 10 tokens at $0.10
    rollups = await rows(managed, "SELECT period, request_count, total_tokens FROM "
                                  "usage_rollups WHERE key_id = $1", key_id)
    assert {r["period"] for r in rollups} == {"hourly", "daily"}
    for r in rollups:
        assert r["request_count"] == 2
        assert r["total_tokens"] == sum(x["total_tokens"] for x in records)

    async def refused() -> bool:
        try:
            await client.chat.completions.create(
                model="pricey", messages=[{"role": "user", "content": "more"}])
        except openai.RateLimitError as exc:
            return exc.body["type"] == "insufficient_quota"  # type: ignore[index]
        return False

    assert await until(refused)
