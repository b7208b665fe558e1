"""Per-request liveness.

Whoever holds a request (the router while it picks a worker, then the
worker until its last reply) says "still on it" to the ingress's reply inbox
every :data:`HEARTBEAT_S`. The ingress gives up on a request after
:data:`LIVENESS_S` without any message: the process handling it died, and the
client gets an error within seconds instead of waiting for its own timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.aio.client import Client as NATS

from .contract import Alive, encode

__all__ = ["ALIVE", "HEARTBEAT_S", "LIVENESS_S", "Heartbeats"]

HEARTBEAT_S = 1.0
#: Three missed heartbeats: a busy event loop is not a dead process.
LIVENESS_S = 3.0
ALIVE = encode(Alive())

log = logging.getLogger("gandalf.liveness")


class Heartbeats:
    """The requests one service holds, and the task that speaks for them."""

    def __init__(self, nc: NATS, every: float = HEARTBEAT_S) -> None:
        self._nc = nc
        self._every = every
        self._held: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    def hold(self, request_id: str, reply_to: str) -> None:
        self._held[request_id] = reply_to
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="heartbeats")

    def release(self, request_id: str) -> None:
        self._held.pop(request_id, None)

    def __len__(self) -> int:
        return len(self._held)

    async def _run(self) -> None:
        while self._held:
            await asyncio.sleep(self._every)
            for reply_to in list(self._held.values()):
                try:
                    await self._nc.publish(reply_to, ALIVE)
                except Exception as exc:  # noqa: BLE001 - the bus is down: nobody hears anyway
                    log.debug("heartbeat not sent: %r", exc)
                    break

    async def close(self) -> None:
        self._held.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
