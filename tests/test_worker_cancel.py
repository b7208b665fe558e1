"""Cancellation races inside one worker pool, on a real NATS connection:
whatever the order of a request and its client's Cancel, the router is
told at once and no upstream call is left running."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from nats.aio.msg import Msg

from gandalf_common.bus import BodyStore, connect
from gandalf_common.config import ProviderConfig
from gandalf_common.contract import (
    CODE_CLIENT_GONE,
    Cancel,
    ExecRequest,
    Failed,
    RouteRequest,
    ctl_decoder,
    encode,
)
from gandalf_workers.handlers import ProviderPool
from gandalf_workers.providers.registry import build_provider


async def _pool(nats_url: str, upstream: Any) -> tuple[Any, ProviderPool, asyncio.Queue[Any]]:
    nc = await connect(nats_url, "worker-cancel-test")
    provider = build_provider(ProviderConfig(name="p", type="openai", base_url=upstream.base_url,
                                             api_key="sk-upstream-secret", max_concurrency=4,
                                             timeout_ms=2000))
    pool = ProviderPool(nc, provider, max_concurrency=4, ttfb_timeout=5, bodies=BodyStore(nc))
    ctl: asyncio.Queue[Any] = asyncio.Queue()

    async def on_ctl(msg: Msg) -> None:
        await ctl.put(ctl_decoder.decode(msg.data))

    await nc.subscribe("test.ctl.worker", cb=on_ctl)
    return nc, pool, ctl


def _exec(nc: Any, request_id: str, model: str) -> Msg:
    route = RouteRequest(request_id=request_id, op="chat", model="m", deadline=time.time() + 10,
                         body=b'{"model":"m","messages":[{"role":"user","content":"x"}]}')
    req = ExecRequest(route=route, provider="p", target_model=model,
                      reply_to="test.reply.nobody", attempt=0)
    return Msg(_client=nc, subject="x", reply="test.ctl.worker", data=encode(req))


def _cancel(nc: Any, request_id: str) -> Msg:
    return Msg(_client=nc, subject="x", data=encode(Cancel(request_id=request_id)))


async def test_cancel_right_after_exec_still_answers_the_router(nats_url: str,
                                                               upstream: Any) -> None:
    nc, pool, ctl = await _pool(nats_url, upstream)
    try:
        await pool.on_exec(_exec(nc, "r1", "hang"))
        await pool.on_cancel(_cancel(nc, "r1"))  # before the task ever ran
        reply = await asyncio.wait_for(ctl.get(), 2)
        assert isinstance(reply, Failed) and reply.code == CODE_CLIENT_GONE
        assert not pool.inflight
    finally:
        await pool.provider.aclose()
        await nc.close()


async def test_cancel_before_exec_drops_the_request(nats_url: str, upstream: Any) -> None:
    nc, pool, ctl = await _pool(nats_url, upstream)
    try:
        await pool.on_cancel(_cancel(nc, "r2"))
        await pool.on_exec(_exec(nc, "r2", "ok"))
        reply = await asyncio.wait_for(ctl.get(), 2)
        assert isinstance(reply, Failed) and reply.code == CODE_CLIENT_GONE
        await asyncio.sleep(0.2)
        assert upstream.requests == []  # no upstream call for a gone client
    finally:
        await pool.provider.aclose()
        await nc.close()


async def test_cancel_mid_call_aborts_upstream(nats_url: str, upstream: Any) -> None:
    nc, pool, ctl = await _pool(nats_url, upstream)
    try:
        await pool.on_exec(_exec(nc, "r3", "hang"))
        assert await upstream.wait_requests_async(1, timeout=2)
        await pool.on_cancel(_cancel(nc, "r3"))
        reply = await asyncio.wait_for(ctl.get(), 2)
        assert isinstance(reply, Failed) and reply.code == CODE_CLIENT_GONE
        assert await upstream.wait_closed_async(0, timeout=1)
    finally:
        await pool.provider.aclose()
        await nc.close()
