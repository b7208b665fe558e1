"""``gandalf usage export|replay`` are reachable through the main CLI."""

from __future__ import annotations

import subprocess
import sys

from gandalf_common.pg import migrate


async def test_gandalf_usage_export_through_the_main_cli(fresh_pg_dsn: str) -> None:
    await migrate(fresh_pg_dsn)
    import asyncpg

    conn = await asyncpg.connect(fresh_pg_dsn)
    try:
        await conn.execute(
            "INSERT INTO usage_records (request_id, org_id, key_id, model, total_tokens, "
            "cost_usd, created_at) VALUES ('r-1', 'acme', 'k1', 'm', 42, 0.25, "
            "'2026-06-01T12:00:00Z')")
    finally:
        await conn.close()
    done = subprocess.run(
        [sys.executable, "-m", "gandalf_app.cli", "usage", "export", "--from",
         "2026-06-01T00:00:00Z", "--to", "2026-06-02T00:00:00+00:00", "--format", "jsonl",
         "--database-url", fresh_pg_dsn], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert '"request_id":"r-1"' in line.replace(" ", "") and "0.25" in line


async def test_export_into_a_closed_pipe_stops_quietly(fresh_pg_dsn: str) -> None:
    """``gandalf usage export ... | head``: no traceback, no error line."""
    await migrate(fresh_pg_dsn)
    import asyncpg

    conn = await asyncpg.connect(fresh_pg_dsn)
    try:
        # More than a pipe buffer holds, so the writer meets the closed end.
        await conn.execute(
            "INSERT INTO usage_records (request_id, model, created_at) "
            "SELECT 'r-' || i, 'm', '2026-06-01T12:00:00Z'::timestamptz + i * interval '1 ms' "
            "FROM generate_series(1, 20000) AS i")
    finally:
        await conn.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gandalf_app.cli", "usage", "export", "--from",
         "2026-06-01T00:00:00Z", "--to", "2026-06-02T00:00:00Z", "--format", "csv",
         "--database-url", fresh_pg_dsn], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"id,request_id,")  # what `head -1` reads
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=60) == 141
    assert stderr == b""
