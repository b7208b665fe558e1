"""One batch of usage events -> one transaction: raw rows, then hourly and
daily rollups of exactly the rows that were new.

Why this is exactly once: ``usage_records.request_id`` is UNIQUE and the raw
insert is ``ON CONFLICT (request_id) DO NOTHING ... RETURNING``, so a
redelivered, replayed or re-published event returns no row; the rollups are
built only from the returned rows, in the same statement and transaction, so
a rollup changes if and only if its raw row was inserted. Concurrent writers
holding the same request id serialise on the unique index (the second one
waits for the first to commit, then skips). Rows are inserted and rollups
upserted in key order, so two writers always take locks in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gandalf_common.contract import UsageEvent, UsageStarted

from . import pending

if TYPE_CHECKING:
    import asyncpg

# (column in `incoming`, array type, value of an event)
_INPUT: list[tuple[str, str, Callable[[UsageEvent], Any]]] = [
    ("request_id", "text", lambda e: e.request_id),
    ("ts", "float8", lambda e: e.ts),
    ("org_id", "text", lambda e: e.org_id),
    ("team_id", "text", lambda e: e.team_id),
    ("key_id", "text", lambda e: e.key_id),
    ("user_id", "text", lambda e: e.user_id),
    ("auth", "text", lambda e: e.auth),
    ("endpoint", "text", lambda e: e.endpoint),
    ("model", "text", lambda e: e.model),
    ("provider", "text", lambda e: e.provider),
    ("provider_model", "text", lambda e: e.provider_model),
    ("status", "int4", lambda e: e.status),
    ("stream", "bool", lambda e: e.stream),
    ("cached", "bool", lambda e: e.cached),
    ("coalesced", "bool", lambda e: e.coalesced),
    ("estimated", "bool", lambda e: e.estimated),
    ("prompt_tokens", "int8", lambda e: e.prompt_tokens),
    ("completion_tokens", "int8", lambda e: e.completion_tokens),
    ("cached_tokens", "int8", lambda e: e.cached_tokens),
    ("total_tokens", "int8", lambda e: e.total_tokens),
    ("cost_usd", "float8", lambda e: e.cost_usd),
    ("latency_ms", "int4", lambda e: e.latency_ms),
    ("ttft_ms", "int4", lambda e: e.ttft_ms),
    ("error_class", "text", lambda e: e.error_class),
]

# usage_records column <- expression over `incoming`. Empty ids are stored
# as NULL in the raw rows ("none"); the rollups use '' (see 001_initial.sql).
_RAW: list[tuple[str, str]] = [
    ("request_id", "request_id"),
    ("created_at", "to_timestamp(ts)"),
    ("org_id", "NULLIF(org_id, '')"),
    ("team_id", "NULLIF(team_id, '')"),
    ("key_id", "NULLIF(key_id, '')"),
    ("user_id", "NULLIF(user_id, '')"),
    ("caller_jwt_sub", "CASE WHEN auth = 'jwt' THEN NULLIF(user_id, '') END"),
    ("auth", "auth"),
    ("endpoint", "endpoint"),
    ("model", "model"),
    ("provider_id", "provider"),
    ("provider_model", "provider_model"),
    ("status_code", "status"),
    ("stream", "stream"),
    ("cached", "cached"),
    ("coalesced", "coalesced"),
    ("estimated", "estimated"),
    ("prompt_tokens", "prompt_tokens"),
    ("completion_tokens", "completion_tokens"),
    ("cached_tokens", "cached_tokens"),
    ("total_tokens", "total_tokens"),
    ("cost_usd", "cost_usd::numeric(18, 8)"),
    ("latency_ms", "latency_ms"),
    ("ttft_ms", "ttft_ms"),
    ("error_class", "NULLIF(error_class, '')"),
    ("provisional", f"${len(_INPUT) + 1}::bool"),
]

_DIMS = "org_id, team_id, key_id, model, provider_id, period, bucket"
_SUMS = ("prompt_tokens", "completion_tokens", "cached_tokens", "total_tokens", "cost_usd")


def _build_sql() -> str:
    arrays = ", ".join(f"${i}::{typ}[]" for i, (_n, typ, _f) in enumerate(_INPUT, start=1))
    names = ", ".join(n for n, _t, _f in _INPUT)
    raw_cols = ", ".join(c for c, _e in _RAW)
    raw_exprs = ", ".join(e for _c, e in _RAW)
    sums = ", ".join(f"sum({c})" for c in _SUMS)
    updates = ",\n            ".join(
        f"{c} = r.{c} + EXCLUDED.{c}" for c in ("request_count", *_SUMS, "cached_count"))
    # The rollup buckets: UTC hour and day of the event time (date_trunc's
    # third argument, so the session time zone cannot shift them).
    return f"""
