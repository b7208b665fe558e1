"""A request whose router or worker dies fails within seconds, not at the
client's timeout: whoever holds a request sends heartbeats to the ingress's
reply inbox, and the ingress gives up after LIVENESS_S of silence.

The dead process is a subscriber on the router subject that takes requests
and then says nothing more, as a killed process would (on a private NATS:
the session's test gateway serves the shared one)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from gandalf_common import contract
from gandalf_common.bus import connect
from gandalf_common.contract import Chunk, encode
from gandalf_common.liveness import LIVENESS_S
from gateway_harness import TEST_KEY, UPSTREAM_KEY, free_port, pipeline

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def config(port: int, upstream: str) -> str:
    return f"""
server: {{addr: "127.0.0.1:{port}", write_timeout: 60s}}
rate_limits: {{default_rpm: 0, default_tpm: 0}}
cache: {{enabled: false}}
providers:
  - {{name: lv, type: openai, base_url: "{upstream}", api_key: {UPSTREAM_KEY}}}
routes:
  - model_alias: m
    targets: [{{provider: lv, model: lv-ok}}]
  - model_alias: slow
    targets: [{{provider: lv, model: delay-{int(LIVENESS_S * 1000) + 2500}}}]
keys:
  - {{name: t, key: {TEST_KEY}, role: admin}}
"""


async def _dead_router(nats_url: str, *, first_chunk: bool) -> Any:
    """Takes every routed request; optionally sends one chunk; then silence."""
    nc = await connect(nats_url, "dead-router")

    async def took(msg: Any) -> None:
        if first_chunk:
            await nc.publish(msg.reply, encode(Chunk(attempt=0, seq=0,
                                                     data=b'{"choices": []}')))

    await nc.subscribe(contract.ROUTER_WILDCARD, queue=contract.ROUTER_QUEUE, cb=took)
    await nc.flush()
    return nc


async def test_a_request_whose_handler_died_fails_fast(own_nats: Any,
                                                        mock_upstream: Any) -> None:
    url_nats = own_nats.url
    async with pipeline(url_nats, config(free_port(), mock_upstream.base_url),
                        backend=False) as url:
        nc = await _dead_router(url_nats, first_chunk=False)
        try:
            async with httpx.AsyncClient(timeout=30) as http:
                t0 = time.monotonic()
                r = await http.post(f"{url}/v1/chat/completions", json=BODY,
                                    headers={"Authorization": f"Bearer {TEST_KEY}"})
                took = time.monotonic() - t0
        finally:
            await nc.close()
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "handler_lost"
    assert r.headers.get("retry-after") == "1"
    assert LIVENESS_S - 0.5 <= took <= LIVENESS_S + 1.5, took


async def test_a_started_stream_whose_handler_died_ends_with_an_error(
        own_nats: Any, mock_upstream: Any) -> None:
    url_nats = own_nats.url
    async with pipeline(url_nats, config(free_port(), mock_upstream.base_url),
                        backend=False) as url:
        nc = await _dead_router(url_nats, first_chunk=True)
        try:
            async with httpx.AsyncClient(timeout=30) as http:
                t0 = time.monotonic()
                r = await http.post(f"{url}/v1/chat/completions", json={**BODY, "stream": True},
                                    headers={"Authorization": f"Bearer {TEST_KEY}"})
                took = time.monotonic() - t0
        finally:
            await nc.close()
    assert r.status_code == 200  # the stream had started
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "handler_lost"
    assert took <= LIVENESS_S + 1.5, took


async def test_heartbeats_keep_a_slow_upstream_call_alive(own_nats: Any,
                                                          mock_upstream: Any) -> None:
    """Router and worker alive, the upstream slower than LIVENESS_S: 200."""
    yaml = config(free_port(), mock_upstream.base_url)
    async with pipeline(own_nats.url, yaml) as url, httpx.AsyncClient(timeout=30) as http:
        for stream in (False, True):
            r = await http.post(f"{url}/v1/chat/completions",
                                json={**BODY, "model": "slow", "stream": stream},
                                headers={"Authorization": f"Bearer {TEST_KEY}"})
            assert r.status_code == 200, r.text
            assert "handler_lost" not in r.text


async def test_a_worker_that_dies_holding_the_request_fails_it_fast(
        own_nats: Any, mock_upstream: Any) -> None:
    """A real router hands the request to a "worker" that takes it and dies:
    the router stops speaking for it, so the ingress gives up in seconds."""
    from gandalf_common.config import parse_config
    from gandalf_router.app import RouterService

    yaml = config(free_port(), mock_upstream.base_url)
    nc = await connect(own_nats.url, "dead-worker")
    router = RouterService(parse_config(yaml)[0])
    await router.start(nc)
    await nc.subscribe(contract.provider_subject("lv", contract.OP_CHAT), cb=_ignore)
    try:
        async with pipeline(own_nats.url, yaml, backend=False) as url, \
                httpx.AsyncClient(timeout=30) as http:
            t0 = time.monotonic()
            r = await http.post(f"{url}/v1/chat/completions", json=BODY,
                                headers={"Authorization": f"Bearer {TEST_KEY}"})
            took = time.monotonic() - t0
    finally:
        await router.stop(1.0)
        await nc.close()
    assert r.status_code == 502 and r.json()["error"]["code"] == "handler_lost", r.text
    assert took <= LIVENESS_S + 1.5, took


async def _ignore(msg: Any) -> None:
    """Takes the request and never answers, as a process killed right then."""
