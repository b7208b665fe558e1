"""Every `gandalf` command stops when told to, whatever state it is in, and
`gandalf up` leaves nothing behind even when it is killed.

Each case runs the real command as a subprocess: SIGTERM while it waits for
an unreachable NATS or PostgreSQL must end it within the shutdown bound,
with a non-zero status and one line saying what it waited for.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway_harness import UPSTREAM_KEY, free_port

GANDALF = [sys.executable, "-m", "gandalf_app.cli"]
SHUTDOWN_S = 3.0
#: The bound: server.shutdown_timeout plus the NATS close (5 s at most) and a margin.
STOP_BOUND_S = SHUTDOWN_S + 6.0
DEAD_NATS = "nats://127.0.0.1:1"
DEAD_PG = "postgresql://postgres@127.0.0.1:1/gandalf"


def _config(tmp: Path, *, port: int, database_url: str = "", upstream: str = "http://127.0.0.1:1"
            ) -> Path:
    path = tmp / "gandalf.yaml"
    database = f"database:\n  url: {database_url}\n" if database_url else ""
    path.write_text(f"""
server:
  addr: "127.0.0.1:{port}"
  shutdown_timeout: {SHUTDOWN_S:g}s
{database}providers:
  - name: mock
    type: openai
    base_url: {upstream}
    api_key: {UPSTREAM_KEY}
routes:
  - model_alias: m
    targets: [{{provider: mock, model: ok}}]
""")
    return path


def _env(tmp: Path) -> dict[str, str]:
    from gandalf_common.crypto import ENV_KEY, generate_key

    env = {k: v for k, v in os.environ.items() if not k.startswith("GANDALF_")}
    env[ENV_KEY] = generate_key()
    env["GANDALF_BUS_SECRET"] = "stop-test-bus-secret-" + "0" * 32
    env["GANDALF_DATA_DIR"] = str(tmp / "state")
    return env


def _run_then_term(cmd: list[str], env: dict[str, str], *, wait_s: float = 2.5
                   ) -> tuple[int, str, float]:
    """Start ``cmd``, SIGTERM it after ``wait_s``; (status, stderr, seconds to exit)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        time.sleep(wait_s)
        assert proc.poll() is None, f"exited early: {proc.returncode}\n{proc.stderr.read()}"  # type: ignore[union-attr]
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=STOP_BOUND_S + 20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"{cmd[3]} ignored SIGTERM:\n{err}")
        return proc.returncode, err, time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _reason_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "stopped before it was ready" in line]


@pytest.mark.parametrize("command", ["ingress", "router", "worker", "usage", "admin", "up"])
def test_sigterm_while_nats_is_unreachable(command: str, tmp_path: Path) -> None:
    config = _config(tmp_path, port=free_port(), database_url=DEAD_PG)
    cmd = [*GANDALF, command, "--config", str(config), "--nats-url", DEAD_NATS,
           "--log-level", "warning"]
    if command == "up":
        cmd += ["--processes", "1"]
    status, err, took = _run_then_term(cmd, _env(tmp_path), wait_s=4.0 if command == "up"
                                       else 2.0)
    assert took < STOP_BOUND_S, f"took {took:.1f}s to stop:\n{err}"
    assert status != 0, err
    assert "Traceback" not in err, err
    lines = _reason_lines(err)
    assert lines and "cannot connect to NATS" in lines[0] and "127.0.0.1:1" in lines[0], err
    if command != "up":
        assert len(lines) == 1, err


@pytest.mark.parametrize("command", ["usage", "admin", "up"])
def test_sigterm_while_postgres_is_unreachable(command: str, tmp_path: Path,
                                                nats_url: str) -> None:
    config = _config(tmp_path, port=free_port(), database_url=DEAD_PG)
    cmd = [*GANDALF, command, "--config", str(config), "--log-level", "warning"]
    if command == "up":
        # Its own NATS (embedded), with the configured, unreachable database.
        cmd += ["--processes", "1"]
    else:
        cmd += ["--nats-url", nats_url]
    status, err, took = _run_then_term(cmd, _env(tmp_path), wait_s=5.0 if command == "up"
                                       else 2.5)
    assert took < STOP_BOUND_S, f"took {took:.1f}s to stop:\n{err}"
    assert status != 0, err
    assert "Traceback" not in err, err
    lines = _reason_lines(err)
    assert lines and "PostgreSQL" in lines[0] and "127.0.0.1:1" in lines[0], err


