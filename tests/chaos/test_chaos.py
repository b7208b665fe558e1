"""Chaos: steady load through `gandalf up` (2 processes) while one kind of
process is killed, then the books are checked.

For each fault: every request that got a complete 200 has exactly one usage
row, there are no more rows than requests, `gandalf usage replay --verify`
(events vs raw rows, rollups vs raw rows) exits 0, and no request stayed
open longer than the liveness bound plus a second. The figures are printed
(`pytest -s tests/chaos`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from gandalf_app.statefile import read_runtime
from gandalf_common.liveness import LIVENESS_S
from gateway_harness import UPSTREAM_KEY, free_port
from up_harness import GANDALF, clean_env, start_up, stop_up

KEY = "gnd_chaos_admin_key"
CONCURRENCY = 12
LOAD_S = 6.0
FAULT_AT_S = 2.0
#: A request may take the liveness bound, a second, and its own latency.
LONGEST_S = LIVENESS_S + 1.5

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@dataclass
class Up:
    url: str
    state: Path
    config: Path
    log: Path
    proc: subprocess.Popen[str]


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory, mock_upstream: Any) -> Iterator[Up]:
    tmp = tmp_path_factory.mktemp("chaos")
    port = free_port()
    config = tmp / "gandalf.yaml"
    config.write_text(f"""
server: {{addr: "127.0.0.1:{port}", shutdown_timeout: 5s}}
rate_limits: {{default_rpm: 0, default_tpm: 0}}
cache: {{enabled: false}}
providers:
  - {{name: mock, type: openai, base_url: "{mock_upstream.base_url}", api_key: {UPSTREAM_KEY}}}
routes:
  - model_alias: m
    targets: [{{provider: mock, model: chaos-ok}}]
keys:
  - {{name: admin, key: {KEY}, role: admin}}
