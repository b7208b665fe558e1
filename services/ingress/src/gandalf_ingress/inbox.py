"""One NATS subscription per process that receives every reply for every
in-flight request, dispatched to a bounded per-request buffer."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.nuid import NUID

from gandalf_common import contract
from gandalf_common.contract import ErrorReply, ReplyMsg, reply_decoder

#: Messages buffered for one request before we give up on a slow client.
MAX_PENDING = 4096

NO_ROUTER = ErrorReply(status=503, code="no_router", type="api_error",
                       message="no router is available; try again shortly")
BUS_LOST = ErrorReply(status=503, code="bus_disconnected", type="api_error",
                      message="the gateway lost its message bus during the request; retry")
OVERFLOW = ErrorReply(status=503, code="reply_overflow", type="api_error",
                      message="client too slow: response buffer exceeded")


class ReplySlot:
    """Messages for one request, in arrival order."""

    __slots__ = ("_items", "_waiter", "subject", "token")

    def __init__(self, token: str, subject: str) -> None:
        self.token = token
        self.subject = subject
        self._items: deque[ReplyMsg] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def push(self, item: ReplyMsg) -> None:
        if len(self._items) >= MAX_PENDING:
            self._items.clear()
            item = OVERFLOW
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self, timeout: float) -> ReplyMsg | None:
        """Next message, or ``None`` after ``timeout`` seconds of silence."""
        if not self._items:
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            handle = loop.call_later(timeout, _expire, self._waiter)
            try:
                await self._waiter
            finally:
                handle.cancel()
                self._waiter = None
            if not self._items:
                return None
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
        try:
            slot.push(reply_decoder.decode(msg.data))
        except Exception:  # noqa: BLE001 - a corrupt message must not kill the inbox
            slot.push(ErrorReply(status=502, code="bad_reply", message="malformed reply"))
