"""Usage test helpers other tests can reuse: event factories, publishing to
the USAGE stream, and the database checks behind "exactly once"
(one raw row per request id, rollups equal to a GROUP BY of the raw rows).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import asyncpg
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from gandalf_common.contract import USAGE_SUBJECT, UsageEvent, usage_json_encode

_counter = 0


def make_event(**fields: Any) -> UsageEvent:
    """A plausible finished request; any field can be overridden."""
    global _counter
    _counter += 1
    base: dict[str, Any] = {
        "request_id": f"req-{uuid.uuid4().hex}",
        "ts": time.time(),
        "org_id": "org-a",
        "team_id": "team-a",
        "key_id": "key-a",
        "user_id": "user-a",
        "auth": "apikey",
        "endpoint": "chat",
        "model": "gpt-4o-mini",
        "provider": "openai",
        "provider_model": "gpt-4o-mini-2024-07-18",
        "status": 200,
        "prompt_tokens": 10 + _counter % 7,
        "completion_tokens": 20 + _counter % 5,
        "total_tokens": 30 + _counter % 7 + _counter % 5,
        "cost_usd": 0.0001 * (1 + _counter % 9),
        "latency_ms": 120,
    }
    base.update(fields)
    return UsageEvent(**base)


def make_events(n: int, **fields: Any) -> list[UsageEvent]:
    return [make_event(**fields) for _ in range(n)]


async def publish(js: JetStreamContext, events: Iterable[UsageEvent], *,
                  msg_id: Callable[[UsageEvent], str] | None = None,
                  subject: str = USAGE_SUBJECT) -> int:
    """Publish events as the ingress does (``Nats-Msg-Id`` = request id unless
    ``msg_id`` says otherwise); returns how many the stream stored (duplicates
    within its window are acked but not stored)."""
    stored = 0
    for event in events:
        ident = msg_id(event) if msg_id is not None else event.request_id
        ack = await js.publish(subject, usage_json_encode(event),
                               headers={"Nats-Msg-Id": ident})
        stored += not ack.duplicate
    return stored


async def publish_raw(nc: NATS, data: bytes, *, msg_id: str | None = None) -> None:
    """Publish arbitrary bytes to the stream (e.g. a malformed event)."""
    headers = {"Nats-Msg-Id": msg_id} if msg_id else None
    await nc.jetstream().publish(USAGE_SUBJECT, data, headers=headers)


async def wait_until(check: Callable[[], Awaitable[bool]], *, timeout: float = 10.0,
                     interval: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


# ------------------------------------------------------------------ database

ROLLUP_MISMATCHES_SQL = """
WITH expected AS (
    SELECT COALESCE(org_id, '') AS org_id, COALESCE(team_id, '') AS team_id,
           COALESCE(key_id, '') AS key_id, model, provider_id, p.period,
           CASE p.period WHEN 'hourly' THEN date_trunc('hour', created_at, 'UTC')
                         ELSE date_trunc('day', created_at, 'UTC') END AS bucket,
           count(*) AS request_count, sum(prompt_tokens) AS prompt_tokens,
           sum(completion_tokens) AS completion_tokens, sum(cached_tokens) AS cached_tokens,
           sum(total_tokens) AS total_tokens, sum(cost_usd) AS cost_usd,
           count(*) FILTER (WHERE cached) AS cached_count
    FROM usage_records CROSS JOIN (VALUES ('hourly'), ('daily')) AS p(period)
    GROUP BY 1, 2, 3, 4, 5, 6, 7
)
SELECT org_id, team_id, key_id, model, provider_id, period, bucket,
       e.request_count AS want_requests, r.request_count AS got_requests,
       e.cost_usd AS want_cost, r.cost_usd AS got_cost
FROM expected e FULL OUTER JOIN usage_rollups r
     USING (org_id, team_id, key_id, model, provider_id, period, bucket)
WHERE e.request_count IS DISTINCT FROM r.request_count
   OR e.prompt_tokens IS DISTINCT FROM r.prompt_tokens
   OR e.completion_tokens IS DISTINCT FROM r.completion_tokens
   OR e.cached_tokens IS DISTINCT FROM r.cached_tokens
   OR e.total_tokens IS DISTINCT FROM r.total_tokens
   OR e.cost_usd IS DISTINCT FROM r.cost_usd
   OR e.cached_count IS DISTINCT FROM r.cached_count
"""


async def rollup_mismatches(conn: asyncpg.Connection | asyncpg.Pool) -> list[dict[str, Any]]:
    """Rollup rows that differ from the sum of the raw rows (empty = consistent)."""
    return [dict(r) for r in await conn.fetch(ROLLUP_MISMATCHES_SQL)]


async def raw_count(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM usage_records"))


async def request_ids(conn: asyncpg.Connection | asyncpg.Pool) -> list[str]:
    return [r[0] for r in await conn.fetch(
        "SELECT request_id FROM usage_records ORDER BY request_id")]


async def assert_exactly_once(conn: asyncpg.Connection | asyncpg.Pool,
                              expected_ids: Iterable[str]) -> None:
    """One raw row per expected request id, nothing else, rollups = raw sums."""
    want = sorted(set(expected_ids))
    got = await request_ids(conn)
    assert len(got) == len(want), f"{len(got)} rows for {len(want)} requests"
    assert got == want
    assert await rollup_mismatches(conn) == []
    total = await conn.fetchval(
        "SELECT sum(request_count) FROM usage_rollups WHERE period = 'hourly'")
    assert (total or 0) == len(want)
