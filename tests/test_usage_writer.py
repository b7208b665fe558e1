"""The usage writer on a real PostgreSQL: one transaction per batch, one raw
row per request id, rollups (hourly and daily) equal to the raw rows'
sums whatever the duplicates, replays and concurrency."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gandalf_common.contract import UsageEvent, usage_json_encode
from gandalf_common.pg import connect_pool, migrate
from gandalf_usage.events import MalformedEventError, decode_event
from gandalf_usage.writer import write_batch
from usage_helpers import assert_exactly_once, make_event, make_events, rollup_mismatches

# 2024-03-10 22:00 UTC: batches below cross hour, day and month boundaries.
BASE_TS = datetime(2024, 3, 10, 22, 0, tzinfo=UTC).timestamp()


@pytest_asyncio.fixture
async def pool(fresh_pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate(fresh_pg_dsn)
    pool = await connect_pool(fresh_pg_dsn, max_size=8)
    try:
        yield pool
    finally:
        await pool.close()


async def write(pool: asyncpg.Pool, events: list[UsageEvent]) -> int:
    async with pool.acquire() as conn:
        return (await write_batch(conn, events)).inserted


async def test_batch_writes_raw_rows_and_both_rollups(pool: asyncpg.Pool) -> None:
    events = [
        make_event(ts=BASE_TS + 60, cost_usd=0.5, prompt_tokens=1, completion_tokens=2,
                   total_tokens=3),
        make_event(ts=BASE_TS + 120, cost_usd=0.25, cached=True, prompt_tokens=4,
                   completion_tokens=5, total_tokens=9),
        make_event(ts=BASE_TS + 3600, cost_usd=1.0),  # next hour, same day
        make_event(ts=BASE_TS + 2 * 3600 + 5, cost_usd=2.0),  # next day (00:00 UTC)
    ]
    async with pool.acquire() as conn:
        result = await write_batch(conn, events)
    assert (result.events, result.inserted, result.duplicates) == (4, 4, 0)
    assert result.keys == {"key-a"} and result.teams == {"team-a"} and result.orgs == {"org-a"}
    await assert_exactly_once(pool, [e.request_id for e in events])
    hourly = await pool.fetch(
        "SELECT bucket, request_count, cost_usd, cached_count, prompt_tokens FROM usage_rollups"
        " WHERE period = 'hourly' ORDER BY bucket")
    assert [(r["bucket"].hour, r["request_count"]) for r in hourly] == [(22, 2), (23, 1), (0, 1)]
    assert hourly[0]["cost_usd"] == pytest.approx(0.75) and hourly[0]["cached_count"] == 1
    assert hourly[0]["prompt_tokens"] == 5
    daily = await pool.fetch(
        "SELECT bucket, request_count, cost_usd FROM usage_rollups WHERE period = 'daily'"
        " ORDER BY bucket")
    assert [(r["bucket"].day, r["request_count"], float(r["cost_usd"])) for r in daily] == [
        (10, 3, 1.75), (11, 1, 2.0)]
    assert all(r["bucket"].tzinfo is not None and r["bucket"].utcoffset().total_seconds() == 0
               for r in daily)


async def test_raw_row_keeps_every_field(pool: asyncpg.Pool) -> None:
    event = make_event(auth="jwt", user_id="alice@example.com", endpoint="native:anthropic",
                       coalesced=True, estimated=True, stream=True, ttft_ms=42, status=499,
                       error_class="client_disconnected", team_id="", key_id="")
    await write(pool, [event])
    row = await pool.fetchrow("SELECT * FROM usage_records")
    assert row["request_id"] == event.request_id
    assert row["created_at"].timestamp() == pytest.approx(event.ts, abs=1e-6)
    assert (row["auth"], row["endpoint"], row["coalesced"], row["estimated"], row["stream"]) == (
        "jwt", "native:anthropic", True, True, True)
    assert row["caller_jwt_sub"] == "alice@example.com"
    assert (row["status_code"], row["ttft_ms"], row["error_class"]) == (
        499, 42, "client_disconnected")
    assert row["team_id"] is None and row["key_id"] is None  # "none" is NULL in raw rows
    assert (row["provider_id"], row["provider_model"]) == (event.provider, event.provider_model)
    rollup = await pool.fetchrow("SELECT * FROM usage_rollups WHERE period = 'daily'")
    assert (rollup["team_id"], rollup["key_id"]) == ("", "")  # and '' in the rollups


async def test_duplicates_in_a_batch_and_replays_count_once(pool: asyncpg.Pool) -> None:
    events = make_events(20)
    batch = events + events[:5]  # the same request id twice in one batch
    random.shuffle(batch)
    async with pool.acquire() as conn:
        first = await write_batch(conn, batch)
        assert (first.inserted, first.duplicates) == (20, 5)
        # A replay of everything (redelivery, a consumer reset): nothing new.
        again = await write_batch(conn, events + make_events(3))
        assert (again.inserted, again.duplicates) == (3, 20)
    rows = await pool.fetchval("SELECT count(*) FROM usage_records")
    assert rows == 23
    assert await rollup_mismatches(pool) == []


async def test_concurrent_overlapping_batches(pool: asyncpg.Pool) -> None:
    """Eight writers, each with an overlapping slice of the same events (as
    two replicas given the same request id by different publishes)."""
    events = [make_event(ts=BASE_TS + i * 97, key_id=f"k{i % 5}", model=f"m{i % 3}")
              for i in range(400)]
    slices = [random.sample(events, 150) for _ in range(8)]
    covered = {e.request_id for part in slices for e in part}
    inserted = await asyncio.gather(*(write(pool, part) for part in slices))
    assert sum(inserted) == len(covered)
    await assert_exactly_once(pool, covered)


def test_decode_rejects_what_cannot_be_billed() -> None:
    good = make_event()
    assert decode_event(usage_json_encode(good)) == good
    for bad in (b"not json", b"{}", b'{"ts": 1}', b'{"request_id": "", "ts": 1}',
                b'{"request_id": "a", "ts": -5}', b'{"request_id": "a", "ts": 1e13}',
                b'{"request_id": "a", "ts": 1, "prompt_tokens": -1}',
                b'{"request_id": "a", "ts": 1, "total_tokens": 99999999999999999999}',
                b'{"request_id": "a", "ts": 1, "cost_usd": -0.5}',
                b'{"request_id": "a", "ts": 1, "cost_usd": 1e12}',
                b'{"request_id": "a\\u0000", "ts": 1}'):
        with pytest.raises(MalformedEventError):
            decode_event(bad)
    # Informative fields are brought into range rather than losing the event.
    fixed = decode_event(b'{"request_id": "a", "ts": 1, "latency_ms": 99999999999,'
                         b' "ttft_ms": -3, "model": "g\\u0000pt"}')
    assert (fixed.latency_ms, fixed.ttft_ms, fixed.model) == (2**31 - 1, 0, "gpt")


# ------------------------------------------------------------ property test

_ids = st.sampled_from([f"r{i}" for i in range(40)])  # few ids: many duplicates
_event = st.builds(
    UsageEvent,
    request_id=_ids,
    ts=st.integers(0, 3 * 24 * 3600).map(lambda s: BASE_TS + s + 0.25),
    org_id=st.sampled_from(["o1", "o2", ""]),
    team_id=st.sampled_from(["t1", "t2", ""]),
    key_id=st.sampled_from(["k1", "k2", "k3", ""]),
    model=st.sampled_from(["gpt-4o", "claude", "llama"]),
    provider=st.sampled_from(["openai", "anthropic", ""]),
    cached=st.booleans(),
    prompt_tokens=st.integers(0, 10**6),
    completion_tokens=st.integers(0, 10**6),
    cached_tokens=st.integers(0, 1000),
    total_tokens=st.integers(0, 2 * 10**6),
    cost_usd=st.integers(0, 10**7).map(lambda n: n / 10**7),
)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(events=st.lists(_event, max_size=60), cuts=st.lists(st.integers(0, 60), max_size=5),
       replay=st.integers(0, 60))
async def test_rollups_equal_raw_rows(pool: asyncpg.Pool, events: list[UsageEvent],
                                      cuts: list[int], replay: int) -> None:
    """Any events, any duplicates, any batching, any replay: one row per
    request id and rollups == GROUP BY over the raw rows, hourly and daily."""
    await pool.execute("TRUNCATE usage_records, usage_rollups")
    bounds = sorted({0, len(events), *(c for c in cuts if c < len(events))})
    batches = [events[a:b] for a, b in itertools.pairwise(bounds)]
    batches.append(events[:replay])  # a redelivery of a prefix
    inserted = 0
    for batch in batches:
        inserted += await write(pool, batch)
    ids = {e.request_id for e in events}
    assert inserted == len(ids)
    await assert_exactly_once(pool, ids)
