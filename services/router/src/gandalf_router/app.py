"""The router: picks a target for each request and fails over before the
first byte reached the client (invariant 2).

Providers and routes come from :class:`~gandalf_common.live.LiveConfig`:
the YAML (static mode) or the admin's NATS KV buckets (managed mode). A
change marks the route table stale; the next request builds a new table and
swaps the reference, so in-flight requests keep the table they started with.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from gandalf_common import contract
from gandalf_common.bus import serve_pings, unsubscribe_all
from gandalf_common.config import GatewayConfig
from gandalf_common.contract import (
    CODE_CLIENT_GONE,
    CODE_SATURATED,
    Cancel,
    ErrorReply,
    ExecRequest,
    Failed,
    Pong,
    RouteRequest,
    Started,
    ctl_decoder,
    encode,
    health_decoder,
    presence_decoder,
    route_decoder,
)
from gandalf_common.errors import ModelNotFoundError
from gandalf_common.live import LiveConfig
from gandalf_common.liveness import Heartbeats
from gandalf_common.presence import Membership

from .balance import Balancer, target_key
from .routing import RouteTable, verdict

log = logging.getLogger("gandalf.router")

#: Other workers of an instance asked after one answered "saturated".
SPILL_LIMIT = 3
#: Requests one router process routes at once; more are refused with 503
#: (each ingress bounds its own in-flight requests too).
MAX_INFLIGHT = 16384


class RouterService:
    """``live``: a :class:`LiveConfig` shared with other services of the
    process; its owner (the process runtime) starts and stops it. Without
    one the router builds its own from ``cfg`` (static from the YAML, or
    managed when the deployment has a database) and starts/stops it itself.
    """

    def __init__(self, cfg: GatewayConfig, live: LiveConfig | None = None) -> None:
        self._owns_live = live is None
        self.live = LiveConfig(cfg) if live is None else live
        self._table = RouteTable.from_live(self.live)
        self._stale = False
        self.live.on_change(self._on_config_change)
        self._nc: NATS | None = None
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.balancer = Balancer()
        #: provider instance -> Unix time until which its circuit is open.
        self._open_until: dict[str, float] = {}
        #: Live workers per instance: the owners of coalescable requests.
        self.members = Membership()
        self.heartbeats: Heartbeats | None = None
        self._holds = itertools.count()  # one hold per routing task

    @property
    def table(self) -> RouteTable:
        """The current route table, rebuilt after a provider or route change.

        Rebuilt on first use rather than in the listener: loading a bucket of
        N records costs one build, not N. The build is synchronous (no await),
        so nobody ever sees a half-built table.
        """
        if self._stale:
            self._stale = False
            self._table = RouteTable.from_live(self.live)
        return self._table

    def _on_config_change(self, kind: str, ident: str, _record: object) -> None:
        if kind in ("provider", "route"):
            self._stale = True

    async def start(self, nc: NATS) -> None:
        if self._owns_live:
            await self.live.start(nc)
        self._nc = nc
        self.heartbeats = Heartbeats(nc)
        self._subs.append(await nc.subscribe(
            contract.ROUTER_WILDCARD, queue=contract.ROUTER_QUEUE, cb=self._on_request,
            pending_msgs_limit=65536, pending_bytes_limit=256 * 1024 * 1024))
        pong = encode(Pong(service="router", pid=os.getpid()))
        self._subs.append(await serve_pings(nc, contract.PING_ROUTER, contract.ROUTER_QUEUE,
                                            pong))
        # Breaker transitions from every worker: an instance any worker has
        # opened is skipped by every router until its open timeout ends.
        self._subs.append(await nc.subscribe(contract.HEALTH_WILDCARD, cb=self._on_health))
        self._subs.append(await nc.subscribe(contract.PRESENCE_WILDCARD, cb=self._on_presence))
        await nc.publish(contract.PRESENCE_HELLO, b"")  # workers answer with presence

    async def _on_presence(self, msg: Msg) -> None:
        self.members.heard(presence_decoder.decode(msg.data))

    async def _on_health(self, msg: Msg) -> None:
        health = health_decoder.decode(msg.data)
        if health.state == "open":
            self._open_until[health.instance] = max(self._open_until.get(health.instance, 0),
                                                    health.until)
        elif health.state == "closed":
            self._open_until.pop(health.instance, None)

    def _skip(self, provider: str, now: float) -> bool:
        until = self._open_until.get(provider)
        return until is not None and now < until

    async def _on_request(self, msg: Msg) -> None:
        if not msg.reply:
            return
        deadline = contract.deadline_of(msg.headers)
        if deadline and time.time() >= deadline:
            return  # the ingress has answered 504 already
        if len(self._tasks) >= MAX_INFLIGHT:
            await self._nc.publish(msg.reply, encode(ErrorReply(  # type: ignore[union-attr]
                status=503, code="router_busy", retry_after=1.0,
                message="the router is at its limit of concurrent requests")))
            return
        # Decoded as it came (deadline 0 in the body): forwarded as is, with
        # the header's deadline beside it.
        req = route_decoder.decode(msg.data)
        # Held (heartbeats to the ingress) while the router itself works on
        # it; a worker that has it sends its own.
        key = f"{req.request_id}\x00{next(self._holds)}"
        self.heartbeats.hold(key, msg.reply)  # type: ignore[union-attr]
        task = asyncio.create_task(self._route(req, msg.reply, deadline, key),
                                   name=req.request_id)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._done(t, key))

    def _done(self, task: asyncio.Task[None], key: str) -> None:
        self._tasks.discard(task)
        if self.heartbeats is not None:
            self.heartbeats.release(key)

    async def _route(self, req: RouteRequest, reply_to: str, deadline: float = 0.0,
                     held: str = "") -> None:
        nc = self._nc
        assert nc is not None
        table = self.table  # this request's view, whatever changes meanwhile
        targets = table.targets(req.model)
        if targets is None:
            err = ModelNotFoundError(req.model)
            await nc.publish(reply_to, encode(ErrorReply(
                status=404, type="invalid_request_error", code=err.code, message=err.message)))
            return
        kind = req.native.kind if req.native is not None else ""
        able = table.able(targets, req.op, kind)
        pin = req.native.pin if req.native is not None else ""
        if pin:
            # A stored response is on the instance that created it, only.
            able = [t for t in able if t.provider == pin]
        if targets and not able:
            what = f"the {kind} API" if kind else f"the {req.op} operation"
            message = f"no provider of model {req.model!r} supports {what}"
            if pin:
                message = (f"the stored response is on a provider that model {req.model!r} "
                           "does not route to (stored responses and previous_response_id "
                           "need the OpenAI-type instance that created them)")
            await nc.publish(reply_to, encode(ErrorReply(
                status=400, type="invalid_request_error", code="unsupported",
                message=message)))
            return
        targets = self.balancer.order(able, table.strategy(req.model))
        headers = contract.deadline_headers(deadline)
        failures: list[Failed] = []
        attempt = 0
        for attempt, target in enumerate(targets):
            if self._skip(target.provider, time.time()):
                failures.append(Failed(attempt=attempt, status=503, code="circuit_open",
                                       message=f"{target.provider}: circuit open"))
                continue
            remaining = deadline - time.time() if deadline else 300.0
            if remaining <= 0:
                failures.append(Failed(attempt=attempt, status=504, type="timeout_error",
                                       code="deadline_exceeded",
                                       message="request deadline exceeded"))
                break
            exec_req = ExecRequest(route=req, provider=target.provider,
                                   target_model=target.model, reply_to=reply_to,
                                   attempt=attempt)
            key = target_key(target)
            self.balancer.start(key)
            t0 = time.monotonic()
            ok = False
            # The worker speaks for the request while it has it: if it dies,
            # the ingress hears nothing and fails the request within seconds
            # (the router's own wait for its answer may be long: time to
            # first byte).
            if held and self.heartbeats is not None:
                self.heartbeats.release(held)
            try:
                ctl = await self._exec(nc, req, target.provider, encode(exec_req), headers,
                                       deadline or time.time() + remaining)
                ok = isinstance(ctl, Started)
            except NoRespondersError:
                failures.append(Failed(attempt=attempt, status=503, code="no_worker",
                                       message=f"no worker is serving provider "
                                               f"{target.provider}"))
                continue
            except (TimeoutError, NatsTimeoutError):
                # Make sure a late start cannot mix with anything else.
                await nc.publish(contract.CANCEL, encode(Cancel(request_id=req.request_id,
                                                                attempt=attempt)))
                failures.append(Failed(attempt=attempt, status=504, type="timeout_error",
                                       code="deadline_exceeded",
                                       message=f"{target.provider}: no response before the "
                                               "request deadline"))
                break
            finally:
                # Latency to the first byte (Started) or the failure: Peak-EWMA input.
                self.balancer.finish(key, time.monotonic() - t0, ok)
                if held and self.heartbeats is not None and not ok:
                    self.heartbeats.hold(held, reply_to)  # back with the router
            if isinstance(ctl, Started) or ctl.code == CODE_CLIENT_GONE:
                return  # served, or nobody is waiting any more
            failures.append(ctl)
            if not ctl.retryable:
                break
            log.info("target %s/%s failed (%s), trying next", target.provider, target.model,
                     ctl.message)
        await nc.publish(reply_to, encode(verdict(failures, attempts=attempt + 1)))

    async def _exec(self, nc: NATS, req: RouteRequest, provider: str, data: bytes,
                    headers: dict[str, str] | None, until: float) -> Started | Failed:
        """One attempt on ``provider``: a coalescable request goes to the owner
        of its key (so identical ones meet in one process), any other to the
        instance's queue group; a worker that is full says so at once, and
        the instance's other live workers are asked in turn before it counts
        as saturated (a queue group picks a member at random, full or not).
        Raises ``NoRespondersError`` / timeouts as ``nc.request`` does."""
        ctl: Started | Failed | None = None
        tried: set[str] = set()
        if req.coalesce_key:
            owner = self.members.owner(provider, req.coalesce_key)
            if owner is not None:
                ctl = await self._ask(nc, req, provider, owner, data, headers, until)
                tried.add(owner)
        if ctl is None:
            resp = await nc.request(contract.provider_subject(provider, req.op), data,
                                    timeout=_left(until), headers=headers)
            ctl = ctl_decoder.decode(resp.data)
        if isinstance(ctl, Failed) and ctl.code == CODE_SATURATED and ctl.worker:
            tried.add(ctl.worker)
            for worker in self.members.others(provider, tried)[:SPILL_LIMIT]:
                other = await self._ask(nc, req, provider, worker, data, headers, until)
                if other is not None:
                    ctl = other
                    if not (isinstance(ctl, Failed) and ctl.code == CODE_SATURATED):
                        break
        return ctl

    async def _ask(self, nc: NATS, req: RouteRequest, provider: str, worker: str,
                   data: bytes, headers: dict[str, str] | None,
                   until: float) -> Started | Failed | None:
        """One worker's own subject; None (and forgotten) when it is gone."""
        try:
            resp = await nc.request(contract.worker_subject(worker, provider, req.op), data,
                                    timeout=_left(until), headers=headers)
        except NoRespondersError:
            self.members.forget(provider, worker)
            return None
        return ctl_decoder.decode(resp.data)

    async def stop(self, timeout: float) -> None:
        await unsubscribe_all(self._subs)
        if self._tasks:
            log.info("router: waiting for %d requests in flight", len(self._tasks))
            _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                log.warning("router: request %s still waiting at shutdown", task.get_name())
                task.cancel()
        if self.heartbeats is not None:
            await self.heartbeats.close()
        if self._owns_live:
            await self.live.stop()


def _left(until: float) -> float:
    """Seconds until ``until`` (at least a millisecond: NATS needs a timeout)."""
    return max(0.001, until - time.time())
