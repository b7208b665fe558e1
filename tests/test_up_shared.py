"""`gandalf up` with two gateway processes enforces limits, budgets and the
exact cache as one gateway: they share the embedded Valkey it starts.

Every request opens its own connection, so the kernel spreads them over
both processes; with per-process stores these counts come out about double
(and the remaining-requests header jumps back up)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway_harness import UPSTREAM_KEY, free_port
from up_harness import start_up, stop_up

ADMIN = "gnd_shared_admin_key"

pytestmark = pytest.mark.slow


class UpGateway:
    def __init__(self, url: str, proc: subprocess.Popen[str], log: Path, state: Path) -> None:
        self.url = url
        self.proc = proc
        self.log = log
        self.state = state


@pytest.fixture(scope="module")
def up2(tmp_path_factory: pytest.TempPathFactory, mock_upstream: Any) -> Iterator[UpGateway]:
    tmp = tmp_path_factory.mktemp("up-shared")
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
  - model_alias: budgeted
    targets: [{{provider: mock, model: delay-300}}]
    pricing: {{input: 10, output: 10}}
keys:
  - name: admin
    key: {ADMIN}
    role: admin
cache: {{enabled: true, default_ttl: 60s}}
coalescing: {{enabled: false}}
""")
    log = tmp / "up.log"
    proc = start_up(config, tmp / "state", log)
    assert "embedded Valkey" in log.read_text()
    yield UpGateway(f"http://127.0.0.1:{port}", proc, log, tmp / "state")
    stop_up(proc)


def _new_key(gw: UpGateway, **fields: Any) -> str:
    r = httpx.post(gw.url + "/admin/v1/keys", json={"role": "member", **fields},
                   headers={"authorization": f"Bearer {ADMIN}"}, timeout=10)
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


def _chat(gw: UpGateway, key: str, model: str = "m", content: str = "hi",
          **extra: Any) -> httpx.Response:
    # A fresh connection each time: either process may answer.
    with httpx.Client(timeout=15) as client:
        return client.post(gw.url + "/v1/chat/completions",
                           headers={"authorization": f"Bearer {key}"},
                           json={"model": model, **extra,
                                 "messages": [{"role": "user", "content": content}]})


def _wait_replicated(gw: UpGateway, key: str) -> None:
    deadline = time.monotonic() + 10
    while _chat(gw, key, model="no-such-model").status_code == 401:
        assert time.monotonic() < deadline, "key never reached the gateway processes"
        time.sleep(0.1)


def test_rpm_limit_is_exact_across_processes(up2: UpGateway) -> None:
    key = _new_key(up2, rpm_limit=6)
    _wait_replicated(up2, key)  # an unknown model is refused before the limiter
    statuses: list[int] = []
    remaining: list[int] = []
    for _ in range(16):
        r = _chat(up2, key)
        statuses.append(r.status_code)
        if r.status_code == 200:
            remaining.append(int(r.headers["x-ratelimit-remaining-requests"]))
        else:
            assert r.status_code == 429 and r.headers.get("retry-after"), r.text
    assert statuses.count(200) == 6 and statuses.count(429) == 10, statuses
    assert remaining == sorted(remaining, reverse=True) and len(set(remaining)) == 6, remaining


def test_budget_reservations_are_exact_across_processes(up2: UpGateway) -> None:
    # Each request's estimate is ~$0.0103 at $10/1M tokens: $0.045 fits 4.
    key = _new_key(up2, max_budget=0.045, budget_period="daily")
    _wait_replicated(up2, key)

    async def burst() -> list[int]:
        async def one(client: httpx.AsyncClient) -> int:
            r = await client.post(up2.url + "/v1/chat/completions",
                                  headers={"authorization": f"Bearer {key}"},
                                  json={"model": "budgeted",
                                        "messages": [{"role": "user", "content": "hi"}]})
            return r.status_code

        clients = [httpx.AsyncClient(timeout=15) for _ in range(20)]
        try:
            return list(await asyncio.gather(*(one(c) for c in clients)))
        finally:
            await asyncio.gather(*(c.aclose() for c in clients))

    results = asyncio.run(burst())
    assert results.count(200) == 4, results
    assert set(results) <= {200, 429}, results


def test_exact_cache_hits_whatever_process_answers(up2: UpGateway, upstream: Any) -> None:
    key = _new_key(up2)
    _wait_replicated(up2, key)
    first = _chat(up2, key, content="cache across processes", temperature=0)
    assert first.status_code == 200 and first.headers["x-gandalf-cache"] == "miss"
    for _ in range(8):
        again = _chat(up2, key, content="cache across processes", temperature=0)
        assert again.status_code == 200 and again.headers["x-gandalf-cache"] == "hit"
        assert again.json()["id"] == first.json()["id"]
    calls = [r for r in upstream.requests if b"cache across processes" in r.raw_body]
    assert len(calls) == 1, calls


def test_the_embedded_bus_needs_the_gateways_credentials(up2: UpGateway) -> None:
    """Another local process cannot use the bus: no login, no connection."""
    import nats
    from nats.errors import Error as NatsError

    from gandalf_app.statefile import read_runtime

    runtime = read_runtime(up2.state)
    assert runtime is not None and "@127.0.0.1:" in runtime.nats_url
    password = (up2.state / "nats-password").read_text().strip()
    assert password not in up2.log.read_text()
    for secret in ("nats-password", "nats.conf", "runtime.json"):
        assert (up2.state / secret).stat().st_mode & 0o077 == 0, secret
    anonymous = "nats://" + runtime.nats_url.rsplit("@", 1)[1]

    async def attempt(url: str) -> bool:
        try:
            nc = await asyncio.wait_for(nats.connect(url, allow_reconnect=False,
                                                     connect_timeout=2), 5)
        except (NatsError, OSError, TimeoutError):
            return False
        await nc.close()
        return True

    assert asyncio.run(attempt(runtime.nats_url))
    assert not asyncio.run(attempt(anonymous))


def test_a_process_on_the_bus_cannot_claim_to_be_an_admin(up2: UpGateway) -> None:
    """With the bus credentials but not the bus secret, a forged
    ``Caller(auth="admin_key")`` on ``gandalf.admin.http`` gets nothing."""
    import nats

    from gandalf_app.statefile import read_runtime
    from gandalf_common import contract

    runtime = read_runtime(up2.state)
    assert runtime is not None
    assert (up2.state / "bus-secret").stat().st_mode & 0o077 == 0
    forged = contract.AdminRequest(
        request_id="forged-1", method="GET", path="/admin/v1/keys",
        caller=contract.Caller(role="admin", auth="admin_key"))

    async def ask() -> contract.AdminResponse:
        nc = await nats.connect(runtime.nats_url, allow_reconnect=False)
        try:
            msg = await nc.request(contract.ADMIN_HTTP, contract.encode(forged), timeout=10)
        finally:
            await nc.close()
        return contract.admin_response_decoder.decode(msg.data)

    answer = asyncio.run(ask())
    assert answer.status == 401, answer
    assert b"gnd_" not in answer.body and b'"data"' not in answer.body
