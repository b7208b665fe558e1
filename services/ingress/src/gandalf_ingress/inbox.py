"""One NATS subscription per process that receives every reply for every
in-flight request, dispatched to a bounded per-request buffer."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.nuid import NUID

from gandalf_common import contract
from gandalf_common.contract import (
    Alive,
    Chunk,
    Complete,
    End,
    ErrorReply,
    Head,
    reply_decoder,
)
from gandalf_common.liveness import ALIVE, LIVENESS_S

#: What a slot hands out: a reply that carries data (heartbeats only refresh it).
Data = Head | Chunk | End | Complete | ErrorReply

#: Messages buffered for one request before we give up on a slow client.
MAX_PENDING = 4096

NO_ROUTER = ErrorReply(status=503, code="no_router", type="api_error",
                       message="no router is available; try again shortly")
BUS_LOST = ErrorReply(status=503, code="bus_disconnected", type="api_error",
                      message="the gateway lost its message bus during the request; retry")
OVERFLOW = ErrorReply(status=503, code="reply_overflow", type="api_error",
                      message="client too slow: response buffer exceeded")
#: Nothing from the router or worker holding the request, not even a
#: heartbeat, for LIVENESS_S: that process died (an upstream-side failure).
HANDLER_LOST = ErrorReply(status=502, code="handler_lost", type="api_error", retry_after=1,
                          message="the gateway process handling this request stopped "
                                  "answering; retry")


class ReplySlot:
    """Messages for one request, in arrival order."""

    __slots__ = ("_items", "_waiter", "heard", "liveness", "subject", "token")

    def __init__(self, token: str, subject: str, liveness: float = LIVENESS_S) -> None:
        self.token = token
        self.subject = subject
        self._items: deque[Data] = deque()
        self._waiter: asyncio.Future[None] | None = None
        #: When the request's handler last said anything (monotonic).
        self.heard = time.monotonic()
        self.liveness = liveness

    def alive(self) -> None:
        self.heard = time.monotonic()

    def push(self, item: Data) -> None:
        self.heard = time.monotonic()
        if len(self._items) >= MAX_PENDING:
            self._items.clear()
            item = OVERFLOW
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self, timeout: float) -> Data | None:
        """Next message, or ``None`` after ``timeout`` seconds of silence, or
        :data:`HANDLER_LOST` once the handler has been silent for ``liveness``
        (heartbeats included)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while not self._items:
            now = time.monotonic()
            lost_in = self.heard + self.liveness - now
            if lost_in <= 0:
                return HANDLER_LOST
            left = until - loop.time()
            if left <= 0:
                return None
            self._waiter = loop.create_future()
            handle = loop.call_later(min(left, lost_in), _expire, self._waiter)
            try:
                await self._waiter
            finally:
                handle.cancel()
                self._waiter = None
        return self._items.popleft()


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class ReplyInbox:
    def __init__(self) -> None:
        self._slots: dict[str, ReplySlot] = {}
        self._counter = itertools.count()
        self._prefix = ""
        self._sub: Subscription | None = None

    async def start(self, nc: NATS) -> None:
        self._prefix = f"{contract.INBOX_PREFIX}.{NUID().next().decode()}."
        self._sub = await nc.subscribe(self._prefix + "*", cb=self._on_msg,
                                       pending_msgs_limit=262144,
                                       pending_bytes_limit=512 * 1024 * 1024)

    def open(self) -> ReplySlot:
        token = str(next(self._counter))
        slot = ReplySlot(token, self._prefix + token)
        self._slots[token] = slot
        return slot

    def close(self, slot: ReplySlot) -> None:
        self._slots.pop(slot.token, None)

    def __len__(self) -> int:
        return len(self._slots)

    def fail_all(self) -> None:
        """The bus dropped: replies in flight are lost, so end every request
        now with a clear error rather than at its deadline."""
        for slot in list(self._slots.values()):
            slot.push(BUS_LOST)

    async def _on_msg(self, msg: Msg) -> None:
        slot = self._slots.get(msg.subject[len(self._prefix):])
        if slot is None:
            return  # late message for a finished request
        headers = msg.headers
        if headers and headers.get("Status") == "503":
            slot.push(NO_ROUTER)  # "no responders": nobody subscribed to the router subject
            return
        if msg.data == ALIVE:
            slot.alive()
            return
        try:
            reply = reply_decoder.decode(msg.data)
        except Exception:  # noqa: BLE001 - a corrupt message must not kill the inbox
            slot.push(ErrorReply(status=502, code="bad_reply", message="malformed reply"))
            return
        if isinstance(reply, Alive):  # a heartbeat encoded another way
            slot.alive()
        else:
            slot.push(reply)
