"""``gandalf usage replay`` and ``gandalf usage export`` on real JetStream and
PostgreSQL.

The USAGE stream lives on a private NATS server (module-scoped), recreated
by every test with ``ensure_usage_stream``, so the shared system stream is
never touched. Events carry request times (``ts``) of a past UTC day ``D``
although they are published now: the time windows apply to ``ts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS

from gandalf_app.embedded import EmbeddedNats
from gandalf_common.bus import connect
from gandalf_common.contract import USAGE_STREAM, USAGE_SUBJECT, UsageEvent, usage_json_encode
from gandalf_common.pg import migrate
from gandalf_common.usage_stream import ensure_usage_stream
from gandalf_usage import cli
from gandalf_usage.export import COLUMNS, OPTIONAL_COLUMNS

#: A past UTC day, so every hourly and daily bucket of it is complete.
D = (datetime.now(UTC) - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
H = timedelta(hours=1)
ROLLUP_COLS = ("period", "bucket", "org_id", "team_id", "key_id", "model", "provider_id",
               "request_count", "prompt_tokens", "completion_tokens", "cached_tokens",
               "total_tokens", "cost_usd", "cached_count")


def ts(at: datetime) -> float:
    return at.timestamp()


def ev(rid: str, at: datetime, *, org: str = "acme", team: str = "t1", key: str = "k1",
       model: str = "gpt-4o", provider: str = "openai", prompt: int = 10,
       completion: int = 5, cost: float = 0.0125, cached: bool = False,
       status: int = 200, user: str = "") -> UsageEvent:
    return UsageEvent(request_id=rid, ts=ts(at), org_id=org, team_id=team, key_id=key,
                      user_id=user, auth="apikey", endpoint="chat", model=model,
                      provider=provider, provider_model=f"{model}-2025", status=status,
                      cached=cached, prompt_tokens=prompt, completion_tokens=completion,
                      total_tokens=prompt + completion, cost_usd=cost, latency_ms=120,
                      error_class="" if status < 400 else "upstream_error")


#: In publishing order (roughly by time, as the ingress publishes them).
EVENTS = [
    ev("r-before", D - timedelta(minutes=30)),  # the day before D
    ev("r00a", D + timedelta(minutes=5)),
    ev("r00b", D + timedelta(minutes=40), key="k2", user="alice", cost=0.1),
    ev("r03", D + 3 * H + timedelta(minutes=1), model="claude", provider="anthropic",
       prompt=100, completion=50, cost=0.003),
    ev("r10a", D + 10 * H + timedelta(minutes=10)),
    ev("r10b", D + 10 * H + timedelta(minutes=20), cached=True, prompt=0, completion=0,
       cost=0.0),
    ev("r10c", D + 10 * H + timedelta(minutes=59, seconds=59), org="beta", team="",
       key="kb", status=502),
    ev("r12", D + 12 * H + timedelta(minutes=30), team="", cost=1.5),
    ev("r23", D + 23 * H + timedelta(minutes=59)),
    ev("r-after", D + 25 * H),  # the next day, an hour after D ends
]
#: Published again without a Nats-Msg-Id (a retry after the dedup window).
DUPLICATE = EVENTS[4]


@pytest.fixture(scope="module")
def usage_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private NATS with JetStream for this module's USAGE streams."""
    server = EmbeddedNats(tmp_path_factory.mktemp("usage-nats"))
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


