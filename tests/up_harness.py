"""Start `gandalf up` as a subprocess on a temporary state directory, as a
user would, and wait for its ready line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

GANDALF = [sys.executable, "-m", "gandalf_app.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any ``GANDALF_*`` variable (the test's own
    settings must not leak into the gateway), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANDALF_")}
    env.update(extra)
    return env


def start_up(config: Path, state: Path, log: Path, *, processes: int = 2,
             within: float = 90.0) -> subprocess.Popen[str]:
    """`gandalf up` with ``config`` and ``state``, stderr to ``log``; returns
    once it printed "ready on" (the test fails with the log otherwise)."""
    with log.open("w") as err:
        proc = subprocess.Popen([*GANDALF, "up", "--config", str(config), "--data-dir",
                                 str(state), "--processes", str(processes), "--log-level",
                                 "warning"], env=clean_env(), stdout=subprocess.DEVNULL,
                                stderr=err, text=True)
    deadline = time.monotonic() + within
    while "ready on" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("gandalf up did not start:\n" + log.read_text())
        time.sleep(0.2)
    return proc


def stop_up(proc: subprocess.Popen[str], timeout: float = 30.0) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
