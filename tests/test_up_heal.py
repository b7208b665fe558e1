"""`gandalf up` heals its own servers: a killed nats-server, PostgreSQL or
Valkey is started again (same port, same data), and the gateway answers
again without anyone touching it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway_harness import UPSTREAM_KEY, free_port
from up_harness import start_up, stop_up

ADMIN = "gnd_heal_admin_key"

pytestmark = pytest.mark.slow


class Up:
    def __init__(self, url: str, state: Path, log: Path, proc: subprocess.Popen[str]) -> None:
        self.url = url
        self.state = state
        self.log = log
        self.proc = proc


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory, mock_upstream: Any) -> Iterator[Up]:
    tmp = tmp_path_factory.mktemp("up-heal")
    port = free_port()
    config = tmp / "gandalf.yaml"
    config.write_text(f"""
server:
  addr: "127.0.0.1:{port}"
  shutdown_timeout: 5s
providers:
  - name: mock
    type: openai
    base_url: {mock_upstream.base_url}
    api_key: {UPSTREAM_KEY}
routes:
  - model_alias: m
    targets: [{{provider: mock, model: ok}}]
keys:
  - name: admin
    key: {ADMIN}
    role: admin
""")
    log = tmp / "up.log"
    proc = start_up(config, tmp / "state", log)
    yield Up(f"http://127.0.0.1:{port}", tmp / "state", log, proc)
    stop_up(proc)


def _pid_of(up: Up, needle: str) -> int:
    """The live process running ``needle`` for this gandalf up: its state dir
    is on the command line, or (Valkey rewrites its title) it is up's child."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                stat = (entry / "stat").read_text().split(")")[-1].split()
            except OSError:
                continue
            ours = str(up.state) in cmd or int(stat[1]) == up.proc.pid
            if needle in cmd and ours and stat[0] != "Z" and not cmd.startswith("/bin/sh"):
                return int(entry.name)
    raise AssertionError(f"no process {needle!r} for {up.state}")


def _chat_ok(up: Up) -> bool:
    try:
        r = httpx.post(up.url + "/v1/chat/completions", timeout=5,
                       headers={"authorization": f"Bearer {ADMIN}"},
                       json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    except httpx.HTTPError:
        return False
    return r.status_code == 200


def _admin_ok(up: Up) -> bool:
    try:
        r = httpx.get(up.url + "/admin/v1/keys", timeout=5,
                      headers={"authorization": f"Bearer {ADMIN}"})
    except httpx.HTTPError:
        return False
    return r.status_code == 200


def _recovers(check: Any, within: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if check():
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"did not recover within {within}s")


def _restarts(up: Up, server: str) -> float | None:
    """gandalf_embedded_restarts_total{server} on /metrics (None: not shown)."""
    try:
        text = httpx.get(up.url + "/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gandalf_embedded_restarts_total" \
                    and sample.labels.get("server") == server:
                return sample.value
    return None


@pytest.mark.parametrize(("needle", "name", "label"), [
    ("nats-server", "NATS", "nats"), ("bin/postgres", "PostgreSQL", "postgres"),
    ("valkey-server", "Valkey", "valkey")])
def test_a_killed_embedded_server_is_restarted(up: Up, needle: str, name: str,
                                               label: str) -> None:
    assert _chat_ok(up) and _admin_ok(up)
    assert _restarts(up, label) == 0
    victim = _pid_of(up, needle)
    os.kill(victim, signal.SIGKILL)
    _recovers(lambda: f"embedded {name} exited; restarting it" in up.log.read_text(), 5)

    def restarted() -> bool:
        try:
            return _pid_of(up, needle) != victim
        except AssertionError:
            return False

    took = _recovers(lambda: restarted() and _chat_ok(up) and _admin_ok(up), within=30)
    print(f"{name}: restarted and answering {took:.1f}s after kill -9")
    # Counted where the gateway's metrics are (every process shows it), once
    # the restart has completed (a new server may answer a moment before).
    _recovers(lambda: _restarts(up, label) == 1, within=10)
    for _ in range(4):
        assert _restarts(up, label) == 1
