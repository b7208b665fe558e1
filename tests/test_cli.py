"""The `gandalf` command's surface: help that lists what exists, global flags
honoured (or refused) wherever they are given, a ready line a person can
click, and configuration errors as one line with status 2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gandalf_app.cli import _honour_stop_signals
from gandalf_app.launcher import public_url

GANDALF = [sys.executable, "-m", "gandalf_app.cli"]


def _run(*args: str, timeout: float = 30, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GANDALF, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_help_lists_the_commands_and_hides_the_internal_one() -> None:
    out = _run("--help").stdout
    for command in ("up", "ingress", "router", "worker", "usage", "admin", "version"):
        assert f"\n    {command} " in out, out
    assert "SUPPRESS" not in out and "node" not in out


def test_usage_help_names_the_billing_tools() -> None:
    out = _run("usage", "--help").stdout
    assert "gandalf usage replay" in out and "gandalf usage export" in out


def test_up_has_an_addr_flag() -> None:
    assert "--addr" in _run("up", "--help").stdout


def test_global_flags_before_the_command_are_honoured(tmp_path: Path) -> None:
    config = tmp_path / "g.yaml"
    config.write_text("providers:\n  - {name: openai, api_key: sk-x}\n"
                      "routes:\n  - {model_alias: m, targets: [{provider: openai, model: x}]}\n")
    proc = subprocess.Popen([*GANDALF, "--nats-url", "nats://127.0.0.1:3", "--config",
                             str(config), "router"], stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    timer = threading.Timer(30, proc.kill)
    timer.start()
    try:
        first = proc.stderr.readline()  # said at the first failed attempt
    finally:
        timer.cancel()
    assert "waiting" in first and "127.0.0.1:3 " in first, first  # the global flag was used
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 1, first + err
    assert "stopped before it was ready" in err, err


def test_ignored_stop_signals_are_not_inherited() -> None:
    """`gandalf up &` in a script starts with SIGINT ignored; it must still stop."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for sig in before:
            signal.signal(sig, signal.SIG_IGN)
        _honour_stop_signals()
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) == signal.default_int_handler
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_global_flags_the_billing_tools_do_not_take_are_refused() -> None:
    done = _run("--log-level", "debug", "usage", "export", "--from", "2026-01-01T00:00:00Z",
                "--to", "2026-01-02T00:00:00Z", "--format", "csv")
    assert done.returncode != 0
    assert "--log-level is not an option of the billing tools" in done.stderr


@pytest.mark.parametrize(("text", "needle"), [
    ("providers:\n  - {name: x, type: mistral}\n", "unknown provider type 'mistral'"),
    ("server: [\n", "invalid config"),
    ("providers:\n  - {name: openai, api_key: \"${GANDALF_TEST_UNSET_VAR}\"}\n",
     "GANDALF_TEST_UNSET_VAR"),
])
def test_config_errors_are_one_line_and_status_2(tmp_path: Path, text: str, needle: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    done = _run("router", "--config", str(config), "--nats-url", "nats://127.0.0.1:3")
    assert done.returncode == 2, done
    assert needle in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_missing_encryption_key_is_one_line_and_status_2(tmp_path: Path, nats_url: str,
                                                          pg_dsn: str) -> None:
    config = tmp_path / "secret.yaml"
    config.write_text(f"database:\n  url: {pg_dsn}\nproviders:\n  - {{name: openai, "
                      "api_key: sk-secret}\nroutes:\n  - {model_alias: m, targets: "
                      "[{provider: openai, model: x}]}\n")
    env = {k: v for k, v in os.environ.items() if k != "GANDALF_ENCRYPTION_KEY"}
    done = subprocess.run([*GANDALF, "admin", "--config", str(config), "--nats-url", nats_url,
                           "--log-level", "error"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 2, done
    assert "GANDALF_ENCRYPTION_KEY" in done.stderr and "Traceback" not in done.stderr
    assert "sk-secret" not in done.stderr


@pytest.mark.parametrize(("addr", "url"), [
    (":8080", "http://localhost:8080"), ("0.0.0.0:80", "http://localhost:80"),
    ("127.0.0.1:9", "http://127.0.0.1:9"), ("[::1]:8080", "http://[::1]:8080"),
    ("[::]:8080", "http://localhost:8080"),
])
def test_ready_line_url_is_clickable(addr: str, url: str) -> None:
    assert public_url(addr) == url


def test_port_in_use_is_one_line_and_status_2(tmp_path: Path) -> None:
    import socket

    config = tmp_path / "g.yaml"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config.write_text(f"server:\n  addr: 127.0.0.1:{port}\nproviders:\n  - {{name: openai, "
                          "api_key: sk-x}\nroutes:\n  - {model_alias: m, targets: "
                          "[{provider: openai, model: x}]}\n")
        for command in ("ingress", "up"):
            done = _run(command, "--config", str(config), "--nats-url", "nats://127.0.0.1:3",
                        "--data-dir", str(tmp_path / "state"), "--log-level", "error",
                        env={"GANDALF_ADMIN_KEY": "gnd_x", "GANDALF_DATABASE_URL": ""})
            assert done.returncode == 2, (command, done)
            assert f"cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr
            assert "Traceback" not in done.stderr
