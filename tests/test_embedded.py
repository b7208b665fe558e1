"""Embedded NATS/Postgres, the state-dir lock and schema migrations."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import asyncpg
import nats
import pytest

from gandalf_app.embedded import (
    NATS_MEMORY_LIMIT,
    PG_SETTINGS,
    AlreadyRunningError,
    EmbeddedNats,
    EmbeddedPostgres,
    EmbeddedServerError,
    StateDirLock,
    find_nats_server_binary,
)
from gandalf_common.pg import connect_pool, load_migrations, migrate

EXPECTED_TABLES = {
    "schema_migrations",
    "organizations",
    "teams",
    "providers",
    "api_keys",
    "routes",
    "usage_records",
    "usage_rollups",
}


async def _tables(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
    finally:
        await conn.close()
    return [r["table_name"] for r in rows]


# --------------------------------------------------------------------------- NATS


def test_find_nats_server_binary() -> None:
    path = find_nats_server_binary()
    assert os.access(path, os.X_OK)
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=True)
    assert "nats-server" in out.stdout


async def test_embedded_nats_jetstream_and_max_payload(own_nats: EmbeddedNats) -> None:
    assert own_nats.pid is not None
    assert own_nats.url.startswith("nats://127.0.0.1:")
    assert own_nats.port > 0
    nc = await nats.connect(own_nats.url)
    try:
        assert nc.max_payload == 8 * 1024 * 1024
        # Past the 1 MiB default to prove the raised limit is really in force.
        big = os.urandom(2 * 1024 * 1024)
        sub = await nc.subscribe("big")
        await nc.publish("big", big)
        msg = await sub.next_msg(timeout=5)
        assert msg.data == big

        js = nc.jetstream()
        await js.add_stream(name="T", subjects=["t.>"])
        ack = await js.publish("t.one", b"hello")
        assert ack.stream == "T" and ack.seq == 1
        got = await js.get_msg("T", 1)
        assert got.data == b"hello"
    finally:
        await nc.close()
    # The store lives where we asked for it.
    assert (own_nats.store_dir / "jetstream").is_dir()


async def test_embedded_nats_restart_keeps_stream_and_port(own_nats: EmbeddedNats) -> None:
    url, port, pid = own_nats.url, own_nats.port, own_nats.pid
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="KEEP", subjects=["keep.>"])
    for i in range(5):
        await js.publish(f"keep.{i}", f"m{i}".encode())
    await nc.close()

    assert own_nats.restart() == url
    assert own_nats.port == port
    assert own_nats.pid is not None and own_nats.pid != pid

    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info("KEEP")
        assert info.state.messages == 5
        assert (await nc.jetstream().get_msg("KEEP", 5)).data == b"m4"
    finally:
        await nc.close()


async def test_session_nats_has_jetstream(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().account_info()
        assert info.limits is not None
    finally:
        await nc.close()


def test_embedded_nats_stop_and_context_manager(tmp_path: Path) -> None:
    with EmbeddedNats(tmp_path / "n") as server:
        pid = server.pid
        assert pid is not None
        port = server.port
        # The Go runtime's soft memory limit (the environment's own value wins).
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        limit = os.environ.get("GOMEMLIMIT", NATS_MEMORY_LIMIT)
        assert f"GOMEMLIMIT={limit}".encode() in environ
    assert server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # really gone (reaped), not just detached
    # The port is free again.
    out = subprocess.run(
        [sys.executable, "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}))"],
        capture_output=True,
    )
    assert out.returncode != 0


def test_embedded_nats_start_failure_shows_log(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = EmbeddedNats(tmp_path / "n", port=busy.getsockname()[1])
        with pytest.raises(EmbeddedServerError) as err:
            server.start(timeout=5)
    assert "exited with code" in str(err.value)
    assert "address already in use" in str(err.value)
    assert server.pid is None


# --------------------------------------------------------------------------- lock


def test_state_dir_lock_conflicts_and_releases(tmp_path: Path) -> None:
    lock = StateDirLock(tmp_path)
    lock.acquire()
    try:
        assert (tmp_path / "gandalf.lock").read_text().strip() == str(os.getpid())

        # A second open file description in this process conflicts too.
        with pytest.raises(AlreadyRunningError) as err:
            StateDirLock(tmp_path).acquire()
        assert str(err.value) == (
            f"another gandalf is already running with state dir {tmp_path} (pid {os.getpid()})"
        )

        # And a separate process sees our pid.
        script = textwrap.dedent(
            f"""
            from pathlib import Path
            from gandalf_app.embedded import AlreadyRunningError, StateDirLock
            try:
                StateDirLock(Path({str(tmp_path)!r})).acquire()
            except AlreadyRunningError as exc:
                print("BLOCKED", exc)
            else:
                print("ACQUIRED")
            """
        )
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        )
        assert out.stdout.startswith("BLOCKED")
        assert f"(pid {os.getpid()})" in out.stdout
    finally:
        lock.release()

    # Once released, someone else can take it.
    with StateDirLock(tmp_path) as again:
        assert again.held


def test_state_dir_lock_freed_when_holder_dies(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from gandalf_app.embedded import StateDirLock
        StateDirLock(Path({str(tmp_path)!r})).acquire()
        os._exit(0)  # no release(): the kernel must drop the flock
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    assert (tmp_path / "gandalf.lock").read_text().strip().isdigit()  # stale pid left behind
    with StateDirLock(tmp_path) as lock:
        assert lock.held


# --------------------------------------------------------------------------- Postgres


ALL_MIGRATIONS = ["001_initial", "002_governance", "003_admin", "004_usage",
                  "005_key_parent", "006_provider_endpoint", "007_usage_pending"]


def test_migrations_are_packaged_in_order() -> None:
    migrations = load_migrations()
    assert migrations[0].version == 1 and migrations[0].name == "001_initial"
    assert [m.version for m in migrations] == sorted(m.version for m in migrations)


@pytest.mark.slow
async def test_embedded_postgres_start_and_migrate(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "state")
    try:
        dsn = await asyncio.to_thread(server.start)
        assert "/gandalf" in dsn
        assert await migrate(dsn) == ALL_MIGRATIONS
        assert set(await _tables(dsn)) >= EXPECTED_TABLES
        pool = await connect_pool(dsn, max_size=2)
        try:
            assert await pool.fetchval("SELECT current_database()") == "gandalf"
            # Sized for a laptop: every setting this server knows is applied.
            known = await pool.fetch("SELECT name, current_setting(name) AS value "
                                     "FROM pg_settings WHERE name = ANY($1::text[])",
                                     list(PG_SETTINGS))
            assert {r["name"]: r["value"] for r in known} == {
                n: v for n, v in PG_SETTINGS.items() if n in {r["name"] for r in known}}
            assert "shared_buffers" in {r["name"] for r in known}
            name = await pool.fetchval("SELECT name FROM organizations WHERE id = 'default'")
            assert name == "Default Organization"
        finally:
            await pool.close()
        # start() is idempotent while running and the database is kept.
        assert await asyncio.to_thread(server.start) == dsn
    finally:
        await asyncio.to_thread(server.stop)
    with pytest.raises((OSError, asyncpg.PostgresError)):
        await asyncpg.connect(dsn, timeout=2)


async def test_migrate_is_idempotent(fresh_pg_dsn: str) -> None:
    assert await migrate(fresh_pg_dsn) == ALL_MIGRATIONS
    assert await migrate(fresh_pg_dsn) == []
    conn = await asyncpg.connect(fresh_pg_dsn)
    try:
        rows = await conn.fetch("SELECT version, name FROM schema_migrations")
        assert [r["name"] for r in rows] == ALL_MIGRATIONS
        # The seed ran exactly once.
        assert await conn.fetchval("SELECT count(*) FROM organizations") == 1
    finally:
        await conn.close()


async def test_concurrent_migrate(pg_dsn: str) -> None:
    results = await asyncio.gather(migrate(pg_dsn), migrate(pg_dsn))
    applied = [name for r in results for name in r]
    # pg_dsn is a fresh session database, but another test may have migrated it first.
    assert applied in ([], ALL_MIGRATIONS)
    tables = await _tables(pg_dsn)
    assert sorted(tables) == sorted(set(tables))
    assert set(tables) >= EXPECTED_TABLES


async def test_concurrent_migrate_from_scratch(fresh_pg_dsn: str) -> None:
    results = await asyncio.gather(*(migrate(fresh_pg_dsn) for _ in range(4)))
    assert sorted(results) == [[], [], [], ALL_MIGRATIONS]
    assert set(await _tables(fresh_pg_dsn)) >= EXPECTED_TABLES


async def test_schema_constraints(fresh_pg_dsn: str) -> None:
    await migrate(fresh_pg_dsn)
    conn = await asyncpg.connect(fresh_pg_dsn)
    try:
        cols = {
            r["column_name"]
            for r in await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name='providers'"
            )
        }
        assert not {c for c in cols if "key" in c}  # no provider credentials in the DB
        await conn.execute("INSERT INTO usage_records (request_id) VALUES ('r1')")
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("INSERT INTO usage_records (request_id) VALUES ('r1')")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO usage_rollups (period, bucket) VALUES ('weekly', now())"
            )
        await conn.execute("INSERT INTO teams (id, org_id, name) VALUES ('t', 'default', 'T')")
        await conn.execute(
            "INSERT INTO api_keys (id, key_hash, key_prefix, org_id, team_id)"
            " VALUES ('k', 'h', 'gw-', 'default', 't')"
        )
        await conn.execute("DELETE FROM teams WHERE id = 't'")
        row = await conn.fetchrow("SELECT team_id, role, blocked FROM api_keys WHERE id = 'k'")
        assert (row["team_id"], row["role"], row["blocked"]) == (None, "member", False)
        await conn.execute("DELETE FROM organizations WHERE id = 'default'")
        assert await conn.fetchval("SELECT count(*) FROM api_keys") == 0
    finally:
        await conn.close()
