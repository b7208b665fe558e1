"""Started-but-not-finished requests (``usage_pending``, migration 007).

Inside the usage writer's batch transaction: a ``started`` event adds a
pending row (unless its request already has a raw row); a ``finished``
event first removes its pending row, then replaces a provisional raw row
(one the sweeper billed from the estimate) by taking it out of the rollups,
so the writer's usual insert adds the real values: the rollups change by
the difference, once, because a provisional row exists at most once.

Order matters against the sweeper (sweeper.py): the pending row is deleted
first, so a finished event waits for a sweep holding it, and its next
statement sees (and replaces) the provisional row that sweep committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from gandalf_common.contract import UsageStarted

if TYPE_CHECKING:
    import asyncpg

_ADD = """
INSERT INTO usage_pending (request_id, created_at, org_id, team_id, key_id, user_id, auth,
                           endpoint, model, stream, estimated_tokens, estimated_cost_usd)
SELECT i.request_id, to_timestamp(i.ts), i.org_id, i.team_id, i.key_id, i.user_id, i.auth,
       i.endpoint, i.model, i.stream, i.tokens, i.cost::numeric(18, 8)
  FROM unnest($1::text[], $2::float8[], $3::text[], $4::text[], $5::text[], $6::text[],
              $7::text[], $8::text[], $9::text[], $10::bool[], $11::int8[], $12::float8[])
       AS i(request_id, ts, org_id, team_id, key_id, user_id, auth, endpoint, model, stream,
            tokens, cost)
 -- A started event that comes after its finished one (retried from memory)
 -- has nothing left to wait for.
 WHERE NOT EXISTS (SELECT 1 FROM usage_records r WHERE r.request_id = i.request_id)
 ORDER BY i.request_id
ON CONFLICT (request_id) DO NOTHING
"""

_DIMS = "org_id, team_id, key_id, model, provider_id, period, bucket"
_SUMS = ("prompt_tokens", "completion_tokens", "cached_tokens", "total_tokens", "cost_usd")

# The provisional rows of these requests leave the raw rows and the rollups.
_UNSETTLE = f"""
WITH gone AS (
    DELETE FROM usage_records WHERE provisional AND request_id = ANY($1::text[])
    RETURNING created_at, COALESCE(org_id, '') AS org_id, COALESCE(team_id, '') AS team_id,
              COALESCE(key_id, '') AS key_id, model, provider_id, cached, {", ".join(_SUMS)}
), buckets AS (
    SELECT 'hourly' AS period, date_trunc('hour', created_at, 'UTC') AS bucket, * FROM gone
    UNION ALL
    SELECT 'daily' AS period, date_trunc('day', created_at, 'UTC') AS bucket, * FROM gone
)
INSERT INTO usage_rollups AS r ({_DIMS}, request_count, {", ".join(_SUMS)}, cached_count)
SELECT {_DIMS}, -count(*), {", ".join(f"-sum({c})" for c in _SUMS)},
       -count(*) FILTER (WHERE cached)
  FROM buckets GROUP BY {_DIMS} ORDER BY {_DIMS}
ON CONFLICT ({_DIMS}) DO UPDATE SET
    {", ".join(f"{c} = r.{c} + EXCLUDED.{c}" for c in ("request_count", *_SUMS, "cached_count"))}
RETURNING {_DIMS}, r.request_count
"""


async def add_started(conn: asyncpg.Connection, started: Sequence[UsageStarted]) -> None:
    if not started:
        return
    cols = [[getattr(s, name) for s in started] for name in (
        "request_id", "ts", "org_id", "team_id", "key_id", "user_id", "auth", "endpoint",
        "model", "stream", "estimated_tokens", "estimated_cost_usd")]
    await conn.execute(_ADD, *cols)


async def finish(conn: asyncpg.Connection, request_ids: list[str]) -> None:
    """Before the finished events of ``request_ids`` are inserted."""
    ids = sorted(set(request_ids))
    await conn.execute("DELETE FROM usage_pending WHERE request_id = ANY($1::text[])", ids)
    emptied = [r for r in await conn.fetch(_UNSETTLE, ids) if r["request_count"] == 0]
    if emptied:
        # A rollup row of no request is no row (the settled request may have
        # moved to another provider's row).
        await conn.executemany(
            "DELETE FROM usage_rollups WHERE org_id = $1 AND team_id = $2 AND key_id = $3 "
            "AND model = $4 AND provider_id = $5 AND period = $6 AND bucket = $7 "
            "AND request_count = 0", [tuple(r.values())[:7] for r in emptied])
