"""The admin service's PostgreSQL store: a pool, read access and writes that
hold the replication lock (see :meth:`Store.locked`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import asyncpg

from gandalf_common.pg import connect_pool

from .pg_common import init_connection
from .pg_config import PgAuthSettingsRepo, PgProviderRepo, PgRouteRepo
from .pg_keys import PgKeyRepo
from .pg_orgs import PgOrgRepo, PgTeamRepo
from .ports import KeyFilter, Page, Repos
from .rows import KeyRow, OrgRow, ProviderRow, RouteRow, TargetRow, TeamRow

__all__ = ["REPLICATION_LOCK_ID", "KeyFilter", "KeyRow", "OrgRow", "Page", "PgRepos",
           "ProviderRow", "Repos", "RouteRow", "Store", "TargetRow", "TeamRow"]

log = logging.getLogger("gandalf.admin.store")

#: Session advisory lock held by every admin write from its transaction until
#: its KV publish is done, and by bootstrap + full sync. It orders KV writes
#: across replicas: a full sync never publishes a snapshot older than a write
#: that was published meanwhile, and two writes publish in commit order.
#: Admin writes are rare (people, not traffic), so serialising them is cheap.
REPLICATION_LOCK_ID = 0x67616E64616C6641  # "gandalfA"


class PgRepos:
    """Every repository bound to one connection."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.orgs = PgOrgRepo(conn)
        self.teams = PgTeamRepo(conn)
        self.keys = PgKeyRepo(conn)
        self.providers = PgProviderRepo(conn)
        self.routes = PgRouteRepo(conn)
        self.auth = PgAuthSettingsRepo(conn)


class Store:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, dsn: str, *, max_size: int = 10) -> Store:
        return cls(await connect_pool(dsn, min_size=1, max_size=max_size,
                                      init=init_connection))

    async def close(self) -> None:
        await self.pool.close()

    async def ping(self) -> None:
        await self.pool.fetchval("SELECT 1")

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[Repos]:
        async with self.pool.acquire() as conn:
            yield PgRepos(conn)

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection holding the replication lock until the block ends."""
        async with self.pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", REPLICATION_LOCK_ID)
            try:
                yield conn
            finally:
                try:
                    await conn.execute("SELECT pg_advisory_unlock($1)", REPLICATION_LOCK_ID)
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                    # Never hand a connection that may still hold the lock back
                    # to the pool: closing the session releases it server-side.
                    log.warning("cannot release the replication lock; dropping connection")
                    conn.terminate()
