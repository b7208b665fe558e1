"""The usage service end to end on real NATS JetStream and PostgreSQL:
exactly one raw row per request under duplicate publishes, redelivery,
concurrent replicas, Postgres and NATS restarts; malformed and refused
messages are terminated without stopping the others; spend per budget
scope reaches the KV bucket the ingress reads.

Every test has a NATS server of its own (``own_nats``: the USAGE stream, the
durable and the KV buckets are private to it) and a fresh database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from gandalf_app.embedded import EmbeddedNats, EmbeddedPostgres
from gandalf_common.bus import connect
from gandalf_common.contract import (
    SPEND_BUCKET,
    USAGE_DURABLE,
    USAGE_STREAM,
    Spend,
    UsageEvent,
    encode,
    spend_decoder,
)
from gandalf_common.kv import ensure_buckets
from gandalf_common.periods import period_start
from gandalf_common.pg import connect_pool, migrate
from gandalf_common.records import (
    CONFIG_BUCKET,
    KEYS_BUCKET,
    ORG_PREFIX,
    TEAM_PREFIX,
    KeyRecord,
    Limits,
    OrgRecord,
    TeamRecord,
    config_key,
    encode_record,
    spend_key,
)
from gandalf_common.usage_stream import ensure_usage_stream
from gandalf_usage.app import UsageService
from gandalf_usage.consumer import ConsumerOptions
from gandalf_usage.metrics import REGISTRY
from usage_helpers import (
    assert_exactly_once,
    make_event,
    make_events,
    publish,
    publish_raw,
    raw_count,
    wait_until,
)

FAST = ConsumerOptions(max_wait_s=0.1, ack_wait_s=5.0)
DAY = 24 * 3600


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


@pytest_asyncio.fixture
async def nc(own_nats: EmbeddedNats) -> AsyncIterator[NATS]:
    """The test's own connection (publishing, KV, consumer state)."""
    conn = await connect(own_nats.url, "usage-test")
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


