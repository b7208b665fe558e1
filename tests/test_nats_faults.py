"""NATS blinks: in-flight requests fail fast with a clear error, requests
while it is down get 503 at once, and traffic resumes after reconnect."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from gandalf_app.embedded import EmbeddedNats
from gateway_harness import TEST_KEY, start_gateway

BODY = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
AUTH = {"authorization": f"Bearer {TEST_KEY}"}


async def test_nats_restart(own_nats: EmbeddedNats, upstream: Any) -> None:
    url = own_nats.start()
    gw = await start_gateway(url, upstream.base_url)
    try:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
            assert (await http.post("/v1/chat/completions", json=BODY,
                                    headers=AUTH)).status_code == 200

            hanging = asyncio.create_task(http.post(
                "/v1/chat/completions", headers=AUTH,
                json={**BODY, "model": "hang"}))
            assert await upstream.wait_requests_async(2, timeout=5)
            t0 = time.monotonic()
            own_nats.stop()
            resp = await hanging
            assert resp.status_code == 503
            assert resp.json()["error"]["code"] == "bus_disconnected"
            assert time.monotonic() - t0 < 3

            down = await http.post("/v1/chat/completions", json=BODY, headers=AUTH)
            assert down.status_code == 503
            assert down.json()["error"]["code"] == "bus_unavailable"
            assert down.headers["retry-after"] == "1"

            assert own_nats.start() == url
            deadline = time.monotonic() + 10
            status = 0
            while time.monotonic() < deadline:
                status = (await http.post("/v1/chat/completions", json=BODY,
                                          headers=AUTH)).status_code
                if status == 200:
                    break
                await asyncio.sleep(0.1)
            assert status == 200
    finally:
        await gw.close()


async def test_no_router_is_503_at_once(own_nats: EmbeddedNats, upstream: Any) -> None:
    from gandalf_common.bus import connect
    from gandalf_common.config import parse_config
    from gandalf_ingress.app import IngressService
    from gateway_harness import free_port, gateway_yaml

    url = own_nats.start()
    port = free_port()
    cfg, _ = parse_config(gateway_yaml(port, upstream.base_url))
    nc = await connect(url, "ingress-only")
    stop = asyncio.Event()
    task = asyncio.create_task(IngressService(cfg).serve(nc, stop))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            for _ in range(100):
                try:
                    ready = await http.get("/readyz")
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.02)
            assert ready.status_code == 503 and "router" in ready.text
            t0 = time.monotonic()
            resp = await http.post("/v1/chat/completions", json=BODY, headers=AUTH)
            assert resp.status_code == 503
            assert resp.json()["error"]["code"] == "no_router"
            assert time.monotonic() - t0 < 1
    finally:
        stop.set()
        await task
        await nc.close()
