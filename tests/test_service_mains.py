"""Each service runs on its own as ``python -m gandalf_<service>`` (no
``gandalf`` command, no app package): the five together serve a request,
and a bad config is one line and exit 2."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from gandalf_app.embedded import EmbeddedNats
from gateway_harness import free_port
from managed_harness import ADMIN_KEY, managed_yaml

SERVICES = ["admin", "usage", "router", "workers", "ingress"]


@pytest.mark.parametrize("service", SERVICES)
def test_a_bad_config_is_one_line_and_exit_2(service: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: [\n")
    run = subprocess.run([sys.executable, "-m", f"gandalf_{service}", "--config", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"python -m gandalf_{service}: invalid config")


async def _chat_ok(http: httpx.AsyncClient, url: str) -> bool:
    try:
        r = await http.post(url + "/v1/chat/completions",
                            headers={"authorization": f"Bearer {ADMIN_KEY}"},
                            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    except httpx.HTTPError:
        return False
    return r.status_code == 200


async def test_the_five_services_as_modules_serve_a_request(
        tmp_path: Path, fresh_pg_dsn: str, upstream: Any) -> None:
    nats = EmbeddedNats(tmp_path / "nats")
    nats_url = nats.start()
    port = free_port()
    config = tmp_path / "gandalf.yaml"
    config.write_text(managed_yaml(port, fresh_pg_dsn, upstream.base_url))
    env = dict(os.environ, GANDALF_ADMIN_KEY=ADMIN_KEY, GANDALF_NATS_URL=nats_url,
               GANDALF_ENCRYPTION_KEY=base64.b64encode(os.urandom(32)).decode())
    procs = [subprocess.Popen([sys.executable, "-m", f"gandalf_{s}", "--config", str(config),
                               "--log-level", "warning"], env=env)
             for s in SERVICES]
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            url = f"http://127.0.0.1:{port}"
            for _ in range(400):  # up to ~40 s: five interpreters start on two cores
                if await _chat_ok(http, url):
                    break
                assert all(p.poll() is None for p in procs), "a service exited"
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("no 200 from the gateway run as five modules")
        for proc in procs:
            assert proc.poll() is None, "a service exited"
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(30) for proc in procs]
        nats.stop()
    assert codes == [0] * len(SERVICES)
