"""Publish a request to the router and relay the replies to the HTTP client.

Non-streaming: wait for ``Complete`` (or an error) and answer with JSON.
Streaming: answer 200 with SSE as soon as the first chunk arrives (or after
one keep-alive interval, so slow first tokens do not trip idle proxies), then
forward chunks as they come. A client that disconnects is noticed by a
watcher on ``receive`` and a ``Cancel`` goes to the workers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.aio.client import Client as NATS

from gandalf_common import contract
from gandalf_common.contract import (
    Cancel,
    Chunk,
    Complete,
    End,
    ErrorReply,
    Head,
    RouteRequest,
    encode,
)
from gandalf_common.errors import error_body

from .formats import native_error_body, native_stream_error
from .inbox import ReplyInbox, ReplySlot
from .metrics import STREAM_ERRORS
from .usage import Outcome

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
]
_JSON = (b"content-type", b"application/json")
_KEEPALIVE = b": keep-alive\n\n"
_DONE = b"data: [DONE]\n\n"
#: Pushed into a request's slot by the disconnect watcher.
CLIENT_GONE = ErrorReply(status=499, code="client_disconnected",
                         message="the client closed the connection")
_BUS_DOWN = ErrorReply(status=503, code="bus_unavailable", type="api_error",
                       message="the gateway's message bus is unavailable; retry shortly",
                       retry_after=1)
_LOST = ErrorReply(status=502, code="stream_gap", type="api_error",
                   message="a message of the response was lost in transit")


class Relay:
    def __init__(self, nc: NATS, inbox: ReplyInbox, *, keepalive: float,
                 idle_timeout: float) -> None:
        self.nc = nc
        self.inbox = inbox
        self.keepalive = keepalive
        self.idle_timeout = idle_timeout

    async def cancel(self, request_id: str) -> None:
        try:
            await self.nc.publish(contract.CANCEL, encode(Cancel(request_id=request_id)))
        except Exception:  # noqa: BLE001 - NATS down: the worker's own timeouts apply
            pass

    async def _publish(self, req: RouteRequest, slot: ReplySlot) -> ErrorReply | None:
        if not self.nc.is_connected:
            return _BUS_DOWN  # fail fast; nats-py would buffer until reconnect
        try:
            # With a reply subject, NATS answers "no responders" itself when no
            # router is subscribed: the inbox turns that into a 503 at once.
            # The deadline goes in a header (every hop reads it before the body).
            await self.nc.publish(contract.router_op_subject(req.op),
                                  encode(msgspec.structs.replace(req, deadline=0.0)),
                                  reply=slot.subject,
                                  headers=contract.deadline_headers(req.deadline))
        except Exception:  # noqa: BLE001 - connection closed or reconnecting
            return _BUS_DOWN
        return None

    async def unary(self, req: RouteRequest, send: Send, receive: Receive,
                    outcome: Outcome | None = None) -> int:
        """Non-streaming request; returns the HTTP status sent."""
        slot = self.inbox.open()
        watcher = asyncio.ensure_future(_watch_disconnect(receive, slot))
        try:
            reply = await self._publish(req, slot) or await self._collect(req, slot, outcome)
        finally:
            self.inbox.close(slot)
            watcher.cancel()
        if reply is CLIENT_GONE:
            await self.cancel(req.request_id)
            return 499
        if isinstance(reply, ErrorReply):
            if outcome is not None:
                outcome.error_code = reply.code or reply.type
            return await send_error(send, reply)
        status, body = reply
        if outcome is not None:
            outcome.body = body
        await send({"type": "http.response.start", "status": status,
                    "headers": [_JSON]})
        await send({"type": "http.response.body", "body": body})
        return status

    async def _collect(self, req: RouteRequest, slot: ReplySlot,
                       outcome: Outcome | None) -> tuple[int, bytes] | ErrorReply:
        parts: list[bytes] = []
        locked = -1
        expected = 0
        while True:
            remaining = req.deadline - time.time()
            if remaining <= 0:
                await self.cancel(req.request_id)
                return ErrorReply(status=504, code="timeout", type="timeout_error",
                                  message="the upstream did not answer before the deadline")
            msg = await slot.get(remaining)
            if msg is None:
                continue
            if isinstance(msg, ErrorReply):
                return msg
            if locked == -1:
                locked = msg.attempt
            elif msg.attempt != locked:
                continue
            if msg.seq != expected:
                return _LOST
            expected += 1
            if isinstance(msg, Complete):
                if outcome is not None:
                    outcome.usage, outcome.provider = msg.usage, msg.provider
                    outcome.provider_model = msg.model
                    outcome.coalesced = msg.coalesced
                if parts:
                    parts.append(msg.body)
                    return msg.status, b"".join(parts)
                return msg.status, msg.body
            if isinstance(msg, Chunk):
                parts.append(msg.data)

    async def stream(self, req: RouteRequest, send: Send, receive: Receive,
                     outcome: Outcome | None = None) -> int:
        """Streaming request; returns the HTTP status sent."""
        slot = self.inbox.open()
        watcher = asyncio.ensure_future(_watch_disconnect(receive, slot))
        try:
            error = await self._publish(req, slot)
            if error is not None:
                return await send_error(send, error)
            status = await self._pump(req, slot, send, outcome or Outcome())
        finally:
            self.inbox.close(slot)
            watcher.cancel()
        if status == 499:
            await self.cancel(req.request_id)
        return status

    # Complex on purpose: the reply-stream state machine (attempts, gaps, liveness).
    async def _pump(self, req: RouteRequest, slot: ReplySlot, send: Send,  # noqa: C901
                    outcome: Outcome) -> int:
        started = False
        t0 = time.monotonic()
        locked = -1
        expected = 0
        silent = 0.0
        while True:
            if not started:
                wait = min(self.keepalive, max(0.001, req.deadline - time.time()))
            else:
                wait = self.keepalive
            msg = await slot.get(wait)
            if msg is None:
                silent += wait
                if not started and time.time() >= req.deadline:
                    await self.cancel(req.request_id)
                    return await send_error(send, ErrorReply(
                        status=504, code="timeout", type="timeout_error",
                        message="the upstream did not start before the deadline"))
                if silent >= self.idle_timeout:
                    await self.cancel(req.request_id)
                    msg = ErrorReply(status=504, code="stream_idle_timeout",
                                     message="the upstream stream went silent")
                else:
                    if not started:
                        started = True
                        await send({"type": "http.response.start", "status": 200,
                                    "headers": _SSE_HEADERS})
                    await send({"type": "http.response.body", "body": _KEEPALIVE,
                                "more_body": True})
                    continue
            silent = 0.0
            if msg is CLIENT_GONE:
                return 499
            if isinstance(msg, ErrorReply):
                outcome.error_code = msg.code or msg.type
                if not started:
                    return await send_error(send, msg)
                await send({"type": "http.response.body", "body": _sse_error(msg) + _DONE})
                return 200
            if locked == -1:
                locked = msg.attempt
            elif msg.attempt != locked:
                continue  # a stale attempt; never mix outputs (invariant 2)
            if msg.seq != expected:
                msg = _LOST
                if not started:
                    return await send_error(send, msg)
                await send({"type": "http.response.body", "body": _sse_error(msg) + _DONE})
                return 200
            expected += 1
            if not started:
                started = True
                await send({"type": "http.response.start", "status": 200,
                            "headers": _SSE_HEADERS})
            if isinstance(msg, Chunk):
                if not outcome.chunks:
                    outcome.ttft_ms = int((time.monotonic() - t0) * 1000)
                outcome.chunks += 1
                await send({"type": "http.response.body",
                            "body": b"data: " + msg.data + b"\n\n", "more_body": True})
            elif isinstance(msg, End):
                outcome.usage, outcome.provider = msg.usage, msg.provider
                outcome.provider_model = msg.model
                await send({"type": "http.response.body", "body": _DONE})
                return 200
            else:  # Complete is not expected on a stream; treat as its end
                await send({"type": "http.response.body", "body": _DONE})
                return 200


def _sse_error(msg: ErrorReply) -> bytes:
    STREAM_ERRORS.labels(msg.code or "error").inc()
    body = error_body(msg.status, msg.message, type=msg.type or "stream_error", code=msg.code)
    return b"event: error\ndata: " + body + b"\n\n"


async def send_error(send: Send, err: ErrorReply) -> int:
    return await send_json_error(send, err.status, error_body(
        err.status, err.message, type=err.type, code=err.code), err.retry_after)


async def send_json_error(send: Send, status: int, body: bytes, retry_after: float = 0) -> int:
    """The one place an HTTP error response is written (OpenAI-shaped body)."""
    headers = [_JSON]
    if retry_after > 0:
        headers.append((b"retry-after", str(max(1, round(retry_after))).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return status


async def _watch_disconnect(receive: Receive, slot: ReplySlot) -> None:
    """Wake the request's reader when the client goes away."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            slot.push(CLIENT_GONE)
            return



