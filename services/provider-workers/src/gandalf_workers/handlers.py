"""Worker side of the bus: execute one ``ExecRequest`` against a provider.

The router waits on the NATS reply of the exec request for ``Started`` or
``Failed``; the response itself goes straight to the ingress inbox
(``reply_to``) with sequence numbers, so the router never touches the bytes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from gandalf_common import contract
from gandalf_common.bus import BodyStore, inline_limit
from gandalf_common.contract import (
    CODE_CLIENT_GONE,
    Chunk,
    Complete,
    End,
    ErrorReply,
    ExecRequest,
    Failed,
    Health,
    Started,
    Usage,
    cancel_decoder,
    encode,
    exec_decoder,
)
from gandalf_common.liveness import Heartbeats

from .breaker import CircuitBreaker, classify
from .flights import Flights
from .metrics import (
    BREAKER_REJECTS,
    BREAKER_STATE,
    BREAKER_TRANSITIONS,
    COALESCED,
    EXPIRED,
    RETRIES,
    SHED,
)
from .native_exec import run_native
from .providers.base import Provider, ProviderResponse, UpstreamFailure
from .rate import TokenBucket
from .retry import RetryBudget, RetryPolicy

log = logging.getLogger("gandalf.worker")

_STATE_VALUE = {"closed": 0, "open": 1, "half_open": 2}
#: How many early cancels a pool remembers (a few seconds' worth at load).
EARLY_CANCELS = 4096

_json_decode = msgspec.json.Decoder(dict[str, Any]).decode
_T = TypeVar("_T")


def _weight(exc: UpstreamFailure) -> float | None:
    """The breaker weight of a failed call (None: not the provider's doing)."""
    if exc.code == "unsupported":
        return None
    return classify(exc.status, timeout=exc.code == "upstream_timeout")


class ProviderPool:
    """All in-flight calls of one provider instance in this process."""

    def __init__(self, nc: NATS, provider: Provider, *, max_concurrency: int,
                 ttfb_timeout: float, bodies: BodyStore, provider_type: str = "openai",
                 breaker: CircuitBreaker | None = None, retry_policy: RetryPolicy | None = None,
                 retry_budget: RetryBudget | None = None, max_rps: float = 0.0,
                 worker_id: str = "") -> None:
        self.nc = nc
        #: Tells each request's ingress this worker is still on it.
        self.heartbeats = Heartbeats(nc)
        #: This pool's name among the instance's workers (presence, direct subject).
        self.worker_id = worker_id or os.urandom(6).hex()
        self.max_rps = max_rps
        #: ``max_rps`` split over the instance's live workers (see rate.py).
        self.rate = TokenBucket(max_rps) if max_rps > 0 else None
        #: Coalesced upstream calls in flight, by target model + coalescing key.
        self.flights: Flights[ProviderResponse] = Flights()
        #: Requests waiting on another request's upstream call (no slot of their own).
        self._followers: set[str] = set()
        #: Set while taking a sibling's breaker transition (not published again).
        self._adopting = False
        self.retry_policy = retry_policy
        self.retry_budget = retry_budget
        self.provider = provider
        self.provider_type = provider_type
        self.breaker = breaker
        if breaker is not None:
            breaker.on_transition = self._on_transition
        self.max_concurrency = max_concurrency
        self.ttfb_timeout = ttfb_timeout
        self.bodies = bodies
        #: request id -> (attempt, task); the cancel subscription looks here.
        self.inflight: dict[str, tuple[int, asyncio.Task[None]]] = {}
        #: Requests whose client went away (vs. cancelled by a shutdown).
        self._abandoned: set[str] = set()
        self._background: set[asyncio.Future[None]] = set()
        #: Cancels that arrived before their request (request id -> attempt).
        self._cancelled_early: OrderedDict[str, int] = OrderedDict()

    async def on_exec(self, msg: Msg) -> None:
        deadline = contract.deadline_of(msg.headers)
        if deadline and time.time() >= deadline:
            # The caller has given up already (read before the body: cheap).
            EXPIRED.labels(self.provider.name).inc()
            return
        req = exec_decoder.decode(msg.data)
        if deadline:
            req = msgspec.structs.replace(
                req, route=msgspec.structs.replace(req.route, deadline=deadline))
        route = req.route
        if self._cancelled_early.get(route.request_id, -2) in (-1, req.attempt):
            # The client's Cancel overtook this request on its way here.
            await self._ctl(msg.reply, Failed(attempt=req.attempt, status=499,
                                              code=CODE_CLIENT_GONE, retryable=False,
                                              message="the client went away"))
            return
        flight = self._flight_key(req)
        if flight and flight in self.flights:
            # An identical call is on its way upstream: wait for it, no slot,
            # no token, no breaker probe of our own.
            self._followers.add(route.request_id)
            self._spawn(req, msg.reply, flight)
            return
        if self.breaker is not None and not self.breaker.allow():
            # Open: answer at once so the router fails over (never a health
            # failure of its own).
            BREAKER_REJECTS.labels(self.provider.name).inc()
            await self._ctl(msg.reply, Failed(attempt=req.attempt, status=503,
                                              code="circuit_open", retry_after=1,
                                              message=f"{req.provider}: circuit open"))
            return
        if len(self.inflight) - len(self._followers) >= self.max_concurrency:
            # Bounded: never queue without limit; the router fails over or sheds.
            await self._shed(msg.reply, req, "at max_concurrency", 1.0)
            return
        wait = self.rate.take() if self.rate is not None else 0.0
        if wait:
            await self._shed(msg.reply, req, f"at max_rps ({self.max_rps:g}/s)", wait)
            return
        self._spawn(req, msg.reply, flight)

    async def _shed(self, ctl: str, req: ExecRequest, why: str, retry_after: float) -> None:
        if self.breaker is not None:
            self.breaker.record(None)  # not called: frees a half-open probe slot
        SHED.labels(self.provider.name).inc()
        await self._ctl(ctl, Failed(attempt=req.attempt, status=503,
                                    code=contract.CODE_SATURATED, worker=self.worker_id,
                                    retry_after=float(math.ceil(retry_after)),
                                    message=f"{req.provider}: {why}"))

    def _spawn(self, req: ExecRequest, ctl: str, flight: str) -> None:
        task = asyncio.create_task(self._run(req, ctl, flight))
        self.inflight[req.route.request_id] = (req.attempt, task)
        self.heartbeats.hold(req.route.request_id, req.reply_to)
        task.add_done_callback(lambda t: self._finished(t, req, ctl))

    @staticmethod
    def _flight_key(req: ExecRequest) -> str:
        """The singleflight key of a coalescable request ("" otherwise): the
        ingress's key (the cache's) for this provider's model."""
        route = req.route
        if not route.coalesce_key or route.stream or route.op != contract.OP_CHAT:
            return ""
        return f"{req.target_model}\x00{route.coalesce_key}"

    def set_workers(self, count: int) -> None:
        """The instance's live worker count changed: rescale this worker's share."""
        if self.rate is not None:
            self.rate.set_rate(self.max_rps / max(1, count))

    def _finished(self, task: asyncio.Task[None], req: ExecRequest, ctl: str) -> None:
        key = req.route.request_id
        current = self.inflight.get(key)
        if current is not None and current[1] is task:
            del self.inflight[key]
            self._followers.discard(key)
            self.heartbeats.release(key)
        abandoned = key in self._abandoned
        self._abandoned.discard(key)
        if not task.cancelled():
            return
        if self.breaker is not None:
            self.breaker.record(None)  # cancelled: not the provider's doing
        # Release the router's wait now rather than at the deadline (a router
        # that already saw Started ignores this). Done here, not in ``_run``:
        # a task cancelled before its first step never runs its body.
        if abandoned:
            failed = Failed(attempt=req.attempt, status=499, code=CODE_CLIENT_GONE,
                            message="the client went away", retryable=False)
        else:
            failed = Failed(attempt=req.attempt, status=503, code="worker_stopping",
                            message=f"{req.provider}: worker shutting down")
        publish = asyncio.ensure_future(self._ctl(ctl, failed))
        self._background.add(publish)
        publish.add_done_callback(self._background.discard)

    def _outcome(self, weight: float | None) -> None:
        if self.breaker is not None:
            self.breaker.record(weight)

    def adopt(self, health: Health) -> None:
        """A sibling worker of this instance moved its breaker: follow it, so
        every replica opens (and closes) together. Not published again."""
        if self.breaker is None or health.worker == self.worker_id:
            return
        self._adopting = True
        try:
            self.breaker.adopt(health.state, open_for=health.until - time.time())
        finally:
            self._adopting = False

    def _on_transition(self, old: str, new: str) -> None:
        """Tell every router and sibling worker (and the logs) about a breaker
        transition."""
        breaker = self.breaker
        until = time.time() + breaker.remaining_open() if breaker is not None \
            and new == "open" else 0.0
        log.warning("provider %s: circuit %s -> %s%s", self.provider.name, old, new,
                    " (as a sibling worker)" if self._adopting else "")
        BREAKER_TRANSITIONS.labels(self.provider.name, new).inc()
        BREAKER_STATE.labels(self.provider.name).set(_STATE_VALUE.get(new, 0))
        if self._adopting:
            return
        publish = asyncio.ensure_future(self.nc.publish(
            contract.health_subject(self.provider.name),
            encode(Health(instance=self.provider.name, state=new, until=until,
                          pid=os.getpid(), worker=self.worker_id))))
        self._background.add(publish)
        publish.add_done_callback(self._background.discard)

    async def on_cancel(self, msg: Msg) -> None:
        cancel = cancel_decoder.decode(msg.data)
        entry = self.inflight.get(cancel.request_id)
        if entry is None:
            # Not here (yet): remember it briefly in case the request follows.
            self._cancelled_early[cancel.request_id] = cancel.attempt
            if len(self._cancelled_early) > EARLY_CANCELS:
                self._cancelled_early.popitem(last=False)
        elif cancel.attempt in (-1, entry[0]):
            self._abandoned.add(cancel.request_id)
            entry[1].cancel()

    async def _ctl(self, reply: str, message: Started | Failed) -> None:
        if reply:
            await self.nc.publish(reply, encode(message))

    def _remaining(self, req: ExecRequest) -> float:
        if not req.route.deadline:
            return self.ttfb_timeout
        return max(0.001, min(self.ttfb_timeout, req.route.deadline - time.time()))

    async def _body(self, req: ExecRequest) -> bytes:
        route = req.route
        return route.body if not route.body_ref else await self.bodies.get(route.body_ref)

    async def _payload(self, req: ExecRequest) -> dict[str, Any]:
        route = req.route
        payload = _json_decode(await self._body(req))
        payload["model"] = req.target_model
        if route.op == contract.OP_CHAT:
            # What the ingress validated and routed on is what goes upstream.
            payload["stream"] = route.stream
        if route.stream:
            # Always ask for usage so it can be accounted; stripped again for
            # clients that did not ask (see ``usage_only``).
            options = payload.get("stream_options")
            options = dict(options) if isinstance(options, dict) else {}
            options["include_usage"] = True
            payload["stream_options"] = options
        return payload

    async def _run(self, req: ExecRequest, ctl: str, flight: str = "") -> None:
        try:
            if req.route.op == contract.OP_NATIVE:
                body = await self._body(req)
                await self._retrying(req, lambda: self._native(req, ctl, body))
                return
            if flight:
                result, leader = await self.flights.join(flight, lambda: self._fetch(req))
                if not leader:
                    COALESCED.labels(self.provider.name).inc()
                await self._send_complete(req, ctl, result, coalesced=not leader)
            elif req.route.stream:
                payload = await self._payload(req)
                await self._retrying(req, lambda: self._stream(req, ctl, payload))
            else:
                await self._send_complete(req, ctl, await self._fetch(req))
        except UpstreamFailure as exc:
            await self._ctl(ctl, Failed(attempt=req.attempt, status=exc.status, type=exc.type,
                                        code=exc.code, message=exc.message,
                                        retryable=exc.retryable, retry_after=exc.retry_after))
        except Exception as exc:
            log.exception("worker %s failed on %s", self.provider.name, req.route.request_id)
            await self._ctl(ctl, Failed(attempt=req.attempt, status=502, code="worker_error",
                                        message=f"{req.provider}: {type(exc).__name__}"))

    async def _native(self, req: ExecRequest, ctl: str, body: bytes) -> None:
        # Native calls count for the breaker like any other (the original
        # skipped them; a native half-open probe must release its slot too).
        cut = await run_native(self, req, ctl, body)
        self._outcome(_weight(cut) if cut is not None else 0.0)

    async def _fetch(self, req: ExecRequest) -> ProviderResponse:
        """One non-streaming answer from the upstream, retries included."""
        payload = await self._payload(req)

        async def once() -> ProviderResponse:
            result = await self.provider.complete(req.route.op, payload,
                                                  ttfb_timeout=self._remaining(req))
            self._outcome(0.0)
            return result

        return await self._retrying(req, once)

    async def _retrying(self, req: ExecRequest, once: Callable[[], Awaitable[_T]]) -> _T:
        """``once`` until it succeeds, or fails for good: retries on this
        target (policy, budget, deadline) before the router fails over.
        ``once`` raises only while nothing reached the client."""
        if self.retry_budget is not None:
            self.retry_budget.record_request()
        retry = 0
        while True:
            try:
                return await once()
            except UpstreamFailure as exc:
                self._outcome(_weight(exc))
                wait = self._retry_delay(req, exc, retry)
                if wait is None:
                    raise
                retry += 1
                await asyncio.sleep(wait)

    def _retry_delay(self, req: ExecRequest, exc: UpstreamFailure, retry: int) -> float | None:
        """How long to wait before retrying this target, or None: not retryable,
        attempts or retry budget used up, circuit open, or no time left."""
        policy, budget = self.retry_policy, self.retry_budget
        if policy is None or budget is None or not exc.retryable:
            return None
        if self.breaker is not None and self.breaker.state == "open":
            return None
        remaining = (req.route.deadline - time.time()) if req.route.deadline else 300.0
        wait = policy.delay(retry, retry_after=exc.retry_after, remaining=remaining)
        if wait is None or not budget.try_acquire_retry():
            return None
        RETRIES.labels(self.provider.name).inc()
        return wait

    async def _send_complete(self, req: ExecRequest, ctl: str, result: ProviderResponse, *,
                             coalesced: bool = False) -> None:
        body = result.body
        limit = inline_limit(self.nc)
        seq = 0
        # Responses larger than one message go as Chunk parts before Complete.
        while len(body) > limit:
            await self.nc.publish(req.reply_to, encode(
                Chunk(attempt=req.attempt, seq=seq, data=body[:limit])))
            body = body[limit:]
            seq += 1
        await self.nc.publish(req.reply_to, encode(Complete(
            attempt=req.attempt, seq=seq, status=result.status, body=body, usage=result.usage,
            provider=req.provider, model=req.target_model, coalesced=coalesced)))
        await self._ctl(ctl, Started(attempt=req.attempt))

    async def _stream(self, req: ExecRequest, ctl: str, payload: dict[str, Any]) -> None:
        """Relay a stream. Raises only before the first chunk; a cut after it
        ends the client's stream with an error event."""
        seq = 0
        usage: Usage | None = None
        publish = self.nc.publish
        reply_to = req.reply_to
        keep_usage = req.route.include_usage
        try:
            async for item in self.provider.stream(payload, ttfb_timeout=self._remaining(req)):
                if item.usage is not None:
                    usage = item.usage
                if item.data is None or (item.usage_only and not keep_usage):
                    continue
                await publish(reply_to, encode(Chunk(attempt=req.attempt, seq=seq,
                                                     data=item.data)))
                if seq == 0:  # after the chunk: it is on the client's critical path
                    await self._ctl(ctl, Started(attempt=req.attempt))
                seq += 1
        except UpstreamFailure as exc:
            if seq == 0:
                raise  # nothing reached the client: the router may fail over
            await publish(reply_to, encode(ErrorReply(
                attempt=req.attempt, seq=seq, status=exc.status, type="stream_error",
                code=exc.code, message=exc.message)))
            self._outcome(_weight(exc))
            return
        self._outcome(0.0)
        if seq == 0:
            await self._ctl(ctl, Started(attempt=req.attempt))
        await publish(reply_to, encode(End(attempt=req.attempt, seq=seq, usage=usage,
                                           provider=req.provider, model=req.target_model)))
