"""The ingress's usage events (managed mode): one per authenticated request,
on the USAGE stream, with what billing needs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
from nats.js.api import DeliverPolicy

from gandalf_common import contract
from gandalf_common.contract import UsageEvent, usage_json_decoder
from managed_harness import ADMIN_KEY, ManagedGateway, start_managed

pytestmark = pytest.mark.asyncio(loop_scope="session")

EXTRA = """
  - model_alias: budgeted
    targets: [{provider: primary, model: delay-300}]
    pricing: {input: 10, output: 10}
  - model_alias: priced
    targets: [{provider: primary, model: gpt-4o-mini}]
  - model_alias: slow-stream
    targets: [{provider: primary, model: chunk-delay-100+words-40}]
  - model_alias: shared
    targets: [{provider: primary, model: shared+delay-400}]
    pricing: {input: 10, output: 10}
"""


@pytest_asyncio.fixture(loop_scope="session")
async def managed(managed_nats_url: str, fresh_pg_dsn: str, mock_upstream: Any
                  ) -> AsyncIterator[ManagedGateway]:
    gw = await start_managed(managed_nats_url, fresh_pg_dsn, mock_upstream.base_url, extra=EXTRA)
    yield gw
    await gw.close()


class Events:
    def __init__(self) -> None:
        self.items: list[UsageEvent] = []

    async def start(self, gw: ManagedGateway) -> None:
        async def on(msg: Any) -> None:
            self.items.append(usage_json_decoder.decode(msg.data))

        self.sub = await gw.nc.jetstream().subscribe(
            contract.USAGE_SUBJECT, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW,
            cb=on)

    async def wait(self, count: int, timeout: float = 5.0) -> list[UsageEvent]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.items) < count and loop.time() < deadline:
            await asyncio.sleep(0.02)
        await self.sub.unsubscribe()
        return self.items


def client(gw: ManagedGateway, key: str = ADMIN_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=15)


async def test_success_refusal_and_stream_events(managed: ManagedGateway,
                                                 upstream: Any) -> None:
    events = Events()
    await events.start(managed)
    reply = await client(managed).chat.completions.with_raw_response.create(
        model="priced", messages=[{"role": "user", "content": "what does this cost"}])
    request_id = reply.headers["x-request-id"]
    stream = await client(managed).chat.completions.create(
        model="priced", messages=[{"role": "user", "content": "stream"}], stream=True)
    async for _ in stream:
        pass
    with pytest.raises(openai.NotFoundError):
        await client(managed).chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "x"}])
    got = await events.wait(3)
    assert len(got) == 3
    first = next(e for e in got if e.request_id == request_id)
    assert (first.provider, first.provider_model, first.model) == ("primary", "gpt-4o-mini",
                                                                   "priced")
    assert first.status == 200 and first.prompt_tokens > 0 and first.completion_tokens > 0
    assert first.total_tokens == first.prompt_tokens + first.completion_tokens
    expected = (first.prompt_tokens * 0.15 + first.completion_tokens * 0.60) / 1e6
    assert first.cost_usd == pytest.approx(expected)
    assert first.auth == "admin_key" and first.endpoint == "chat" and not first.stream
    streamed = next(e for e in got if e.stream)
    assert streamed.completion_tokens > 0 and streamed.ttft_ms is not None
    refused = next(e for e in got if e.status == 404)
    assert refused.model == "nope" and refused.total_tokens == 0
    assert refused.error_class == "model_not_found"


async def test_client_disconnect_is_recorded_with_estimated_tokens(
        managed: ManagedGateway, upstream: Any) -> None:
    events = Events()
    await events.start(managed)
    body = {"model": "slow-stream", "stream": True,
            "messages": [{"role": "user", "content": "go"}]}
    async with httpx.AsyncClient(timeout=10) as http, http.stream(
            "POST", managed.base_url + "/chat/completions", json=body,
            headers={"authorization": f"Bearer {ADMIN_KEY}"}) as r:
        seen = 0
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                seen += 1
            if seen >= 3:
                break  # leave mid-stream
    (event,) = await events.wait(1)
    assert event.status == 499 and event.stream
    assert event.estimated and event.completion_tokens >= 3


async def test_exhausted_budget_is_refused_with_insufficient_quota(
        managed: ManagedGateway, upstream: Any) -> None:
    import time

    from gandalf_common.contract import SPEND_BUCKET, Spend, encode
    from gandalf_common.periods import period_start
    from gandalf_common.records import spend_key

    async with httpx.AsyncClient(base_url=managed.url + "/admin/v1", timeout=10,
                                 headers={"authorization": f"Bearer {ADMIN_KEY}"}) as api:
        r = await api.post("/keys", json={"role": "member", "max_budget": 0.5,
                                          "budget_period": "daily"})
        assert r.status_code == 201, r.text
        key, key_id = r.json()["key"], r.json()["id"]
    kv = await managed.nc.jetstream().key_value(SPEND_BUCKET)
    now = time.time()
    # Yesterday's spend does not count today.
    await kv.put(spend_key("key", key_id), encode(Spend(
        period="daily", period_start=period_start("daily", now) - 86400, spend_usd=9.0)))
    await asyncio.sleep(0.1)
    await client(managed, key).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}])
    await kv.put(spend_key("key", key_id), encode(Spend(
        period="daily", period_start=period_start("daily", now), spend_usd=0.5)))
    await asyncio.sleep(0.1)
    with pytest.raises(openai.RateLimitError) as info:
        await client(managed, key).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 429
    assert info.value.body["type"] == "insufficient_quota"  # type: ignore[index]


async def test_concurrent_requests_cannot_overshoot_a_budget(
        managed: ManagedGateway, upstream: Any) -> None:
    """20 slow requests at once against $0.05 of budget left: reservations let
    only as many through as their estimates fit (estimate: ~1034 tokens at
    the route's $10/1M = ~$0.0103 each -> 4)."""
    import time

    from gandalf_common.contract import SPEND_BUCKET, Spend, encode
    from gandalf_common.periods import period_start
    from gandalf_common.records import spend_key

    async with httpx.AsyncClient(base_url=managed.url + "/admin/v1", timeout=10,
                                 headers={"authorization": f"Bearer {ADMIN_KEY}"}) as api:
        r = await api.post("/keys", json={"role": "member", "max_budget": 1.0,
                                          "budget_period": "daily"})
        key, key_id = r.json()["key"], r.json()["id"]
    kv = await managed.nc.jetstream().key_value(SPEND_BUCKET)
    await kv.put(spend_key("key", key_id), encode(Spend(
        period="daily", period_start=period_start("daily", time.time()), spend_usd=0.95)))
    await asyncio.sleep(0.1)

    async def one() -> int:
        try:
            await client(managed, key).chat.completions.create(
                model="budgeted", messages=[{"role": "user", "content": "hi"}])
            return 200
        except openai.RateLimitError:
            return 429

    results = await asyncio.gather(*(one() for _ in range(20)))
    assert results.count(200) == 4, results


async def test_coalesced_requests_each_get_an_event_billed_once(
        managed: ManagedGateway, upstream: Any) -> None:
    """Five identical deterministic requests at once: one upstream call, five
    events; the four that shared it are marked ``coalesced`` and cost nothing."""
    events = Events()
    await events.start(managed)
    replies = await asyncio.gather(*(client(managed).chat.completions.create(
        model="shared", temperature=0, messages=[{"role": "user", "content": "one answer"}])
        for _ in range(5)))
    assert len({r.id for r in replies}) == 1
    assert sum(1 for r in upstream.requests if r.model == "shared+delay-400") == 1
    got = await events.wait(5)
    assert len(got) == 5 and all(e.status == 200 for e in got)
    paid = [e for e in got if not e.coalesced]
    shared = [e for e in got if e.coalesced]
    assert len(paid) == 1 and len(shared) == 4
    assert paid[0].cost_usd > 0
    assert all(e.cost_usd == 0 and e.total_tokens == paid[0].total_tokens > 0
               and e.provider == "primary" for e in shared)
