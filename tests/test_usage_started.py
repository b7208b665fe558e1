"""Started events (issue 15, design a) on real JetStream and PostgreSQL: a
request admitted whose finished event never comes (its gateway process
died) is billed from its started event after the deadline, as a flagged
provisional row; a finished event settles it, exactly once."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from gandalf_app.embedded import EmbeddedNats
from gandalf_common.bus import connect
from gandalf_common.contract import (
    USAGE_STARTED_MSG_ID_SUFFIX,
    USAGE_STARTED_SUBJECT,
    UsageEvent,
    UsageStarted,
    usage_json_encode,
)
from gandalf_common.pg import connect_pool, migrate
from gandalf_common.usage_stream import ensure_usage_stream
from gandalf_usage import cli
from gandalf_usage.app import UsageService
from gandalf_usage.consumer import ConsumerOptions
from usage_helpers import make_event, publish, rollup_mismatches, wait_until

FAST = ConsumerOptions(max_wait_s=0.1, ack_wait_s=5.0)
DEADLINE_S = 1.0


@pytest_asyncio.fixture
async def nc(own_nats: EmbeddedNats) -> AsyncIterator[NATS]:
    conn = await connect(own_nats.url, "usage-started-test")
    await ensure_usage_stream(conn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest_asyncio.fixture
async def pool(fresh_pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate(fresh_pg_dsn)
    pool = await connect_pool(fresh_pg_dsn)
    try:
        yield pool
    finally:
        await pool.close()


@pytest_asyncio.fixture
async def service(own_nats: EmbeddedNats, fresh_pg_dsn: str,
                  pool: asyncpg.Pool) -> AsyncIterator[UsageService]:
    conn = await connect(own_nats.url, "usage-started-service")
    svc = UsageService(fresh_pg_dsn, options=FAST, started_deadline_s=DEADLINE_S)
    await svc.start(conn)
    try:
        yield svc
    finally:
        await svc.stop(2.0)
        await conn.close()


def started_of(ev: UsageEvent, tokens: int = 1000, cost: float = 0.5) -> UsageStarted:
    return UsageStarted(request_id=ev.request_id, ts=ev.ts, org_id=ev.org_id,
                        team_id=ev.team_id, key_id=ev.key_id, user_id=ev.user_id,
                        auth=ev.auth, endpoint=ev.endpoint, model=ev.model, stream=True,
                        estimated_tokens=tokens, estimated_cost_usd=cost)


async def publish_started(js: JetStreamContext, started: UsageStarted,
                          suffix: str = USAGE_STARTED_MSG_ID_SUFFIX) -> None:
    await js.publish(USAGE_STARTED_SUBJECT, usage_json_encode(started),
                     headers={"Nats-Msg-Id": started.request_id + suffix})


async def rows(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    return [dict(r) for r in await pool.fetch(
        "SELECT request_id, status_code, provider_id, prompt_tokens, total_tokens, cost_usd, "
        "estimated, provisional, error_class FROM usage_records ORDER BY request_id")]


async def pending(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM usage_pending"))


async def rollup_requests(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval(
        "SELECT coalesce(sum(request_count), 0) FROM usage_rollups WHERE period = 'daily'"))


async def wait_rows(pool: asyncpg.Pool, check: Any, what: str, timeout: float = 10.0) -> None:
    async def done() -> bool:
        return bool(check(await rows(pool)))
    await wait_until(done, timeout=timeout, what=what)


async def test_started_then_finished_is_one_real_row(
        nc: NATS, pool: asyncpg.Pool, service: UsageService) -> None:
    js = nc.jetstream()
    ev = make_event()
    await publish_started(js, started_of(ev))
    await publish(js, [ev])
    await wait_rows(pool, lambda r: len(r) == 1, "the finished row")
    await wait_until(lambda: _zero(pending(pool)), what="the pending row removed")
    # Well past the deadline: nothing provisional appears.
    await asyncio.sleep(DEADLINE_S * 2)
    [row] = await rows(pool)
    assert row["request_id"] == ev.request_id and row["status_code"] == 200
    assert not row["provisional"] and not row["estimated"]
    assert await rollup_mismatches(pool) == []


async def test_started_alone_becomes_a_provisional_row_after_the_deadline(
        nc: NATS, pool: asyncpg.Pool, service: UsageService) -> None:
    js = nc.jetstream()
    ev = make_event()
    await publish_started(js, started_of(ev, tokens=1234, cost=0.25))
    await wait_until(lambda: _positive(pending(pool)), what="the pending row")
    t0 = time.monotonic()
    await wait_rows(pool, lambda r: len(r) == 1, "the provisional row")
    assert time.monotonic() - t0 >= DEADLINE_S * 0.5  # not before its deadline
    [row] = await rows(pool)
    assert row == {"request_id": ev.request_id, "status_code": 0, "provider_id": "",
                   "prompt_tokens": 1234, "total_tokens": 1234,
                   "cost_usd": Decimal("0.25000000"), "estimated": True,
                   "provisional": True, "error_class": "ingress_lost"}
    assert await pending(pool) == 0
    assert await rollup_requests(pool) == 1
    assert await rollup_mismatches(pool) == []


async def test_late_finished_settles_the_provisional_row_exactly_once(
        nc: NATS, pool: asyncpg.Pool, service: UsageService, own_nats: EmbeddedNats,
        fresh_pg_dsn: str) -> None:
    js = nc.jetstream()
    # Three hours ago, so `replay --verify` compares its buckets.
    ev = make_event(ts=time.time() - 3 * 3600, provider="anthropic")
    await publish_started(js, started_of(ev))
    await wait_rows(pool, lambda r: len(r) == 1 and r[0]["provisional"], "provisional row")
    await publish(js, [ev])
    await wait_rows(pool, lambda r: len(r) == 1 and not r[0]["provisional"], "settled row")
    settled = await rows(pool)
    assert settled[0]["status_code"] == 200 and settled[0]["provider_id"] == "anthropic"
    assert settled[0]["total_tokens"] == ev.total_tokens
    assert await rollup_requests(pool) == 1
    assert await rollup_mismatches(pool) == []
    # Redelivered under new msg ids (a publisher that lost its state): the
    # started one finds a row and waits for nothing; the finished one is a
    # duplicate. Nothing changes, now or after the deadline.
    await publish_started(js, started_of(ev), suffix=":again")
    await publish(js, [ev], msg_id=lambda e: e.request_id + "-again")
    await asyncio.sleep(DEADLINE_S * 3)
    assert await rows(pool) == settled
    assert await pending(pool) == 0
    assert await rollup_requests(pool) == 1
    assert await rollup_mismatches(pool) == []
    # `gandalf usage replay --verify` agrees (started events bill nothing).
    since = (datetime.now(UTC) - timedelta(hours=5)).isoformat()
    out, err = io.StringIO(), io.StringIO()
    code = await cli.run(["replay", "--from", since, "--verify", "--database-url",
                          fresh_pg_dsn, "--nats-url", own_nats.url], out=out, err=err)
    assert code == 0, out.getvalue() + err.getvalue()
    assert "verify: OK" in out.getvalue()


async def test_duplicates_and_reordering_change_nothing(
        nc: NATS, pool: asyncpg.Pool, service: UsageService) -> None:
    js = nc.jetstream()
    lost, done, late = make_event(), make_event(), make_event()
    for ev in (lost, done):
        for suffix in (USAGE_STARTED_MSG_ID_SUFFIX, ":dup"):
            await publish_started(js, started_of(ev), suffix)
    await publish(js, [done, late])
    await publish(js, [done], msg_id=lambda e: e.request_id + "-dup")
    # A started event stored after its finished one (retried from memory).
    await publish_started(js, started_of(late))
    await wait_rows(pool, lambda r: len(r) == 3 and any(x["provisional"] for x in r),
                    "two rows and one provisional")
    await asyncio.sleep(DEADLINE_S * 3)
    got = {r["request_id"]: r["provisional"] for r in await rows(pool)}
    assert got == {lost.request_id: True, done.request_id: False, late.request_id: False}
    assert await pending(pool) == 0
    assert await rollup_requests(pool) == 3
    assert await rollup_mismatches(pool) == []


async def _zero(n: Any) -> bool:
    return await n == 0


async def _positive(n: Any) -> bool:
    return await n > 0