""")
    log = tmp / "up.log"
    proc = start_up(config, tmp / "state", log)
    yield Up(f"http://127.0.0.1:{port}", tmp / "state", config, log, proc)
    stop_up(proc)


# --------------------------------------------------------------- processes


def _procs(up: Up) -> dict[int, tuple[str, int]]:
    """Live processes of this gandalf up: pid -> (command line, parent pid)."""
    out: dict[int, tuple[str, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = (entry / "stat").read_text().split(")")[-1].split()
        except OSError:
            continue
        if stat[0] == "Z":
            continue
        if str(up.state) in cmd or str(up.config) in cmd or int(stat[1]) == up.proc.pid:
            out[int(entry.name)] = (cmd, int(stat[1]))
    return out


def _victim(up: Up, kind: str) -> int:
    for pid, (cmd, ppid) in _procs(up).items():
        gateway = " node " in cmd and ppid == up.proc.pid
        if (kind == "gateway" and gateway and "--aux" not in cmd) \
                or (kind == "aux" and gateway and "--aux" in cmd) \
                or (kind == "nats" and "nats-server" in cmd) \
                or (kind == "postgres" and "bin/postgres" in cmd and ppid != up.proc.pid
                    and not cmd.startswith("/bin/sh") and "postgres:" not in cmd):
            return pid
    raise AssertionError(f"no {kind} process for {up.state}")


FAULTS: dict[str, Callable[[Up], None]] = {
    "kill -9 a gateway process": lambda up: os.kill(_victim(up, "gateway"), signal.SIGKILL),
    "kill -9 the process with usage and admin":
        lambda up: os.kill(_victim(up, "aux"), signal.SIGKILL),
    "kill -9 nats-server": lambda up: os.kill(_victim(up, "nats"), signal.SIGKILL),
    "kill -9 PostgreSQL": lambda up: os.kill(_victim(up, "postgres"), signal.SIGKILL),
    "stop PostgreSQL (fast shutdown)": lambda up: os.kill(_victim(up, "postgres"),
                                                          signal.SIGINT),
}


# -------------------------------------------------------------------- load


@dataclass
class Outcome:
    stream: bool
    status: int = 0
    complete: bool = False
    request_id: str = ""
    seconds: float = 0.0
    error: str = ""


@dataclass
class Load:
    outcomes: list[Outcome] = field(default_factory=list)
    fault_at: float = 0.0
    recovered_after: float | None = None


async def _one(http: httpx.AsyncClient, url: str, stream: bool) -> Outcome:
    out = Outcome(stream=stream)
    body = {"model": "m", "stream": stream,
            "messages": [{"role": "user", "content": f"chaos {uuid.uuid4().hex[:8]}"}]}
    headers = {"authorization": f"Bearer {KEY}"}
    t0 = time.monotonic()
    try:
        async with http.stream("POST", url + "/v1/chat/completions", json=body,
                               headers=headers) as r:
            out.status = r.status_code
            out.request_id = r.headers.get("x-request-id", "")
            if not stream:
                data = await r.aread()
                out.complete = r.status_code == 200 and b'"choices"' in data
            else:
                async for line in r.aiter_lines():
                    if line == "data: [DONE]":
                        out.complete = r.status_code == 200
                    elif line.startswith("data: ") and '"error"' in line:
                        out.error = json.loads(line[6:])["error"].get("code") or "error"
    except httpx.HTTPError as exc:
        out.error = type(exc).__name__
    out.seconds = time.monotonic() - t0
    return out


async def _run_load(up: Up, fault: Callable[[Up], None]) -> Load:
    load = Load()
    t0 = time.monotonic()
    stop_at = t0 + LOAD_S
    faulted = False

    async def worker(n: int) -> None:
        nonlocal faulted
        async with httpx.AsyncClient(timeout=20) as http:
            i = 0
            while time.monotonic() < stop_at:
                if not faulted and time.monotonic() - t0 >= FAULT_AT_S:
                    faulted = True
                    load.fault_at = time.monotonic()
                    await asyncio.to_thread(fault, up)
                out = await _one(http, up.url, stream=(n + i) % 2 == 1)
                load.outcomes.append(out)
                if faulted and load.recovered_after is None and out.complete \
                        and time.monotonic() - load.fault_at > 0.05:
                    load.recovered_after = time.monotonic() - load.fault_at
                i += 1

    await asyncio.gather(*(worker(n) for n in range(CONCURRENCY)))
    # Until it answers again (a fault can outlast the load).
    async with httpx.AsyncClient(timeout=20) as http:
        deadline = time.monotonic() + 60
        while load.recovered_after is None and time.monotonic() < deadline:
            out = await _one(http, up.url, stream=False)
            load.outcomes.append(out)
            if out.complete:
                load.recovered_after = time.monotonic() - load.fault_at
            else:
                await asyncio.sleep(0.25)
    return load


# ------------------------------------------------------------------- books


async def _rows(up: Up, ids: list[str], since: datetime) -> tuple[set[str], int]:
    runtime = read_runtime(up.state)
    assert runtime is not None
    conn = await asyncpg.connect(runtime.database_url)
    try:
        found = {r["request_id"] for r in await conn.fetch(
            "SELECT request_id FROM usage_records WHERE request_id = ANY($1)", ids)}
        total = await conn.fetchval("SELECT count(*) FROM usage_records WHERE created_at >= $1",
                                    since)
    finally:
        await conn.close()
    return found, int(total)


def _verify(up: Up, since: datetime) -> subprocess.CompletedProcess[str]:
    env = clean_env(GANDALF_DATA_DIR=str(up.state))
    return subprocess.run([*GANDALF, "usage", "replay", "--config", str(up.config), "--from",
                           since.isoformat(), "--verify", "--max-latency", "1"],
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", list(FAULTS))
def test_books_balance_after(up: Up, name: str) -> None:
    since = datetime.now(UTC)
    load = asyncio.run(_run_load(up, FAULTS[name]))
    outcomes = load.outcomes
    answered = [o.request_id for o in outcomes if o.complete]
    # Rows arrive once the usage service (maybe restarting) catches up.
    deadline = time.monotonic() + 60
    found: set[str] = set()
    total = 0
    while True:
        try:
            found, total = asyncio.run(_rows(up, answered, since))
        except (OSError, asyncpg.PostgresError):
            pass  # PostgreSQL still coming back
        if len(found) == len(answered) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    missing = len(answered) - len(found)
    longest = max(o.seconds for o in outcomes)
    statuses = Counter(o.status or o.error for o in outcomes)
    recovered = "never" if load.recovered_after is None else f"{load.recovered_after:.1f}s"
    print(f"\n[chaos] {name}: {len(outcomes)} requests, {len(answered)} answered, "
          f"statuses {dict(statuses)}, rows missing {missing}, rows {total}, "
          f"longest {longest:.1f}s, recovered after {recovered}")
    assert missing == 0, f"{missing} answered requests have no usage row"
    assert total <= len(outcomes), "more usage rows than requests"
    assert load.recovered_after is not None, "never answered again"
    assert longest <= LONGEST_S, f"a request stayed open {longest:.1f}s"
    time.sleep(1.5)  # every bucket of the window older than --max-latency
    verify = _verify(up, since)
    assert verify.returncode == 0, verify.stdout + verify.stderr
