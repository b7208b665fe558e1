"""The usage service's PostgreSQL: a pool opened lazily (the service starts,
and usage waits in JetStream, while the database is down), the schema
migrated once, batch writes and spend sums."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from gandalf_common.contract import UsageEvent, UsageStarted
from gandalf_common.pg import connect_pool, migrate

from .writer import WriteResult, write_batch

if TYPE_CHECKING:
    import asyncpg

#: A statement that takes longer fails and is retried (a hung server must not
#: hold a batch forever).
COMMAND_TIMEOUT_S = 30.0
#: Spend scopes per query (the arrays stay small, the plan stays an index scan).
SPEND_CHUNK = 1000

# Sum of the daily rollups since each scope's period start; one lateral
# sub-select per scope so each uses its (<dim>, bucket) WHERE daily index.
_SPEND_SQL = """
SELECT 'key' AS scope, s.id, s.since, (
    SELECT COALESCE(sum(cost_usd), 0)::float8 FROM usage_rollups
    WHERE period = 'daily' AND key_id = s.id AND bucket >= s.since) AS spend
FROM unnest($1::text[], $2::timestamptz[]) AS s(id, since)
UNION ALL
SELECT 'team', s.id, s.since, (
    SELECT COALESCE(sum(cost_usd), 0)::float8 FROM usage_rollups
    WHERE period = 'daily' AND team_id = s.id AND bucket >= s.since)
FROM unnest($3::text[], $4::timestamptz[]) AS s(id, since)
UNION ALL
SELECT 'org', s.id, s.since, (
    SELECT COALESCE(sum(cost_usd), 0)::float8 FROM usage_rollups
    WHERE period = 'daily' AND org_id = s.id AND bucket >= s.since)
FROM unnest($5::text[], $6::timestamptz[]) AS s(id, since)
"""

#: (scope: key | team | org, id, start of its period)
SpendQuery = tuple[str, str, datetime]


class UsageDatabase:
    def __init__(self, dsn: str, *, max_size: int = 4) -> None:
        self.dsn = dsn
        self.max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def pool(self, wait_s: float = 2.0) -> asyncpg.Pool:
        """The pool, created (after migrating) on first use; raises while the
        database is unreachable, and the caller retries."""
        if self._pool is not None:
            return self._pool
        async with self._lock:
            if self._pool is None:
                # Advisory-locked: safe beside the admin service. No long wait:
                # the consumer retries, with its events safe in the stream.
                await migrate(self.dsn, wait_s=wait_s)
                self._pool = await connect_pool(self.dsn, min_size=1, max_size=self.max_size,
                                                wait_s=wait_s,
                                                command_timeout=COMMAND_TIMEOUT_S, timeout=5)
        return self._pool

    async def write(self, events: Sequence[UsageEvent],
                    started: Sequence[UsageStarted] = ()) -> WriteResult:
        pool = await self.pool()
        async with pool.acquire() as conn:
            return await write_batch(conn, events, started)

    async def spend(self, queries: Sequence[SpendQuery]) -> dict[tuple[str, str], float]:
        """Spend of each (scope, id) since its start (one round trip per chunk)."""
        out: dict[tuple[str, str], float] = {}
        pool = await self.pool()
        for i in range(0, len(queries), SPEND_CHUNK):
            chunk = queries[i:i + SPEND_CHUNK]
            args: list[list[object]] = []
            for scope in ("key", "team", "org"):
                part = [(ident, since) for s, ident, since in chunk if s == scope]
                args += [[p[0] for p in part], [p[1] for p in part]]
            for row in await pool.fetch(_SPEND_SQL, *args):
                out[(row["scope"], row["id"])] = row["spend"]
        return out

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=5)
            except Exception:  # noqa: BLE001 - closing anyway
                pool.terminate()
