"""``gandalf usage replay|export`` next to the default deployment: a real
``gandalf up`` on a temporary state directory, the billing tools given only
``--config`` and the same ``GANDALF_DATA_DIR``; then the same with
``gandalf up`` stopped (the tools start its embedded servers themselves)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import openai
import pytest

from gandalf_app.embedded import EmbeddedPostgres, StateDirLock
from gandalf_app.statefile import read_runtime
from gateway_harness import UPSTREAM_KEY, free_port

GANDALF = [sys.executable, "-m", "gandalf_app.cli"]


def _config(tmp: Path, port: int, upstream: str) -> Path:
    path = tmp / "gandalf.yaml"
    path.write_text(f"""
server:
  addr: "127.0.0.1:{port}"
  shutdown_timeout: 5s
providers:
  - name: mock
    type: openai
    base_url: {upstream}
    api_key: {UPSTREAM_KEY}
routes:
  - model_alias: m
    targets: [{{provider: mock, model: ok}}]
keys:
  - name: admin
    key: gnd_usage_tools_key
    role: admin
""")
    return path


def _env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANDALF_")}
    env["GANDALF_DATA_DIR"] = str(state)
    return env


class _Up:
    def __init__(self, config: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([*GANDALF, "up", "--config", str(config), "--processes",
                                      "1", "--log-level", "warning"],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     text=True, env=env)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 90) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if text in "".join(self.lines):
                return True
            time.sleep(0.05)
        return text in "".join(self.lines)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def _usage(config: Path, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GANDALF, "usage", *argv, "--config", str(config)], env=env,
                          capture_output=True, text=True, timeout=120)


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _export(config: Path, env: dict[str, str], start: datetime) -> list[dict[str, Any]]:
    done = _usage(config, env, "export", "--from", _iso(start), "--to",
                  _iso(datetime.now(UTC) + timedelta(hours=1)), "--format", "jsonl")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def _delete_row(dsn: str, request_id: str) -> None:
    async def go() -> str:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.execute("DELETE FROM usage_records WHERE request_id = $1",
                                      request_id)
        finally:
            await conn.close()

    assert asyncio.run(go()) == "DELETE 1"


@pytest.mark.slow
def test_billing_tools_use_the_state_directory_of_gandalf_up(tmp_path: Path,
                                                             upstream: Any) -> None:
    port = free_port()
    config = _config(tmp_path, port, upstream.base_url)
    state = tmp_path / "state"
    env = _env(state)
    start = datetime.now(UTC) - timedelta(seconds=1)
    up = _Up(config, env)
    try:
        assert up.wait_for("ready on"), "".join(up.lines)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1",
                               api_key="gnd_usage_tools_key", max_retries=0)
        for i in range(3):
            client.chat.completions.create(model="m",
                                           messages=[{"role": "user", "content": f"q{i}"}])
        # Export: the rows arrive as the usage service writes them.
        deadline = time.monotonic() + 30
        rows = _export(config, env, start)
        while len(rows) < 3 and time.monotonic() < deadline:
            time.sleep(0.5)
            rows = _export(config, env, start)
        assert len(rows) == 3
        assert {r["model"] for r in rows} == {"m"} and {r["provider_id"] for r in rows} == {
            "mock"}
        ids = sorted(r["request_id"] for r in rows)

        # Just now: every event is too recent for the default max latency.
        recent = _usage(config, env, "replay", "--from", _iso(start), "--verify")
        assert recent.returncode == 3, recent.stdout + recent.stderr
        assert "compared 0 of 3 events" in recent.stdout
        assert "not yet: 3" in recent.stdout and "nothing could be compared" in recent.stdout

        time.sleep(1.5)
        ok = _usage(config, env, "replay", "--from", _iso(start), "--verify",
                    "--max-latency", "1")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "compared 3 of 3 events" in ok.stdout and "verify: OK" in ok.stdout

        runtime = read_runtime(state)
        assert runtime is not None
        _delete_row(runtime.database_url, ids[0])
        bad = _usage(config, env, "replay", "--from", _iso(start), "--verify",
                     "--max-latency", "1")
        assert bad.returncode == 1, bad.stdout + bad.stderr
        assert f"MISSING raw row of request {ids[0]}" in bad.stdout
        assert up.stop() == 0
    finally:
        up.stop()

    # gandalf up stopped: the tools start its embedded servers themselves.
    assert read_runtime(state) is None
    rows = _export(config, env, start)
    assert sorted(r["request_id"] for r in rows) == ids[1:]
    bad = _usage(config, env, "replay", "--from", _iso(start), "--verify", "--max-latency",
                 "1")
    assert bad.returncode == 1 and f"MISSING raw row of request {ids[0]}" in bad.stdout
    fixed = _usage(config, env, "replay", "--from", _iso(start))
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "inserted 1 raw rows (2 already present)" in fixed.stdout
    ok = _usage(config, env, "replay", "--from", _iso(start), "--verify", "--max-latency", "1")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert sorted(r["request_id"] for r in _export(config, env, start)) == ids
    # Nothing left running, and the state lock is free again.
    assert EmbeddedPostgres(state).postmaster_pid() is None
    with StateDirLock(state):
        # Held (gandalf up starting, another billing command): not used twice.
        busy = _usage(config, env, "export", "--from", _iso(start), "--to",
                      _iso(datetime.now(UTC)), "--format", "csv")
        assert busy.returncode == 2 and "is in use" in busy.stderr

    # Neither a running gandalf up nor its state directory: one line, status 2.
    lost = _usage(config, _env(tmp_path / "nowhere"), "export", "--from", _iso(start),
                  "--to", _iso(datetime.now(UTC)), "--format", "csv")
    assert lost.returncode == 2
    assert lost.stderr.count("\n") == 1 and "no database" in lost.stderr
