"""Postgres helpers: schema migrations and pool creation.

asyncpg is imported inside the functions because only some services install it
(the `pg` extra of gandalf-common).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from .probe import endpoint_of, probe_async
from .startup import DEPENDENCY_WAIT_S, retry_until

if TYPE_CHECKING:
    import asyncpg

__all__ = ["MIGRATION_LOCK_ID", "Migration", "connect_once", "connect_pool", "load_migrations",
           "migrate"]

# Fixed key for pg_advisory_lock so concurrent starters serialise their migrations.
# Advisory locks are scoped to the current database, so separate databases don't contend.
MIGRATION_LOCK_ID = 0x67616E64616C66  # "gandalf" in ASCII

_FILE_RE = re.compile(r"^(\d{3})_[A-Za-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str  # file name without ".sql", e.g. "001_initial"
    sql: str


def load_migrations() -> list[Migration]:
    """All packaged `migrations/NNN_*.sql`, ordered by version."""
    root = resources.files("gandalf_common") / "migrations"
    found: dict[int, Migration] = {}
    for entry in root.iterdir():
        match = _FILE_RE.match(entry.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in found:
            raise RuntimeError(
                f"duplicate migration version {version}: {found[version].name} and {entry.name}"
            )
        found[version] = Migration(version, entry.name.removesuffix(".sql"), entry.read_text())
    return [found[v] for v in sorted(found)]


async def migrate(dsn: str, *, wait_s: float = DEPENDENCY_WAIT_S) -> list[str]:
    """Apply pending migrations, each in its own transaction; return the names applied now.

    Safe to call from several processes at once: all work happens under a session-level
    advisory lock, so later callers wait and then find nothing left to do.
    """
    import asyncpg

    migrations = load_migrations()
    conn = await connect_once(dsn, wait_s=wait_s)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        try:
            await conn.execute(
                """
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    version    int PRIMARY KEY,
                    name       text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )
                """
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            applied: list[str] = []
            for m in migrations:
                if m.version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(m.sql)  # no args: simple protocol, multi-statement OK
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        m.version,
                        m.name,
                    )
                applied.append(m.name)
            return applied
        finally:
            # Closing the session would release it too; unlocking keeps it explicit, and a
            # failure here must not mask the original error.
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    finally:
        await conn.close()


async def connect_once(dsn: str, *, wait_s: float = DEPENDENCY_WAIT_S) -> asyncpg.Connection:
    """One connection, waiting up to ``wait_s`` for the server to come up
    (each try a bounded TCP probe, then a bounded connect); raises
    :class:`DependencyUnavailableError` naming the address."""
    import asyncpg

    where = endpoint_of(dsn)

    async def attempt() -> asyncpg.Connection:
        reason = await probe_async(dsn, timeout=2.0)
        if reason is not None:
            raise ConnectionError(f"cannot connect to PostgreSQL: {reason}")
        try:
            return await asyncpg.connect(dsn, timeout=5)
        except (OSError, TimeoutError, asyncpg.CannotConnectNowError) as exc:
            raise ConnectionError(f"cannot connect to PostgreSQL at {where}: {exc}") from None

    return await retry_until("postgres", attempt, wait_s=wait_s)


async def connect_pool(
    dsn: str, min_size: int = 1, max_size: int = 10, *, wait_s: float = DEPENDENCY_WAIT_S,
    **kwargs: Any
) -> asyncpg.Pool:
    """Create an asyncpg pool; extra keyword arguments go to `asyncpg.create_pool`."""
    import asyncpg

    await (await connect_once(dsn, wait_s=wait_s)).close()  # wait for the server, boundedly
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, **kwargs)
    assert pool is not None  # create_pool only returns None when awaited lazily
    return pool