def _pids_mentioning(text: str) -> dict[int, str]:
    """Live processes whose command line contains ``text`` (read from /proc)."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found[int(entry.name)] = cmdline
    return found


def _children_of(pid: int) -> set[int]:
    out: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().split(")")[-1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                out.add(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_up(config: Path, state: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], Any]:
    log = (state.parent / "up.log").open("w")
    proc = subprocess.Popen([*GANDALF, "up", "--config", str(config), "--data-dir", str(state),
                             "--processes", "2", "--log-level", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if "ready on" in (state.parent / "up.log").read_text():
            return proc, log
        assert proc.poll() is None, (state.parent / "up.log").read_text()
        time.sleep(0.2)
    proc.kill()
    pytest.fail("gandalf up did not become ready:\n" + (state.parent / "up.log").read_text())


def _wait_gone(pids: set[int], state: Path, within: float) -> tuple[set[int], dict[int, str]]:
    deadline = time.monotonic() + within
    while True:
        left = {p for p in pids if _alive(p)}
        named = _pids_mentioning(str(state))
        if (not left and not named) or time.monotonic() > deadline:
            return left, named
        time.sleep(0.2)


@pytest.mark.slow
def test_sigkill_of_up_leaves_no_process_behind(tmp_path: Path, upstream: Any) -> None:
    state = tmp_path / "state"
    config = _config(tmp_path, port=free_port(), upstream=upstream.base_url)
    proc, log = _start_up(config, state, _env(tmp_path))
    try:
        children = _children_of(proc.pid)
        named = _pids_mentioning(str(state))
        # The gateway processes, nats-server and PostgreSQL are all running.
        assert len(children) >= 3, children
        assert any("nats-server" in c for c in named.values()), named
        assert any("postgres" in c for c in named.values()), named
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        left, named = _wait_gone(children | set(named), state, within=10)
        assert not left and not named, (left, named)
    finally:
        log.close()
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_next_up_adopts_and_stops_a_postgres_left_running(tmp_path: Path,
                                                           upstream: Any) -> None:
    """Even with its watchdog killed too, the PostgreSQL of a killed `gandalf
    up` is adopted by the next one on that state directory and stopped with it."""
    state = tmp_path / "state"
    config = _config(tmp_path, port=free_port(), upstream=upstream.base_url)
    env = _env(tmp_path)
    first, log = _start_up(config, state, env)
    try:
        watchdogs = [p for p, c in _pids_mentioning(str(state / "pg")).items()
                     if c.startswith("/bin/sh")]
        assert watchdogs
        for pid in watchdogs:
            os.kill(pid, signal.SIGKILL)
        postmaster = int((state / "pg" / "postmaster.pid").read_text().split()[0])
        others = _children_of(first.pid) - {postmaster}
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        # The gateway processes drain and exit (they hold the port); only
        # PostgreSQL, its watchdog killed, stays.
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in others) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in others if _alive(p)]
        postmaster = int((state / "pg" / "postmaster.pid").read_text().split()[0])
        assert _alive(postmaster)  # left behind, as after a crash of everything
    finally:
        log.close()
    second, log = _start_up(config, state, env)
    try:
        assert "embedded PostgreSQL" in (tmp_path / "up.log").read_text()
        assert _alive(postmaster)  # adopted, not a second server
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
        _, named = _wait_gone(set(), state, within=10)
        assert not named, named
        assert not _alive(postmaster)
    finally:
        log.close()
        if second.poll() is None:
            second.kill()
