"""Chaos: the gateway process serving a stream is killed (-9) after the
client got its first bytes. Its finished usage event never exists; the
started event it stored before the first byte must still bill the request:
a provisional, estimated row appears within the (shortened) deadline, and
`gandalf usage replay --verify` still balances."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gandalf_app.statefile import read_runtime
from gateway_harness import UPSTREAM_KEY, free_port
from up_harness import GANDALF, clean_env, start_up, stop_up

KEY = "gnd_chaos_started_key"
DEADLINE_S = 3

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


class Up:
    def __init__(self, port: int, state: Path, config: Path,
                 proc: subprocess.Popen[str]) -> None:
        self.port, self.state, self.config, self.proc = port, state, config, proc


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory, mock_upstream: Any) -> Iterator[Up]:
    tmp = tmp_path_factory.mktemp("chaos-started")
    port = free_port()
    config = tmp / "gandalf.yaml"
    config.write_text(f"""
server: {{addr: "127.0.0.1:{port}", shutdown_timeout: 5s}}
rate_limits: {{default_rpm: 0, default_tpm: 0}}
cache: {{enabled: false}}
usage: {{started_deadline: {DEADLINE_S}s}}
providers:
  - {{name: mock, type: openai, base_url: "{mock_upstream.base_url}", api_key: {UPSTREAM_KEY}}}
routes:
  - model_alias: slow
    targets: [{{provider: mock, model: chunk-delay-300+words-100}}]
keys:
  - {{name: admin, key: {KEY}, role: admin}}
""")
    proc = start_up(config, tmp / "state", tmp / "up.log")
    yield Up(port, tmp / "state", config, proc)
    stop_up(proc)


def _open_stream(port: int) -> tuple[socket.socket, str]:
    """A streaming chat over a plain socket (its local port names the
    connection in /proc/net/tcp); returns once the first data: event is in,
    with the gateway's request id."""
    body = json.dumps({"model": "slow", "stream": True,
                       "messages": [{"role": "user", "content": "tell me a long story"}]})
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
    got = b""
    while b"\ndata: {" not in got:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before the first event: {got!r}"
        got += chunk
    head = got.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("HTTP/1.1 200"), head
    rid = next(line.split(":", 1)[1].strip() for line in head.split("\r\n")
               if line.lower().startswith("x-request-id:"))
    return sock, rid


def _serving_pid(up: Up, client_port: int) -> int:
    """The process holding the server side of the connection from ``client_port``."""
    inode = ""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == up.port and \
                    int(f[2].rsplit(":", 1)[1], 16) == client_port:
                inode = f[9]
    assert inode, "the connection is not in /proc/net/tcp"
    target = f"socket:[{inode}]"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "stat").read_text().split(")")[-1].split()[1] != str(up.proc.pid):
                continue
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) == target:
                    return int(entry.name)
        except OSError:
            continue
    raise AssertionError("no gateway process holds the connection")


async def _row(up: Up, rid: str) -> dict[str, Any] | None:
    runtime = read_runtime(up.state)
    assert runtime is not None
    conn = await asyncpg.connect(runtime.database_url)
    try:
        row = await conn.fetchrow(
            "SELECT status_code, estimated, provisional, error_class, total_tokens, "
            "created_at FROM usage_records WHERE request_id = $1", rid)
    finally:
        await conn.close()
    return dict(row) if row is not None else None


def test_a_killed_gateway_process_still_bills_its_answered_stream(up: Up) -> None:
    since = datetime.now(UTC) - timedelta(seconds=5)
    sock, rid = _open_stream(up.port)
    victim = _serving_pid(up, sock.getsockname()[1])
    os.kill(victim, signal.SIGKILL)
    t0 = time.monotonic()
    # The client sees its stream end without [DONE].
    rest = b""
    sock.settimeout(10)
    try:
        while chunk := sock.recv(65536):
            rest += chunk
    except OSError:
        pass
    sock.close()
    assert b"[DONE]" not in rest
    row = None
    # The deadline, a sweep, and (if the victim ran the usage service) its restart.
    while row is None and time.monotonic() - t0 < DEADLINE_S + 40:
        try:
            row = asyncio.run(_row(up, rid))
        except (OSError, asyncpg.PostgresError):
            pass
        if row is None:
            time.sleep(0.5)
    took = time.monotonic() - t0
    print(f"\n[chaos] killed gateway process {victim} mid-stream: usage row after {took:.1f}s")
    assert row is not None, f"request {rid} has no usage row {took:.0f}s after the kill"
    assert row["provisional"] and row["estimated"]
    assert row["status_code"] == 0 and row["error_class"] == "ingress_lost"
    assert row["total_tokens"] > 0  # billed from the admission estimate
    # Events vs raw rows and rollups vs raw rows still balance.
    time.sleep(1.5)
    verify = subprocess.run(
        [*GANDALF, "usage", "replay", "--config", str(up.config), "--from", since.isoformat(),
         "--verify", "--max-latency", "1"], env=clean_env(GANDALF_DATA_DIR=str(up.state)),
        capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