@pytest_asyncio.fixture
async def nc(usage_nats: str) -> AsyncIterator[NATS]:
    """A connection to a fresh USAGE stream."""
    conn = await connect(usage_nats, "usage-replay-test")
    js = conn.jetstream()
    with contextlib.suppress(Exception):
        await js.delete_stream(USAGE_STREAM)
    await ensure_usage_stream(conn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest_asyncio.fixture
async def db(fresh_pg_dsn: str) -> str:
    """A fresh, migrated database."""
    await migrate(fresh_pg_dsn)
    return fresh_pg_dsn


async def publish(nc: NATS, events: list[UsageEvent], *, dedup: bool = True) -> list[int]:
    js = nc.jetstream()
    seqs = []
    for e in events:
        headers = {"Nats-Msg-Id": e.request_id} if dedup else None
        ack = await js.publish(USAGE_SUBJECT, usage_json_encode(e), headers=headers)
        seqs.append(ack.seq)
    return seqs


async def publish_all(nc: NATS) -> list[int]:
    seqs = await publish(nc, EVENTS)
    seqs += await publish(nc, [DUPLICATE], dedup=False)
    ack = await nc.jetstream().publish(USAGE_SUBJECT, b"{not json")
    return [*seqs, ack.seq]


async def usage(argv: list[str], dsn: str, url: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    extra = ["--database-url", dsn]
    if argv[0] == "replay":
        extra += ["--nats-url", url]
    code = await cli.run([*argv, *extra], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


async def fetch(dsn: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [dict(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


async def execute(dsn: str, sql: str, *args: Any) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.execute(sql, *args)
    finally:
        await conn.close()


async def rollups(dsn: str) -> list[tuple[Any, ...]]:
    rows = await fetch(dsn, f"SELECT {', '.join(ROLLUP_COLS)} FROM usage_rollups "
                            f"ORDER BY {', '.join(ROLLUP_COLS[:7])}")
    return [tuple(r.values()) for r in rows]


async def raw(dsn: str) -> list[tuple[Any, ...]]:
    rows = await fetch(dsn, "SELECT * FROM usage_records ORDER BY request_id")
    return [tuple(r.values()) for r in rows]


def expected_rollups(events: list[UsageEvent]) -> list[tuple[Any, ...]]:
    """Independent of the code under test: plain sums per bucket."""
    out: dict[tuple[Any, ...], list[Any]] = {}
    for e in events:
        at = datetime.fromtimestamp(e.ts, UTC)
        for period, bucket in (("hourly", at.replace(minute=0, second=0, microsecond=0)),
                               ("daily", at.replace(hour=0, minute=0, second=0,
                                                    microsecond=0))):
            key = (period, bucket, e.org_id, e.team_id, e.key_id, e.model, e.provider)
            acc = out.setdefault(key, [0, 0, 0, 0, 0, Decimal(0), 0])
            for i, v in enumerate((1, e.prompt_tokens, e.completion_tokens, e.cached_tokens,
                                   e.total_tokens, Decimal(repr(e.cost_usd)),
                                   int(e.cached))):
                acc[i] += v
    return sorted((*k, *v) for k, v in out.items())


# ------------------------------------------------------------------ replay


async def test_replay_fills_an_empty_database_and_is_idempotent(nc: NATS, db: str,
                                                                usage_nats: str) -> None:
    seqs = await publish_all(nc)
    code, out, err = await usage(["replay", "--from", "1"], db, usage_nats)
    assert code == 0, err
    assert f"read {len(seqs)} messages (sequences 1..{seqs[-1]}), {len(EVENTS)} requests" in out
    assert "skipped 1 duplicate request ids, 0 outside the time window, 1 malformed" in out
    assert f"inserted {len(EVENTS)} raw rows (0 already present)" in out

    rows = await fetch(db, "SELECT * FROM usage_records WHERE request_id = 'r00b'")
    assert len(rows) == 1
    r = rows[0]
    assert (r["org_id"], r["team_id"], r["key_id"], r["user_id"]) == ("acme", "t1", "k2",
                                                                        "alice")
    assert (r["model"], r["provider_id"], r["provider_model"]) == ("gpt-4o", "openai",
                                                                   "gpt-4o-2025")
    assert r["created_at"] == D + timedelta(minutes=40)
    assert r["cost_usd"] == Decimal("0.1") and r["total_tokens"] == 15
    beta = (await fetch(db, "SELECT * FROM usage_records WHERE request_id = 'r10c'"))[0]
    assert beta["team_id"] is None and beta["status_code"] == 502
    assert beta["error_class"] == "upstream_error"

    before_raw, before_rollups = await raw(db), await rollups(db)
    assert before_rollups == expected_rollups(EVENTS)
    periods = {r[0] for r in before_rollups}
    assert periods == {"hourly", "daily"}

    # Twice: nothing changes (not even the raw rows' ids).
    code, out, err = await usage(["replay", "--from", "1"], db, usage_nats)
    assert code == 0, err
    assert f"inserted 0 raw rows ({len(EVENTS)} already present)" in out
    assert await raw(db) == before_raw
    assert await rollups(db) == before_rollups


async def test_verify_reports_exactly_the_corrupted_bucket(nc: NATS, db: str,
                                                           usage_nats: str) -> None:
    await publish_all(nc)
    day = ["--from", iso(D), "--to", iso(D + 24 * H)]
    assert (await usage(["replay", "--from", "1"], db, usage_nats))[0] == 0
    code, out, err = await usage(["replay", *day, "--verify"], db, usage_nats)
    assert code == 0, out + err
    assert "verify: OK" in out and "DIFF" not in out
    # Every request of D against its raw row; every hour with requests on D
    # (0, 3, 10, 12, 23) and the day itself against the raw rows.
    assert "compared 8 of 8 events with the raw rows; not yet: 0" in out
    assert "compared 5 hourly and 1 daily buckets' rollups" in out
    assert f"hourly [{iso(D)}, {iso(D + 24 * H)})" in out
    before = await rollups(db)

    # Corrupt one hourly row: exactly that bucket is reported; nothing is written.
    status = await execute(db, "UPDATE usage_rollups SET request_count = request_count + 1, "
                               "cost_usd = cost_usd + 0.5 WHERE period = 'hourly' "
                               "AND bucket = $1 AND org_id = 'acme' AND key_id = 'k1' "
                               "AND model = 'gpt-4o'", D + 10 * H)
    assert status == "UPDATE 1"
    corrupted = await rollups(db)
    code, out, _ = await usage(["replay", *day, "--verify"], db, usage_nats)
    assert code == 1
    diffs = [line for line in out.splitlines() if line.startswith("DIFF")]
    assert diffs == [f"DIFF hourly {iso(D + 10 * H)} org=acme team=t1 key=k1 model=gpt-4o "
                     "provider=openai"]
    assert ("raw rows: requests=2 prompt_tokens=10 completion_tokens=5 cached_tokens=0 "
            "total_tokens=15 cost_usd=0.01250000 cached=1") in out
    assert "rollup:   requests=3 prompt_tokens=10" in out and "cost_usd=0.51250000" in out
    assert "verify: 1 differences" in out
    assert await rollups(db) == corrupted

    # A window starting mid-hour still checks that hour's and day's rollups
    # (against all their raw rows).
    code, out, _ = await usage(["replay", "--from", iso(D + timedelta(minutes=30)),
                                "--to", iso(D + 24 * H), "--verify"], db, usage_nats)
    assert code == 1
    assert "compared 5 hourly and 1 daily buckets" in out

    # A missing row and a row nobody asked for are differences too.
    await execute(db, "DELETE FROM usage_rollups WHERE period = 'daily' AND org_id = 'beta'")
    await execute(db, "INSERT INTO usage_rollups (org_id, key_id, model, period, bucket, "
                      "request_count) VALUES ('acme', 'ghost', 'gpt-4o', 'hourly', $1, 7)",
                  D + 5 * H)
    code, out, _ = await usage(["replay", *day, "--verify"], db, usage_nats)
    assert code == 1
    diffs = [line for line in out.splitlines() if line.startswith("DIFF")]
    assert len(diffs) == 3
    assert f"DIFF daily {iso(D)} org=beta team=- key=kb model=gpt-4o provider=openai" in diffs
    assert (f"DIFF hourly {iso(D + 5 * H)} org=acme team=- key=ghost model=gpt-4o "
            "provider=-") in diffs

    # Repair with the same window; then the verification passes, and the
    # rollups are what they were.
    code, out, err = await usage(["replay", *day], db, usage_nats)
    assert code == 0, err
    assert "inserted 0 raw rows" in out
    code, out, _ = await usage(["replay", *day, "--verify"], db, usage_nats)
    assert code == 0, out
    assert await rollups(db) == before

    # A raw row lost: its request is named, and its buckets no longer add up.
    await execute(db, "DELETE FROM usage_records WHERE request_id = 'r03'")
    code, out, _ = await usage(["replay", *day, "--verify"], db, usage_nats)
    assert code == 1
    assert f"MISSING raw row of request r03 ({iso(D + 3 * H + timedelta(minutes=1))}" in out
    assert f"DIFF hourly {iso(D + 3 * H)} org=acme" in out
    # Everything too recent to compare (a max latency of four days): status 3.
    code, out, _ = await usage(["replay", *day, "--verify", "--max-latency",
                                str(4 * 86400)], db, usage_nats)
    assert code == 3, out
    assert "compared 0 of 8 events" in out and "not yet: 8" in out
    assert "nothing could be compared yet" in out


async def test_replay_windows_by_sequence_and_by_time(nc: NATS, db: str,
                                                      usage_nats: str) -> None:
    seqs = await publish_all(nc)
    ids = [e.request_id for e in EVENTS]

    async def replayed(*argv: str) -> list[str]:
        await execute(db, "TRUNCATE usage_records, usage_rollups")
        code, out, err = await usage(["replay", *argv], db, usage_nats)
        assert code == 0, out + err
        rows = await fetch(db, "SELECT request_id FROM usage_records ORDER BY created_at")
        return [r["request_id"] for r in rows]

    # Sequences: --from inclusive, --to exclusive.
    assert await replayed("--from", str(seqs[4])) == ids[4:]
    assert await replayed("--from", str(seqs[2]), "--to", str(seqs[5])) == ids[2:5]
    # Times apply to when the request arrived, with any offset.
    noon_ist = (D + 12 * H).astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert noon_ist.isoformat().endswith("+05:30")
    assert await replayed("--from", noon_ist.isoformat()) == ["r12", "r23", "r-after"]
    assert await replayed("--from", iso(D + 3 * H), "--to", iso(D + 12 * H)) == [
        "r03", "r10a", "r10b", "r10c"]
    # The rollups of a partial window still come from every raw row of the
    # buckets it touches.
    code, _, _ = await usage(["replay", "--from", "1"], db, usage_nats)
    assert code == 0
    await execute(db, "DELETE FROM usage_rollups")
    code, _, _ = await usage(["replay", "--from", iso(D + 10 * H + timedelta(minutes=15)),
                              "--to", iso(D + 11 * H)], db, usage_nats)
    assert code == 0
    hour10 = [r for r in await rollups(db) if r[0] == "hourly"]
    assert hour10 == [r for r in expected_rollups(EVENTS)
                      if r[0] == "hourly" and r[1] == D + 10 * H]
    assert {r[1] for r in await rollups(db) if r[0] == "daily"} == {D}

    # Mistakes are reported, not raised.
    code, _, err = await usage(["replay", "--from", "yesterday"], db, usage_nats)
    assert code == 2 and "--from" in err and "RFC 3339" in err
    code, _, err = await usage(["replay", "--from", "5", "--to", "5"], db, usage_nats)
    assert code == 2 and "--to must be after --from" in err


async def test_command_line_exit_status_and_environment(nc: NATS, db: str,
                                                        usage_nats: str) -> None:
    """The real entry point: URLs from the environment, 1 on differences."""
    await publish_all(nc)
    assert (await usage(["replay", "--from", "1"], db, usage_nats))[0] == 0
    await execute(db, "UPDATE usage_rollups SET total_tokens = 0 WHERE period = 'daily' "
                      "AND org_id = 'beta'")
    env = dict(os.environ, GANDALF_DATABASE_URL=db, GANDALF_NATS_URL=usage_nats)
    argv = [sys.executable, "-m", "gandalf_usage.cli", "replay", "--from", iso(D), "--to",
            iso(D + 24 * H), "--verify"]
    proc = await asyncio.to_thread(subprocess.run, argv, env=env, capture_output=True,
                                   text=True, timeout=30, cwd="/")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"DIFF daily {iso(D)} org=beta" in proc.stdout
    env.pop("GANDALF_DATABASE_URL")
    proc = await asyncio.to_thread(subprocess.run, argv, env=env, capture_output=True,
                                   text=True, timeout=30, cwd="/")
    assert proc.returncode == 2 and "--database-url" in proc.stderr


# ------------------------------------------------------------------ export

SEED = [
    # request_id, created_at, org, team, key, user, model, provider, status, cost, ttft, cached
    ("e1", datetime(2026, 3, 1, 10, 0, tzinfo=UTC), "acme", "t1", "k1", "alice", "gpt-4o",
     "openai", 200, Decimal("0.01250000"), 80, False),
    ("e2", datetime(2026, 3, 1, 10, 0, 0, 250000, tzinfo=UTC), "acme", None, "k2", None,
     "claude, \"quoted\"", "anthropic", 429, Decimal("0"), None, True),
    ("e3", datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC), "beta", None, None, "jwt-sub",
     "gpt-4o", "azure", 502, Decimal("1.5"), None, False),
    ("e-out", datetime(2026, 3, 2, 0, 0, tzinfo=UTC), "acme", None, "k1", None, "gpt-4o",
     "openai", 200, Decimal("9"), None, False),
]


async def _seed_export(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            "INSERT INTO usage_records (request_id, created_at, org_id, team_id, key_id, "
            "user_id, model, provider_id, status_code, cost_usd, ttft_ms, cached, "
            "prompt_tokens, completion_tokens, total_tokens, error_class) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 7, 3, 10, "
            "CASE WHEN $9 >= 400 THEN 'upstream' END)", SEED)
    finally:
        await conn.close()


async def test_export_csv_and_jsonl_round_trip(db: str, tmp_path: Path) -> None:
    await _seed_export(db)
    db_rows = await fetch(db, f"SELECT {', '.join(COLUMNS)} FROM usage_records "
                              "WHERE request_id <> 'e-out' ORDER BY created_at, id")
    window = ["--from", "2026-03-01T15:30:00+05:30", "--to", "2026-03-01T19:00:00-05:00"]

    out_csv = tmp_path / "usage.csv"
    code, stdout, err = await usage(["export", *window, "--format", "csv", "--output",
                                     str(out_csv)], db, "")
    assert code == 0 and stdout == "" and "export: 3 rows" in err
    with out_csv.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = list(reader)
    # Migration 004's event fields follow the fixed columns.
    assert tuple(header) == COLUMNS + OPTIONAL_COLUMNS
    assert [r[1] for r in rows] == ["e1", "e2", "e3"]
    as_dicts = [dict(zip(header, r, strict=True)) for r in rows]
    e1, e2, e3 = as_dicts
    assert e1["created_at"] == "2026-03-01T10:00:00Z"
    assert e2["created_at"] == "2026-03-01T10:00:00.250000Z"
    assert (e1["cost_usd"], e2["cost_usd"], e3["cost_usd"]) == ("0.01250000", "0.00000000",
                                                                "1.50000000")
    assert e2["model"] == 'claude, "quoted"' and e2["team_id"] == "" and e2["cached"] == "true"
    assert e1["ttft_ms"] == "80" and e3["key_id"] == "" and e3["error_class"] == "upstream"
    assert (e1["auth"], e1["estimated"]) == ("", "false")
    for got, want in zip(as_dicts, db_rows, strict=True):
        for col in COLUMNS:
            value = want[col]
            if isinstance(value, datetime):
                assert datetime.fromisoformat(got[col]) == value
            elif isinstance(value, bool):
                assert got[col] == str(value).lower()
            elif isinstance(value, Decimal):
                assert Decimal(got[col]) == value
            else:
                assert got[col] == ("" if value is None else str(value)), col

    code, stdout, err = await usage(["export", *window, "--format", "jsonl"], db, "")
    assert code == 0
    lines = stdout.splitlines()
    assert len(lines) == 3
    for line, want in zip(lines, db_rows, strict=True):
        got = json.loads(line)
        assert tuple(got) == COLUMNS + OPTIONAL_COLUMNS
        assert isinstance(got["cost_usd"], str) and Decimal(got["cost_usd"]) == want["cost_usd"]
        assert datetime.fromisoformat(got["created_at"]) == want["created_at"]
        assert got["created_at"].endswith("Z")
        for col in COLUMNS:
            if col not in ("cost_usd", "created_at"):
                assert got[col] == want[col], col

    code, _, err = await usage(["export", "--from", "2026-03-02T00:00:00Z", "--to",
                                "2026-03-01T00:00:00Z", "--format", "csv"], db, "")
    assert code == 2 and "--to must be after --from" in err
