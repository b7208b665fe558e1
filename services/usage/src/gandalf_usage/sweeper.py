"""Bill requests whose ingress died: a ``usage_pending`` row (a started event
with no finished one) older than the deadline becomes a provisional raw row
from the admission estimate (status 0, error_class ``ingress_lost``,
estimated), with its rollups, in one transaction. A finished event that
comes later settles it (pending.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from gandalf_common.contract import UsageEvent

from . import metrics
from .writer import ROLLUP_LOCK_ID, WriteResult, write_provisional

if TYPE_CHECKING:
    import asyncpg

    from .db import UsageDatabase

log = logging.getLogger("gandalf.usage")

LOST: str = "ingress_lost"
BATCH = 500

_TAKE = """
DELETE FROM usage_pending WHERE request_id IN (
    SELECT request_id FROM usage_pending
     WHERE received_at < now() - make_interval(secs => $1)
     ORDER BY request_id LIMIT $2 FOR UPDATE SKIP LOCKED)
RETURNING request_id, extract(epoch FROM created_at)::float8 AS ts, org_id, team_id,
          key_id, user_id, auth, endpoint, model, stream, estimated_tokens,
          estimated_cost_usd::float8 AS cost
"""


async def sweep_once(conn: asyncpg.Connection, deadline_s: float,
                     limit: int = BATCH) -> WriteResult:
    """Turn up to ``limit`` overdue pending rows into provisional rows."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", ROLLUP_LOCK_ID)
        rows = await conn.fetch(_TAKE, deadline_s, limit)
        events = [UsageEvent(
            request_id=r["request_id"], ts=r["ts"], org_id=r["org_id"], team_id=r["team_id"],
            key_id=r["key_id"], user_id=r["user_id"], auth=r["auth"], endpoint=r["endpoint"],
            model=r["model"], stream=r["stream"], status=0, estimated=True,
            prompt_tokens=r["estimated_tokens"], total_tokens=r["estimated_tokens"],
            cost_usd=r["cost"], error_class=LOST) for r in rows]
        # A request that already has a row (a finished event written in a
        # race with its started one) keeps it: the insert skips conflicts.
        return await write_provisional(conn, events)


class Sweeper:
    def __init__(self, db: UsageDatabase, deadline_s: float,
                 on_written: Callable[[WriteResult], None] | None = None) -> None:
        self.db = db
        self.deadline_s = deadline_s
        #: Often enough that a lost request is billed soon after its deadline.
        self.every_s = min(max(deadline_s / 4, 0.2), 10.0)
        self._on_written = on_written

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                pool = await self.db.pool()
                async with pool.acquire() as conn:
                    while True:
                        result = await sweep_once(conn, self.deadline_s)
                        if result.inserted:
                            metrics.PROVISIONAL.inc(result.inserted)
                            log.warning("usage: %d request(s) billed from their started "
                                        "event (no finished event within %.0fs)",
                                        result.inserted, self.deadline_s)
                            if self._on_written is not None:
                                self._on_written(result)
                        if result.events < BATCH:
                            break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database comes back; so do we
                log.warning("usage: sweeping started events failed (%r); retrying", exc)
