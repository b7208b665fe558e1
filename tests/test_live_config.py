"""Router and workers follow the managed configuration (NATS KV) at runtime.

No admin service: records are written straight into the KV buckets, as the
admin would replicate them. One shared LiveConfig (managed), the router and
the workers on one real NATS connection; requests go to the router exactly
as the ingress sends them (a RouteRequest with a reply inbox).

The buckets are shared by the whole test session: every test starts from
empty buckets and empties them again at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError

from gandalf_common import contract
from gandalf_common.bus import connect
from gandalf_common.config import GatewayConfig, ProviderConfig, RouteConfig, RouteTargetConfig
from gandalf_common.contract import (
    Cancel,
    Chunk,
    Complete,
    End,
    ErrorReply,
    RouteRequest,
    encode,
    reply_decoder,
)
from gandalf_common.crypto import ENV_KEY, SecretBox, generate_key, parse_key
from gandalf_common.kv import ensure_buckets
from gandalf_common.live import LiveConfig, provider_record, route_record
from gandalf_common.records import (
    CONFIG_BUCKET,
    KEYS_BUCKET,
    PROVIDER_PREFIX,
    ROUTE_PREFIX,
    ProviderRecord,
    RouteRecord,
    config_key,
    encode_record,
)
from gandalf_router.app import RouterService
from gandalf_workers.app import WorkerService
from gateway_harness import UPSTREAM_KEY

BUCKETS = (KEYS_BUCKET, CONFIG_BUCKET)


async def _empty_buckets(nc: NATS) -> dict[str, Any]:
    kvs = await ensure_buckets(nc)
    js = nc.jetstream()
    for bucket in BUCKETS:
        await js.purge_stream(f"KV_{bucket}")
    return kvs


async def until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@dataclass
class Managed:
    """A managed deployment without the admin service: KV, router, workers."""

    nc: NATS
    kv: Any
    box: SecretBox
    upstream: Any
    live: LiveConfig
    router: RouterService | None = None
    workers: WorkerService | None = None
    replies: list[Any] = field(default_factory=list)

    async def start(self) -> None:
        cfg = self.live.cfg
        await self.live.start(self.nc)  # shared: started by its owner, not the services
        self.router = RouterService(cfg, self.live)
        self.workers = WorkerService(cfg, live=self.live)
        await self.router.start(self.nc)
        await self.workers.start(self.nc)

    def provider(self, name: str, *, api_key: str = UPSTREAM_KEY, box: SecretBox | None = None,
                 **kw: Any) -> ProviderRecord:
        pcfg = ProviderConfig(name=name, type=kw.pop("type", "openai"),
                              base_url=kw.pop("base_url", self.upstream.base_url),
                              api_key=api_key, timeout_ms=5000, **kw)
        return provider_record(pcfg, box or self.box)

    async def put_provider(self, record: ProviderRecord) -> None:
        await self.kv.put(config_key(PROVIDER_PREFIX, record.id), encode_record(record))
        if self.router is not None:  # started: wait until it is applied
            await until(lambda: self.live.providers.get(record.id) == record)
            await self.settled()

    async def delete_provider(self, name: str) -> None:
        await self.kv.delete(config_key(PROVIDER_PREFIX, name))
        await until(lambda: name not in self.live.providers)
        await self.settled()

    async def put_route(self, alias: str, *targets: tuple[str, str]) -> RouteRecord:
        record = route_record(RouteConfig(model_alias=alias, targets=[
            RouteTargetConfig(provider=p, model=m) for p, m in targets]))
        await self.kv.put(config_key(ROUTE_PREFIX, record.id), encode_record(record))
        if self.router is not None:
            await until(lambda: self.live.routes.get(alias) == record)
        return record

    async def settled(self) -> None:
        if self.workers is not None:
            await self.workers.settled()

    async def ask(self, alias: str, *, stream: bool = False, timeout: float = 5.0,
                  request_id: str = "") -> list[Any]:
        """One request through the router, as the ingress sends it: the
        replies up to the last one (Complete, End or ErrorReply)."""
        inbox = self.nc.new_inbox()
        got: asyncio.Queue[Any] = asyncio.Queue()

        async def on_reply(msg: Msg) -> None:
            await got.put(reply_decoder.decode(msg.data) if msg.data else
                          ErrorReply(status=503, code="no_router", message="no router"))

        sub = await self.nc.subscribe(inbox, cb=on_reply)
        body = json.dumps({"model": alias, "messages": [{"role": "user", "content": "hi"}],
                           "stream": stream}).encode()
        req = RouteRequest(request_id=request_id or uuid.uuid4().hex, op=contract.OP_CHAT,
                           model=alias, body=body, stream=stream,
                           deadline=time.time() + timeout)
        try:
            await self.nc.publish(contract.router_op_subject(contract.OP_CHAT), encode(req),
                                  reply=inbox)
            out: list[Any] = []
            while True:
                msg = await asyncio.wait_for(got.get(), timeout)
                out.append(msg)
                if isinstance(msg, Complete | End | ErrorReply):
                    return out
        finally:
            await sub.unsubscribe()

    async def ping(self, name: str) -> bool:
        try:
            await self.nc.request(contract.ping_provider(name), b"", timeout=1)
        except NoRespondersError:
            return False
        return True

    def last_upstream(self) -> Any:
        return self.upstream.requests[-1]


@pytest_asyncio.fixture
async def managed(managed_nats_url: str, upstream: Any,
                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Managed]:
    key = generate_key()
    monkeypatch.setenv(ENV_KEY, key)
    nc = await connect(managed_nats_url, "live-config-test")
    kvs = await _empty_buckets(nc)
    env = Managed(nc=nc, kv=kvs[CONFIG_BUCKET], box=SecretBox(parse_key(key)),
                  upstream=upstream, live=LiveConfig(GatewayConfig(), managed=True))
    try:
        yield env
    finally:
        if env.workers is not None:
            await env.workers.stop(2)
        if env.router is not None:
            await env.router.stop(2)
        await env.live.stop()
        with contextlib.suppress(Exception):
            await _empty_buckets(nc)
        await nc.close()


def _ok(replies: list[Any]) -> Complete:
    last = replies[-1]
    assert isinstance(last, Complete), last
    assert last.status == 200
    return last


# ------------------------------------------------------------------ tests


async def test_alias_that_exists_only_in_kv(managed: Managed) -> None:
    await managed.put_provider(managed.provider("kv-p"))
    await managed.put_route("kv-alias", ("kv-p", "kv-model"))
    await managed.start()  # loads what is already in the buckets
    assert managed.live.cfg.providers == [] and managed.live.cfg.routes == []

    done = _ok(await managed.ask("kv-alias"))
    assert done.provider == "kv-p" and done.model == "kv-model"
    assert managed.last_upstream().body["model"] == "kv-model"
    assert managed.last_upstream().headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


async def test_provider_and_route_added_at_runtime(managed: Managed) -> None:
    await managed.start()
    missing = (await managed.ask("late"))[-1]
    assert isinstance(missing, ErrorReply) and missing.status == 404
    assert not await managed.ping("late-p")

    await managed.put_provider(managed.provider("late-p"))
    await managed.put_route("late", ("late-p", "late-model"))
    assert await managed.ping("late-p")

    done = _ok(await managed.ask("late"))
    assert done.provider == "late-p"
    seen = managed.last_upstream()
    assert seen.body["model"] == "late-model"
    # The secret was sealed in KV; the worker opened it.
    assert seen.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


async def test_route_change_is_used_by_the_next_request(managed: Managed) -> None:
    await managed.put_provider(managed.provider("rc-p"))
    await managed.put_route("rc", ("rc-p", "first-model"))
    await managed.start()
    _ok(await managed.ask("rc"))
    assert managed.last_upstream().body["model"] == "first-model"

    await managed.put_route("rc", ("rc-p", "second-model"))
    _ok(await managed.ask("rc"))
    assert managed.last_upstream().body["model"] == "second-model"


async def test_key_update_while_streaming(managed: Managed, upstream: Any,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream, "api_key", None)  # accept both keys; headers are recorded
    await managed.put_provider(managed.provider("rot", api_key="sk-old"))
    await managed.put_route("rot-slow", ("rot", "chunk-delay-50+words-16"))
    await managed.put_route("rot-fast", ("rot", "ok"))
    await managed.start()
    assert managed.workers is not None

    streaming = asyncio.create_task(managed.ask("rot-slow", stream=True))
    assert await upstream.wait_requests_async(1, timeout=3)
    assert upstream.requests[0].headers["authorization"] == "Bearer sk-old"

    # Requests keep flowing during the swap: none may see "no responders".
    stop = asyncio.Event()

    async def steady() -> list[Any]:
        out = []
        while not stop.is_set():
            out.append((await managed.ask("rot-fast"))[-1])
        return out

    traffic = asyncio.create_task(steady())
    await asyncio.sleep(0.05)
    await managed.put_provider(managed.provider("rot", api_key="sk-new"))
    assert managed.workers.inflight() >= 1  # the old pool still streams
    await asyncio.sleep(0.05)
    stop.set()
    during = await traffic
    assert during and all(isinstance(r, Complete) and r.status == 200 for r in during), during

    _ok(await managed.ask("rot-fast"))
    assert managed.last_upstream().headers["authorization"] == "Bearer sk-new"

    replies = await streaming
    assert isinstance(replies[-1], End), replies[-1]
    assert [r.seq for r in replies] == list(range(len(replies)))
    assert sum(isinstance(r, Chunk) for r in replies) >= 16
    await until(lambda: managed.workers is not None and managed.workers.inflight() == 0)
    slow = [r for r in upstream.requests if r.body["model"].startswith("chunk-delay")]
    assert [r.headers["authorization"] for r in slow] == ["Bearer sk-old"]


async def test_disabled_and_removed_provider_goes_away(managed: Managed) -> None:
    await managed.put_provider(managed.provider("gone"))
    await managed.put_route("gone-alias", ("gone", "ok"))
    await managed.start()
    _ok(await managed.ask("gone-alias"))
    assert await managed.ping("gone")

    await managed.put_provider(managed.provider("gone", enabled=False))
    assert not await managed.ping("gone")
    off = (await managed.ask("gone-alias"))[-1]
    assert isinstance(off, ErrorReply) and off.status == 503

    await managed.put_provider(managed.provider("gone"))  # enabled again
    assert await managed.ping("gone")
    _ok(await managed.ask("gone-alias"))

    await managed.delete_provider("gone")
    assert not await managed.ping("gone")
    assert managed.workers is not None and "gone" not in managed.workers.pools
    err = (await managed.ask("gone-alias"))[-1]
    assert isinstance(err, ErrorReply) and err.status == 503
    assert err.code in ("no_provider_available", "no_worker")


async def test_unbuildable_provider_is_skipped_and_logged(
        managed: Managed, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gandalf.worker")
    stranger = SecretBox(parse_key(generate_key()))
    await managed.put_provider(managed.provider("foreign", api_key="sk-foreign-secret",
                                                box=stranger))
    await managed.put_provider(managed.provider("good"))
    await managed.put_route("foreign-alias", ("foreign", "ok"))
    await managed.put_route("good-alias", ("good", "ok"))
    await managed.start()

    assert managed.workers is not None and set(managed.workers.pools) == {"good"}
    assert "provider foreign skipped" in caplog.text
    err = (await managed.ask("foreign-alias"))[-1]
    assert isinstance(err, ErrorReply) and err.status == 503 and err.code == "no_worker"
    _ok(await managed.ask("good-alias"))

    # At runtime too: an unsupported hosting, then a good change still applies.
    await managed.put_provider(managed.provider("odd", hosting="bedrock"))
    assert "provider odd skipped" in caplog.text
    await managed.put_provider(managed.provider("later"))
    await managed.put_route("later-alias", ("later", "ok"))
    _ok(await managed.ask("later-alias"))
    assert set(managed.workers.pools) == {"good", "later"}

    # An update that cannot be built keeps the provider's previous pool.
    await managed.put_provider(managed.provider("good", api_key="sk-x", box=stranger))
    assert "provider good keeps its previous configuration" in caplog.text
    _ok(await managed.ask("good-alias"))
    assert "sk-foreign-secret" not in caplog.text and "sk-x" not in caplog.text


async def test_cancel_reaches_a_retiring_pool(managed: Managed, upstream: Any) -> None:
    await managed.put_provider(managed.provider("cx"))
    await managed.put_route("cx-slow", ("cx", "chunk-delay-100+words-40"))
    await managed.start()
    assert managed.workers is not None

    streaming = asyncio.create_task(managed.ask("cx-slow", stream=True, request_id="cx-1"))
    assert await upstream.wait_requests_async(1, timeout=3)
    await managed.put_provider(managed.provider("cx", weight=2))  # any field: a new pool
    assert managed.workers.inflight() == 1  # in the old pool, no longer subscribed

    await managed.nc.publish(contract.CANCEL, encode(Cancel(request_id="cx-1")))
    await until(lambda: managed.workers is not None and managed.workers.inflight() == 0)
    assert await upstream.wait_closed_async(0, timeout=2)  # the upstream call was dropped
    streaming.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await streaming
