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
byte leaves something to bill it from.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

Send = Callable[[dict[str, Any]], Awaitable[None]]

__all__ = ["HoldEnd", "release_response"]


class HoldEnd:
    """An ASGI ``send`` that withholds the final body message until released."""

    __slots__ = ("_gate", "_held", "_send")

    def __init__(self, send: Send) -> None:
        self._send = send
        self._held: dict[str, Any] | None = None
        self._gate: Awaitable[Any] | None = None

    def hold_start(self, gate: Awaitable[Any]) -> None:
        """Send nothing before ``gate`` is done (its outcome is not ours)."""
        self._gate = gate

    async def __call__(self, message: dict[str, Any]) -> None:
        if self._gate is not None:
            gate, self._gate = self._gate, None
            with contextlib.suppress(Exception):
                await gate
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self._held = message
            return
        await self._send(message)

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
