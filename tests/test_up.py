"""`gandalf up` as a user runs it: a subprocess with embedded NATS and
PostgreSQL, a real client, a second instance refused, SIGTERM drains."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway_harness import UPSTREAM_KEY, free_port

GANDALF = [sys.executable, "-m", "gandalf_app.cli"]


def _config(tmp: Path, port: int, upstream: str, *, keys: bool = True) -> Path:
    key_block = """
keys:
  - name: admin
    key: gnd_up_test_key
    role: admin
""" if keys else ""
    path = tmp / "gandalf.yaml"
    path.write_text(f"""
server:
  addr: "127.0.0.1:{port}"
  shutdown_timeout: 10s
providers:
  - name: mock
    type: openai
    base_url: {upstream}
    api_key: {UPSTREAM_KEY}
routes:
  - model_alias: m
    targets: [{{provider: mock, model: ok}}]
  - model_alias: slow
    targets: [{{provider: mock, model: delay-1500}}]
{key_block}""")
    return path


class Up:
    """A running `gandalf up` whose stderr is collected in the background."""

    def __init__(self, config: Path, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*GANDALF, "up", "--config", str(config), "--data-dir", str(data_dir),
             "--processes", "1", "--log-level", "warning"],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output:
                return True
            if self.proc.poll() is not None:
                return text in self.output
            time.sleep(0.05)
        return False

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.mark.slow
def test_gandalf_up_end_to_end(tmp_path: Path, upstream: Any) -> None:
    port = free_port()
    config = _config(tmp_path, port, upstream.base_url)
    data = tmp_path / "state"
    up = Up(config, data, env={"GANDALF_NATS_URL": "", "GANDALF_ADMIN_KEY": ""})
    try:
        assert up.wait_for("ready on", 90), up.output
        assert "embedded NATS" in up.output and "embedded PostgreSQL" in up.output
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1",
                               api_key="gnd_up_test_key", max_retries=0)
        reply = client.chat.completions.create(model="m",
                                               messages=[{"role": "user", "content": "up"}])
        assert reply.choices[0].message.content == "mock reply to: up"
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200

        # A second instance on the same state directory refuses to start.
        second = subprocess.run([*GANDALF, "up", "--config", str(config), "--data-dir",
                                 str(data)], capture_output=True, text=True, timeout=30)
        assert second.returncode != 0
        assert "already running" in second.stderr

        # SIGTERM while a request is in flight: it still completes.
        result: dict[str, Any] = {}

        def slow_call() -> None:
            try:
                result["reply"] = client.chat.completions.create(
                    model="slow", messages=[{"role": "user", "content": "drain"}])
            except Exception as exc:
                result["error"] = exc

        caller = threading.Thread(target=slow_call)
        caller.start()
        assert upstream.wait_for(lambda: any(r.model == "delay-1500"
                                             for r in upstream.requests), timeout=5)
        up.proc.send_signal(signal.SIGTERM)
        caller.join(timeout=20)
        assert "error" not in result, result.get("error")
        assert result["reply"].choices[0].message.content == "mock reply to: drain"
        assert up.stop() == 0
        assert "stopped" in up.output
    finally:
        up.stop()


@pytest.mark.slow
def test_gandalf_up_generates_admin_key_once(tmp_path: Path, upstream: Any) -> None:
    port = free_port()
    config = _config(tmp_path, port, upstream.base_url, keys=False)
    data = tmp_path / "state"
    env = {"GANDALF_NATS_URL": "", "GANDALF_ADMIN_KEY": ""}
    up = Up(config, data, env=env)
    try:
        assert up.wait_for("ready on", 90), up.output
        key = next(line.strip() for line in up.lines if line.strip().startswith("gnd_"))
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models",
                           headers={"authorization": f"Bearer {key}"})
        assert models.status_code == 200
        # The admin API is on the public port: a key made there works at once,
        # and the provider secrets from the YAML never come back.
        admin = f"http://127.0.0.1:{port}/admin/v1"
        auth = {"authorization": f"Bearer {key}"}
        created = httpx.post(f"{admin}/keys", headers=auth, json={"role": "member"})
        assert created.status_code == 201, created.text
        member = {"authorization": f"Bearer {created.json()['key']}"}
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", headers=member).status_code == 200
        providers = httpx.get(f"{admin}/providers", headers=auth)
        assert providers.status_code == 200 and UPSTREAM_KEY not in providers.text
        assert httpx.get(f"{admin}/providers", headers=member).status_code == 403
        assert up.stop() == 0
    finally:
        up.stop()
    # The second start reuses it and does not print it again.
    again = Up(config, data, env=env)
    try:
        assert again.wait_for("ready on", 90), again.output
        assert key not in again.output and key[:12] in again.output
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models",
                           headers={"authorization": f"Bearer {key}"})
        assert models.status_code == 200
    finally:
        again.stop()


def test_config_errors_are_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  addr: ':8080'\nproviders:\n  - name: p\n"
                   "    api_key: ${GANDALF_TEST_SURELY_UNSET}\n")
    run = subprocess.run([*GANDALF, "router", "-config", str(bad)], capture_output=True,
                         text=True, timeout=30,
                         env={k: v for k, v in os.environ.items()
                              if k != "GANDALF_TEST_SURELY_UNSET"})
    assert run.returncode != 0
    assert "GANDALF_TEST_SURELY_UNSET" in run.stderr and ":5" in run.stderr

    typed = tmp_path / "typed.yaml"
    typed.write_text("providers:\n  - name: openai\n    timeout_ms: soon\n")
    run = subprocess.run([*GANDALF, "--config", str(typed), "router"], capture_output=True,
                         text=True, timeout=30)
    assert run.returncode != 0
    assert "providers[0].timeout_ms" in run.stderr and "soon" in run.stderr

    good = tmp_path / "good.yaml"
    good.write_text("providers: []\n")
    bad_key = subprocess.run([*GANDALF, "up", "--config", str(good), "--data-dir",
                              str(tmp_path / "state")], capture_output=True, text=True,
                             timeout=30, env={**os.environ, "GANDALF_ADMIN_KEY": "sk-nope"})
    assert bad_key.returncode != 0 and "must start with gnd_" in bad_key.stderr

    missing = subprocess.run([*GANDALF, "router", "--config", str(tmp_path / "nope.yaml")],
                             capture_output=True, text=True, timeout=30)
    assert missing.returncode != 0 and "No such file" in missing.stderr


def test_version() -> None:
    for flag in (["version"], ["-version"]):
        run = subprocess.run([*GANDALF, *flag], capture_output=True, text=True, timeout=30)
        assert run.returncode == 0 and run.stdout.startswith("gandalf ")