class NativeRelay:
    """Relays a native-API answer: ``Head`` (status, headers), raw ``Chunk``
    bytes, ``End``. Nothing is added to the bytes (no keep-alives: the
    format is the provider's), and errors take the native API's shape."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self._on_end: Callable[[Outcome], Awaitable[None]] | None = None

    async def __call__(self, req: RouteRequest, send: Send, receive: Receive,
                       outcome: Outcome | None = None,
                       on_end: Callable[[Outcome], Awaitable[None]] | None = None) -> int:
        """``on_end`` runs after the last byte but before the answer is
        complete: what it records is there before the client can act on it."""
        outcome = outcome or Outcome()
        self._on_end = on_end
        relay = self.relay
        slot = relay.inbox.open()
        watcher = asyncio.ensure_future(_watch_disconnect(receive, slot))
        try:
            error = await relay._publish(req, slot)
            if error is not None:
                return await send_native_error(send, req, error)
            status = await self._pump(req, slot, send, outcome)
        finally:
            relay.inbox.close(slot)
            watcher.cancel()
        if status == 499:
            await relay.cancel(req.request_id)
        return status

    # Complex on purpose: the reply-stream state machine (attempts, gaps, liveness).
    async def _pump(self, req: RouteRequest, slot: ReplySlot, send: Send,  # noqa: C901
                    outcome: Outcome) -> int:
        relay = self.relay
        t0 = time.monotonic()
        status = 0
        locked = -1
        expected = 0
        silent = 0.0
        while True:
            wait = relay.keepalive
            if not status:
                wait = min(wait, max(0.001, req.deadline - time.time()))
            msg = await slot.get(wait)
            if msg is None:
                silent += wait
                if not status and time.time() >= req.deadline:
                    await relay.cancel(req.request_id)
                    return await send_native_error(send, req, ErrorReply(
                        status=504, code="timeout", type="timeout_error",
                        message="the upstream did not answer before the deadline"))
                if status and silent >= relay.idle_timeout:
                    await relay.cancel(req.request_id)
                    msg = ErrorReply(status=504, code="stream_idle_timeout",
                                     message="the upstream stream went silent")
                else:
                    continue
            silent = 0.0
            if msg is CLIENT_GONE:
                return 499
            if isinstance(msg, ErrorReply):
                outcome.error_code = msg.code or msg.type
                if not status:
                    return await send_native_error(send, req, msg)
                return await self._fail_started(req, send, status, msg)
            if locked == -1:
                locked = msg.attempt
            elif msg.attempt != locked:
                continue
            if msg.seq != expected:
                if not status:
                    return await send_native_error(send, req, _LOST)
                return await self._fail_started(req, send, status, _LOST)
            expected += 1
            if isinstance(msg, Head):
                status = msg.status
                await send({"type": "http.response.start", "status": status,
                            "headers": [(k.encode("latin-1"), v.encode("latin-1"))
                                        for k, v in msg.headers]})
            elif isinstance(msg, Chunk) and status:
                if not outcome.chunks:
                    outcome.ttft_ms = int((time.monotonic() - t0) * 1000)
                outcome.chunks += 1
                await send({"type": "http.response.body", "body": msg.data,
                            "more_body": True})
            elif isinstance(msg, End | Complete):
                outcome.usage, outcome.provider = msg.usage, msg.provider
                outcome.provider_model = msg.model
                if not status:  # an empty answer; cannot happen with a sane worker
                    return await send_native_error(send, req, _LOST)
                if isinstance(msg, End):
                    outcome.ref = msg.ref
                if self._on_end is not None:
                    await self._on_end(outcome)
                await send({"type": "http.response.body", "body": b""})
                return status

    async def _fail_started(self, req: RouteRequest, send: Send, status: int,
                            err: ErrorReply) -> int:
        STREAM_ERRORS.labels(err.code or "error").inc()
        if req.stream:
            kind = req.native.kind if req.native else ""
            await send({"type": "http.response.body", "body": native_stream_error(
                kind, err.status, err.message, type=err.type, code=err.code)})
            return status
        # Half a JSON body cannot be repaired: leave the response unfinished so
        # the server drops the connection and the client sees a failure.
        return 502


async def send_native_error(send: Send, req: RouteRequest, err: ErrorReply) -> int:
    kind = req.native.kind if req.native else ""
    return await send_json_error(send, err.status, native_error_body(
        kind, err.status, err.message, type=err.type, code=err.code), err.retry_after)