class Services:
    """Usage services started by a test, each on its own connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.running: list[tuple[UsageService, NATS]] = []

    async def start(self, dsn: str, **kw: Any) -> UsageService:
        kw.setdefault("options", FAST)
        conn = await connect(self.url, f"usage-{len(self.running)}")
        service = UsageService(dsn, **kw)
        await service.start(conn)
        self.running.append((service, conn))
        return service

    async def kill(self, service: UsageService) -> None:
        """Stop at once (whatever is un-acked stays un-acked) and disconnect."""
        for entry in list(self.running):
            if entry[0] is service:
                self.running.remove(entry)
                await service.stop(0.01)
                await entry[1].close()

    async def close(self) -> None:
        for service, conn in self.running:
            await service.stop(2.0)
            await conn.close()
        self.running.clear()


@pytest_asyncio.fixture
async def services(own_nats: EmbeddedNats) -> AsyncIterator[Services]:
    s = Services(own_nats.url)
    try:
        yield s
    finally:
        await s.close()


async def settled(nc: NATS) -> bool:
    """Every message of the stream delivered and acked (or terminated)."""
    try:
        info = await nc.jetstream().consumer_info(USAGE_STREAM, USAGE_DURABLE)
    except NotFoundError:
        return False
    return info.num_pending == 0 and info.num_ack_pending == 0


async def wait_written(nc: NATS, pool: asyncpg.Pool, rows: int, *,
                       timeout: float = 15.0) -> None:
    async def done() -> bool:
        return await raw_count(pool) >= rows and await settled(nc)
    await wait_until(done, timeout=timeout, what=f"{rows} rows written and acked")


# ------------------------------------------------------------ exactly once


async def test_duplicate_publishes_malformed_and_refused_messages(
        nc: NATS, pool: asyncpg.Pool, fresh_pg_dsn: str, services: Services) -> None:
    js = nc.jetstream()
    events = make_events(50)
    assert await publish(js, events) == 50
    # Same Nats-Msg-Id: the stream drops them.
    assert await publish(js, events[:10]) == 0
    # Same request id under new Msg-Ids (a publisher that lost its state):
    # stored by the stream, deduplicated by the database.
    assert await publish(js, events[10:20], msg_id=lambda e: e.request_id + "-again") == 10
    # Not a usage event at all, and one the database refuses (a CHECK the
    # test adds): both are terminated, neither holds up the others.
    await publish_raw(nc, b"{not json", msg_id="garbage")
    await publish_raw(nc, b'{"request_id": "", "ts": 1}', msg_id="no-id")
    await pool.execute("ALTER TABLE usage_records ADD CONSTRAINT no_poison "
                       "CHECK (model <> 'poison')")
    poison = make_event(model="poison")
    later = make_events(5)
    await publish(js, [poison, *later])

    before = {n: metric(n) for n in ("gandalf_usage_decode_failures_total",
                                     "gandalf_usage_rejected_total",
                                     "gandalf_usage_duplicates_skipped_total")}
    await services.start(fresh_pg_dsn)
    await wait_written(nc, pool, 55)
    await assert_exactly_once(pool, [e.request_id for e in events + later])
    assert metric("gandalf_usage_decode_failures_total") - before[
        "gandalf_usage_decode_failures_total"] == 2
    assert metric("gandalf_usage_rejected_total") - before["gandalf_usage_rejected_total"] == 1
    assert metric("gandalf_usage_duplicates_skipped_total") - before[
        "gandalf_usage_duplicates_skipped_total"] >= 10
    # Terminated, not lost: still in the stream for a replay.
    assert (await js.stream_info(USAGE_STREAM)).state.messages == 50 + 10 + 2 + 6


async def test_redelivery_after_commit_without_ack(
        nc: NATS, pool: asyncpg.Pool, fresh_pg_dsn: str, services: Services) -> None:
    """A replica dies between its commit and its acks: JetStream redelivers
    the batch to another one, which finds every row already there."""
    options = ConsumerOptions(max_wait_s=0.1, ack_wait_s=1.0)
    committed = asyncio.Event()

    async def crash_before_ack(msgs: Sequence[Msg]) -> None:
        committed.set()
        await asyncio.Event().wait()  # never acks: killed here

    events = make_events(100)
    await publish(nc.jetstream(), events)
    doomed = await services.start(fresh_pg_dsn, options=options, after_commit=crash_before_ack)
    await asyncio.wait_for(committed.wait(), 10)
    assert await raw_count(pool) == 100  # committed...
    info = await nc.jetstream().consumer_info(USAGE_STREAM, USAGE_DURABLE)
    assert info.num_ack_pending == 100  # ...and not acked
    await services.kill(doomed)

    redelivered = metric("gandalf_usage_redeliveries_total")
    duplicates = metric("gandalf_usage_duplicates_skipped_total")
    written = metric("gandalf_usage_rows_written_total")
    await services.start(fresh_pg_dsn, options=options)
    await wait_written(nc, pool, 100)
    await assert_exactly_once(pool, [e.request_id for e in events])
    assert metric("gandalf_usage_redeliveries_total") - redelivered >= 100
    assert metric("gandalf_usage_duplicates_skipped_total") - duplicates >= 100
    assert metric("gandalf_usage_rows_written_total") == written


async def test_a_dead_replicas_batch_comes_back_within_the_default_ack_wait(
        nc: NATS, pool: asyncpg.Pool, fresh_pg_dsn: str, services: Services) -> None:
    """With the default options a killed consumer delays rows by seconds, not 30 s."""
    options = ConsumerOptions(max_wait_s=0.1)
    assert options.ack_wait_s <= 5.0
    fetched = asyncio.Event()

    async def crash_before_ack(msgs: Sequence[Msg]) -> None:
        fetched.set()
        await asyncio.Event().wait()

    await publish(nc.jetstream(), make_events(50))
    doomed = await services.start(fresh_pg_dsn, options=options, after_commit=crash_before_ack)
    await asyncio.wait_for(fetched.wait(), 10)
    await services.kill(doomed)
    killed = time.monotonic()
    redelivered = metric("gandalf_usage_redeliveries_total")
    await services.start(fresh_pg_dsn, options=options)
    while metric("gandalf_usage_redeliveries_total") - redelivered < 50:
        assert time.monotonic() - killed < options.ack_wait_s + 3, "batch not redelivered"
        await asyncio.sleep(0.1)


async def test_a_slow_write_holds_its_batch(
        nc: NATS, pool: asyncpg.Pool, fresh_pg_dsn: str, services: Services) -> None:
    """A write that takes several ack_waits (the table locked by someone
    else) is not redelivered behind its back: in_progress holds the batch."""
    options = ConsumerOptions(max_wait_s=0.1, ack_wait_s=1.0)
    await services.start(fresh_pg_dsn, options=options)
    await services.start(fresh_pg_dsn, options=options)  # would take a batch let go
    locker = await asyncpg.connect(fresh_pg_dsn)
    try:
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE usage_records IN ACCESS EXCLUSIVE MODE")
        redelivered = metric("gandalf_usage_redeliveries_total")
        events = make_events(40)
        await publish(nc.jetstream(), events)
        await asyncio.sleep(3.5)  # the write waits on the lock for 3+ ack_waits
        await tx.rollback()
    finally:
        await locker.close()
    await wait_written(nc, pool, 40)
    await asyncio.sleep(0.5)  # the acks
    info = await nc.jetstream().consumer_info(USAGE_STREAM, USAGE_DURABLE)
    assert info.num_ack_pending == 0
    assert metric("gandalf_usage_redeliveries_total") == redelivered
    await assert_exactly_once(pool, [e.request_id for e in events])


async def test_two_replicas_share_the_durable(
        nc: NATS, pool: asyncpg.Pool, fresh_pg_dsn: str, services: Services) -> None:
    seen: list[dict[str, int]] = [{}, {}]

    def counter(i: int) -> Any:
        async def after_commit(msgs: Sequence[Msg]) -> None:
            for m in msgs:
                seen[i][m.header["Nats-Msg-Id"]] = seen[i].get(m.header["Nats-Msg-Id"], 0) + 1
        return after_commit

    await services.start(fresh_pg_dsn, after_commit=counter(0))
    await services.start(fresh_pg_dsn, after_commit=counter(1))
    # Many keys, models and hours, some request ids published twice under new Msg-Ids.
    base = time.time() - 3 * DAY
    events = [make_event(key_id=f"k{i % 13}", model=f"m{i % 4}", ts=base + i * 97)
              for i in range(2000)]
    js = nc.jetstream()
    await asyncio.gather(
        publish(js, events[:1000]), publish(js, events[1000:]),
        publish(js, events[::20], msg_id=lambda e: "again-" + e.request_id))
    await wait_written(nc, pool, 2000, timeout=20)
    await assert_exactly_once(pool, [e.request_id for e in events])
    assert seen[0] and seen[1], "both replicas took part"


@pytest.fixture
def pg_state_dir() -> Iterator[Path]:
    """A state dir outside pytest's basetemp: as root, Postgres runs as
    another user who must traverse the path, and every pytest session that
    starts meanwhile resets ``/tmp/pytest-of-<user>`` to mode 0700."""
    path = Path(tempfile.mkdtemp(prefix="gandalf-usage-pg-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_postgres_down_then_back(
        nc: NATS, pg_state_dir: Path, services: Services, caplog: pytest.LogCaptureFixture
        ) -> None:
    """Postgres stops mid-flow: events wait in JetStream (un-acked, kept
    from redelivery by in_progress), then everything is written once."""
    pg = EmbeddedPostgres(pg_state_dir)
    dsn = await asyncio.to_thread(pg.start)
    await migrate(dsn)
    js = nc.jetstream()
    try:
        options = ConsumerOptions(max_wait_s=0.1, ack_wait_s=1.5)
        await services.start(dsn, options=options)
        first = make_events(100)
        await publish(js, first)
        conn = await asyncpg.connect(dsn)
        try:
            await wait_written(nc, conn, 100)  # type: ignore[arg-type]
        finally:
            await conn.close()

        caplog.set_level(logging.INFO, logger="gandalf.usage")
        await asyncio.to_thread(pg.stop)
        second = make_events(200)
        redelivered = metric("gandalf_usage_redeliveries_total")
        await publish(js, second)
        await asyncio.sleep(3.0)  # two ack_waits: in_progress must hold the batch
        info = await js.consumer_info(USAGE_STREAM, USAGE_DURABLE)
        assert info.num_ack_pending + info.num_pending == 200
        assert info.num_redelivered == 0
        assert metric("gandalf_usage_redeliveries_total") == redelivered

        assert await asyncio.to_thread(pg.start) == dsn
        conn = await asyncpg.connect(dsn)
        try:
            await wait_written(nc, conn, 300)  # type: ignore[arg-type]
            await assert_exactly_once(conn, [e.request_id for e in first + second])
        finally:
            await conn.close()
        messages = [r.getMessage() for r in caplog.records]
        # Logged once per state change, not once per retry.
        assert sum("cannot write to the database" in m for m in messages) == 1
        assert sum("database writes work again" in m for m in messages) == 1
    finally:
        await services.close()
        await asyncio.to_thread(pg.stop)


async def test_nats_restart_mid_flow(
        own_nats: EmbeddedNats, nc: NATS, pool: asyncpg.Pool, fresh_pg_dsn: str,
        services: Services) -> None:
    js = nc.jetstream()
    await services.start(fresh_pg_dsn)
    first = make_events(50)
    await publish(js, first)
    await wait_written(nc, pool, 50)
    await asyncio.to_thread(own_nats.restart)
    await wait_until(lambda: _connected(nc), what="the test connection back")
    second = make_events(50)
    await publish(js, second)
    await wait_written(nc, pool, 100)
    await assert_exactly_once(pool, [e.request_id for e in first + second])


async def test_stream_recreated_under_the_service(
        nc: NATS, pool: asyncpg.Pool, fresh_pg_dsn: str, services: Services) -> None:
    """Someone deletes and recreates the USAGE stream (as tests sharing a
    NATS do): the service notices its durable is gone and makes a new one."""
    await services.start(fresh_pg_dsn, options=ConsumerOptions(max_wait_s=0.1,
                                                               idle_check_s=0.3))
    js = nc.jetstream()
    first = make_events(10)
    await publish(js, first)
    await wait_written(nc, pool, 10)
    await js.delete_stream(USAGE_STREAM)
    await ensure_usage_stream(nc)
    second = make_events(10)
    await publish(js, second)
    await wait_written(nc, pool, 20)
    await assert_exactly_once(pool, [e.request_id for e in first + second])


async def _connected(nc: NATS) -> bool:
    return nc.is_connected


async def test_stop_finishes_the_batch_in_progress(
        nc: NATS, pool: asyncpg.Pool, fresh_pg_dsn: str, services: Services) -> None:
    in_batch = asyncio.Event()

    async def slow_ack(msgs: Sequence[Msg]) -> None:
        in_batch.set()
        await asyncio.sleep(0.5)

    events = make_events(30)
    await publish(nc.jetstream(), events)  # first, so that they make one batch
    service = await services.start(fresh_pg_dsn, after_commit=slow_ack)
    await asyncio.wait_for(in_batch.wait(), 10)
    await service.stop(10.0)
    assert await settled(nc)  # committed and acked before stop returned
    await assert_exactly_once(pool, [e.request_id for e in events])


# ------------------------------------------------------------------ spend


async def put_config(nc: NATS, *, orgs: Sequence[OrgRecord] = (),
                     teams: Sequence[TeamRecord] = (), keys: Sequence[KeyRecord] = ()) -> None:
    kv = await ensure_buckets(nc)
    for org in orgs:
        await kv[CONFIG_BUCKET].put(config_key(ORG_PREFIX, org.id), encode_record(org))
    for team in teams:
        await kv[CONFIG_BUCKET].put(config_key(TEAM_PREFIX, team.id), encode_record(team))
    for key in keys:
        await kv[KEYS_BUCKET].put(key.key_hash, encode_record(key))


def key_record(ident: str, *, team: str, org: str, budget: float | None = None,
               period: str | None = None) -> KeyRecord:
    return KeyRecord(id=ident, key_hash=f"hash-{ident}", key_prefix="gw-", org_id=org,
                     team_id=team, limits=Limits(max_budget=budget, budget_period=period))


async def spend_of(kv: KeyValue, scope: str, ident: str) -> Spend | None:
    try:
        entry = await kv.get(spend_key(scope, ident))
    except KeyNotFoundError:
        return None
    return spend_decoder.decode(entry.value) if entry.value else None


def expected(events: Sequence[UsageEvent], period: str | None, now: float) -> float:
    start = period_start(period, now)
    return sum(e.cost_usd for e in events if e.ts >= start)


async def wait_spend(kv: KeyValue, scope: str, ident: str, want: float, period: str) -> Spend:
    got: list[Spend | None] = [None]

    async def check() -> bool:
        got[0] = await spend_of(kv, scope, ident)
        return (got[0] is not None and got[0].period == period
                and abs(got[0].spend_usd - want) < 1e-9)
    await wait_until(check, what=f"{scope} {ident} spend {want} ({period}), last {got[0]}")
    assert got[0] is not None
    return got[0]


async def test_spend_per_scope_and_period(
        nc: NATS, pool: asyncpg.Pool, fresh_pg_dsn: str, services: Services) -> None:
    """Key with a daily budget, team monthly, org lifetime; a key without a
    budget gets no record; a budget added later is published at once."""
    await put_config(
        nc, orgs=[OrgRecord(id="acme", name="Acme", limits=Limits(max_budget=1000)),
                  OrgRecord(id="idle", name="Idle", limits=Limits(max_budget=1,
                                                                   budget_period="daily"))],
        teams=[TeamRecord(id="ml", org_id="acme", name="ML",
                          limits=Limits(max_budget=100, budget_period="monthly"))],
        keys=[key_record("k1", team="ml", org="acme", budget=10, period="daily"),
              key_record("k2", team="ml", org="acme")])
    now = time.time()
    ages = [60, 3600, DAY + 60, 8 * DAY, 40 * DAY, 400 * DAY]
    events = [make_event(key_id=k, team_id="ml", org_id="acme", ts=now - age,
                         cost_usd=round(0.01 * (i + 1) + (k == "k2") * 0.5, 6))
              for i, age in enumerate(ages) for k in ("k1", "k2")]
    await publish(nc.jetstream(), events)
    await services.start(fresh_pg_dsn)
    await wait_written(nc, pool, len(events))
    kv = await nc.jetstream().key_value(SPEND_BUCKET)

    k1 = [e for e in events if e.key_id == "k1"]
    daily = await wait_spend(kv, "key", "k1", expected(k1, "daily", now), "daily")
    assert daily.period_start == period_start("daily", now)
    team = await wait_spend(kv, "team", "ml", expected(events, "monthly", now), "monthly")
    assert team.period_start == period_start("monthly", now)
    org = await wait_spend(kv, "org", "acme", sum(e.cost_usd for e in events), "lifetime")
    assert org.period_start == 0
    assert await spend_of(kv, "key", "k2") is None  # no budget, no record
    await wait_spend(kv, "org", "idle", 0.0, "daily")  # a budget, no usage: zero

    # More usage: the touched scopes follow.
    extra = make_events(3, key_id="k1", team_id="ml", org_id="acme", ts=time.time(),
                        cost_usd=0.25)
    await publish(nc.jetstream(), extra)
    await wait_spend(kv, "key", "k1", expected(k1 + extra, "daily", now), "daily")
    await wait_spend(kv, "org", "acme", sum(e.cost_usd for e in events + extra), "lifetime")

    # A budget given to k2 later is published without any new usage.
    await put_config(nc, keys=[key_record("k2", team="ml", org="acme", budget=5,
                                          period="weekly")])
    k2 = [e for e in events if e.key_id == "k2"]
    await wait_spend(kv, "key", "k2", expected(k2, "weekly", now), "weekly")


async def test_spend_never_goes_back_within_a_period(
        nc: NATS, pool: asyncpg.Pool, fresh_pg_dsn: str, services: Services) -> None:
    """A replica holding an older sum cannot overwrite a newer one (two
    replicas race on the same key)."""
    await put_config(nc, orgs=[OrgRecord(id="o", name="O", limits=Limits(max_budget=50))])
    events = make_events(4, org_id="o", cost_usd=0.5)
    await publish(nc.jetstream(), events)
    service = await services.start(fresh_pg_dsn)
    await wait_written(nc, pool, 4)
    kv = await nc.jetstream().key_value(SPEND_BUCKET)
    await wait_spend(kv, "org", "o", 2.0, "lifetime")
    # Another replica "wins" with a larger value that this one has not seen...
    bigger = Spend(period="lifetime", period_start=0.0, spend_usd=2.5, updated_at=time.time())
    await kv.put(spend_key("org", "o"), encode(bigger))
    # ...then this one recomputes its (older) sum: the larger value stays.
    assert service.spend is not None
    service.spend.mark([("org", "o")])
    await service.spend.flush()
    got = await spend_of(kv, "org", "o")
    assert got is not None and got.spend_usd == 2.5
    with contextlib.suppress(Exception):
        await kv.delete(spend_key("org", "o"))


async def test_spend_refresh_repairs_a_lost_record(
        nc: NATS, pool: asyncpg.Pool, fresh_pg_dsn: str, services: Services) -> None:
    """The periodic refresh (also what rolls periods over) puts back a
    record that went missing from KV, with no new usage."""
    await put_config(nc, teams=[TeamRecord(id="t", org_id="o", name="T",
                                           limits=Limits(max_budget=9, budget_period="daily"))])
    await publish(nc.jetstream(), make_events(3, team_id="t", cost_usd=0.125))
    await services.start(fresh_pg_dsn, spend_refresh_s=0.5)
    await wait_written(nc, pool, 3)
    kv = await nc.jetstream().key_value(SPEND_BUCKET)
    await wait_spend(kv, "team", "t", 0.375, "daily")
    await kv.delete(spend_key("team", "t"))
    await wait_spend(kv, "team", "t", 0.375, "daily")
