"""Usage queries in PostgreSQL (asyncpg adapter of ``UsageRepo``).

Times are ``timestamptz``, so ``since``/``until`` compare as instants
whatever offset the client wrote (the original compared RFC 3339 strings).
Only the conditions that are set reach the SQL, so the planner can use the
``(org_id, created_at)``, ``(key_id, created_at)`` and ``created_at``
indexes.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from .pg_common import to_rows
from .ports import Page
from .usage_ports import (
    RECORD_COLUMNS,
    ROLLUP_COLUMNS,
    UsageFilter,
    UsageRecordRow,
    UsageRollupRow,
)

_RECORDS = f"SELECT {', '.join(RECORD_COLUMNS)} FROM usage_records"
_ROLLUPS = f"SELECT {', '.join(ROLLUP_COLUMNS)} FROM usage_rollups"


def where_clause(f: UsageFilter, *, rollups: bool, args: list[Any]) -> str:
    """`` WHERE ...`` for ``f`` (or ""), appending the parameters to ``args``."""
    clauses: list[str] = []

    def mark(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    time_col = "bucket" if rollups else "created_at"
    for column, value in (("org_id", f.org_id), ("team_id", f.team_id),
                          ("key_id", f.key_id), ("model", f.model),
                          ("provider_id", f.provider)):
        if value is not None:
            clauses.append(f"{column} = {mark(value)}")
    if not rollups:
        if f.status_min is not None:
            clauses.append(f"status_code >= {mark(f.status_min)}")
        if f.status_max is not None:
            clauses.append(f"status_code <= {mark(f.status_max)}")
    if f.since is not None:
        clauses.append(f"{time_col} >= {mark(f.since)}")
    if f.until is not None:
        clauses.append(f"{time_col} < {mark(f.until)}")
    if f.owned_only:
        owners: list[str] = []
        if f.owner_key_id:
            owners.append(f"key_id = {mark(f.owner_key_id)}")
        if f.owner_user_id:
            if rollups:
                # Rollups are per key: the user's keys (in the caller's org,
                # which the org condition above already demands).
                owners.append("key_id IN (SELECT id FROM api_keys WHERE user_id = "
                              f"{mark(f.owner_user_id)})")
            else:
                owners.append(f"user_id = {mark(f.owner_user_id)}")
        clauses.append("(" + " OR ".join(owners) + ")" if owners else "false")
    return " WHERE " + " AND ".join(clauses) if clauses else ""


class PgUsageRepo:
    """Read-only; each call takes one pooled connection."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def records(self, where: UsageFilter, page: Page
                      ) -> tuple[list[UsageRecordRow], int]:
        args: list[Any] = []
        cond = where_clause(where, rollups=False, args=args)
        n = len(args)
        async with self._pool.acquire() as conn, conn.transaction(
                isolation="repeatable_read", readonly=True):
            # One snapshot: the page and its total agree while the usage
            # service keeps inserting.
            recs = await conn.fetch(
                f"{_RECORDS}{cond} ORDER BY created_at DESC, id DESC "
                f"LIMIT ${n + 1} OFFSET ${n + 2}", *args, page.limit, page.offset)
            total = await conn.fetchval(f"SELECT count(*) FROM usage_records{cond}", *args)
        return to_rows(recs, UsageRecordRow), total

    async def rollups(self, where: UsageFilter, period: str, limit: int
                      ) -> list[UsageRollupRow]:
        args: list[Any] = [period]
        cond = where_clause(where, rollups=True, args=args)
        cond = (cond + " AND" if cond else " WHERE") + " period = $1"
        recs = await self._pool.fetch(
            f"{_ROLLUPS}{cond} ORDER BY bucket DESC, org_id, team_id, key_id, model, "
            f"provider_id LIMIT ${len(args) + 1}", *args, limit)
        return to_rows(recs, UsageRollupRow)