WITH incoming AS (
    -- A request id twice in one batch is written once; sorted, so every
    -- writer locks index entries in the same order.
    SELECT DISTINCT ON (request_id) *
    FROM unnest({arrays}) AS t({names})
    ORDER BY request_id
), inserted AS (
    INSERT INTO usage_records ({raw_cols})
    SELECT {raw_exprs} FROM incoming ORDER BY request_id
    ON CONFLICT (request_id) DO NOTHING
    RETURNING created_at, COALESCE(org_id, '') AS org_id, COALESCE(team_id, '') AS team_id,
              COALESCE(key_id, '') AS key_id, model, provider_id, cached,
              {", ".join(_SUMS)}
), buckets AS (
    SELECT 'hourly' AS period, date_trunc('hour', created_at, 'UTC') AS bucket, *
    FROM inserted
    UNION ALL
    SELECT 'daily' AS period, date_trunc('day', created_at, 'UTC') AS bucket, *
    FROM inserted
), rolled AS (
    INSERT INTO usage_rollups AS r ({_DIMS}, request_count, {", ".join(_SUMS)}, cached_count)
    SELECT {_DIMS}, count(*), {sums}, count(*) FILTER (WHERE cached)
    FROM buckets
    GROUP BY {_DIMS}
    ORDER BY {_DIMS}
    ON CONFLICT ({_DIMS}) DO UPDATE SET
            {updates}
)
SELECT org_id, team_id, key_id, count(*) AS n FROM inserted GROUP BY org_id, team_id, key_id
"""


WRITE_SQL = _build_sql()

#: Every batch holds this advisory lock SHARED for its transaction. A job
#: that rebuilds rollups from the raw rows (a replay deleting and re-summing
#: buckets) takes it EXCLUSIVE (``pg_advisory_xact_lock``), so no live batch
#: can commit between its delete and its re-insert and be counted twice.
ROLLUP_LOCK_ID = 0x7573616765  # "usage" in ASCII


@dataclass(slots=True)
class WriteResult:
    """What one committed batch changed."""

    #: Events of the batch (in-batch duplicates included).
    events: int = 0
    #: New raw rows.
    inserted: int = 0
    #: Ids of keys, teams and orgs that got new rows ('' excluded).
    keys: set[str] = field(default_factory=set)
    teams: set[str] = field(default_factory=set)
    orgs: set[str] = field(default_factory=set)

    @property
    def duplicates(self) -> int:
        return self.events - self.inserted

    def add_rows(self, rows: Sequence[Any]) -> None:
        """The write statement's rows: new raw rows per key, team and org."""
        for row in rows:
            self.inserted += row["n"]
            for ident, into in ((row["key_id"], self.keys), (row["team_id"], self.teams),
                                (row["org_id"], self.orgs)):
                if ident:
                    into.add(ident)

    def merge(self, other: WriteResult) -> None:
        self.events += other.events
        self.inserted += other.inserted
        self.keys |= other.keys
        self.teams |= other.teams
        self.orgs |= other.orgs


def columns(events: Sequence[UsageEvent]) -> list[list[Any]]:
    """The events as one array per input column (the statement's arguments)."""
    return [[get(e) for e in events] for _n, _t, get in _INPUT]


async def write_batch(conn: asyncpg.Connection, events: Sequence[UsageEvent],
                      started: Sequence[UsageStarted] = ()) -> WriteResult:
    """Write ``events`` (and the ``started`` events, pending.py) in one
    transaction; return what was new."""
    result = WriteResult(events=len(events))
    if not events and not started:
        return result
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", ROLLUP_LOCK_ID)
        await pending.add_started(conn, started)
        if not events:
            return result
        await pending.finish(conn, [e.request_id for e in events])
        rows = await conn.fetch(WRITE_SQL, *columns(events), False)
    result.add_rows(rows)
    return result


async def write_provisional(conn: asyncpg.Connection,
                            events: Sequence[UsageEvent]) -> WriteResult:
    """Rows billed from started events (sweeper.py), inside its transaction."""
    result = WriteResult(events=len(events))
    if events:
        result.add_rows(await conn.fetch(WRITE_SQL, *columns(events), True))
    return result
