"""Hold the end of every response until its usage event is stored.

Every body message goes out as it comes except the last one (a JSON
answer's body, a stream's ``[DONE]`` frame or final event: what tells a
client it has its answer), which waits until the endpoint has stored the
usage event in JetStream (:func:`release_response`, or the endpoint's
return): a process that dies after the client has its answer has already
billed it.

The first message (the status line) may wait too, for a gate
(:meth:`HoldEnd.hold_start`): the request's ``started`` usage event being
stored (see started.py), so a process that dies after the client got any
byte leaves something to bill it from. A gate that answers False (not
stored in time, or NATS unreachable) turns the response into a 503
``usage_unavailable`` and nothing of the answer goes out: no byte leaves
while the only copy of its usage is in this process's memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

Send = Callable[[dict[str, Any]], Awaitable[None]]

__all__ = ["UNAVAILABLE_BODY", "HoldEnd", "release_response"]

UNAVAILABLE_BODY = (b'{"error":{"message":"usage accounting is unavailable (the event store did '
                    b'not confirm this request in time); retry shortly","type":"api_error",'
                    b'"param":null,"code":"usage_unavailable"}}')


class HoldEnd:
    """An ASGI ``send`` that withholds the final body message until released."""

    __slots__ = ("_gate", "_held", "_refused", "_send", "_state")

    def __init__(self, send: Send, state: dict[str, Any] | None = None) -> None:
        self._send = send
        self._held: dict[str, Any] | None = None
        self._gate: Awaitable[Any] | None = None
        self._refused = False
        self._state = state

    def hold_start(self, gate: Awaitable[Any]) -> None:
        """Send nothing before ``gate`` is done (its outcome is not ours)."""
        self._gate = gate

    async def __call__(self, message: dict[str, Any]) -> None:
        if self._gate is not None:
            gate, self._gate = self._gate, None
            stored: Any = True
            with contextlib.suppress(Exception):
                stored = await gate
            if stored is False and message["type"] == "http.response.start":
                await self._refuse()
        if self._refused:
            return  # the answer is dropped: the client has its 503
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self._held = message
            return
        await self._send(message)

    async def _refuse(self) -> None:
        self._refused = True
        if self._state is not None:
            self._state["usage_unavailable"] = True  # the usage event says 503 too
        await self._send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"), (b"retry-after", b"1"),
            (b"content-length", str(len(UNAVAILABLE_BODY)).encode())]})
        await self._send({"type": "http.response.body", "body": UNAVAILABLE_BODY})

    async def release(self) -> None:
        message, self._held = self._held, None
        if message is not None:
            # The client may be gone; nothing is owed to it then.
            with contextlib.suppress(Exception):
                await self._send(message)


async def release_response(scope: dict[str, Any]) -> None:
    """End the response now (its usage is stored) rather than when the
    endpoint returns, so the endpoint's own bookkeeping after it (budget
    release, limit settlement, cache store) is not the client's wait."""
    release = scope.get("state", {}).get("release_response")
    if release is not None:
        await release()
