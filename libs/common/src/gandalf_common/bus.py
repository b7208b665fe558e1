"""NATS connection and the helpers every service shares.

We use nats-py directly on the request path: one connection per process,
explicit pending limits, reconnect forever. Large request bodies go through a
JetStream object store so a 10 MiB request works with a 1 MiB ``max_payload``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.object_store import ObjectStore

from . import contract
from .probe import endpoint_of, probe_async
from .startup import DEPENDENCY_WAIT_S, retry_until

log = logging.getLogger("gandalf.bus")

#: Bytes kept free in a message for the envelope around a body.
ENVELOPE_RESERVE = 16 * 1024
#: Bodies stored in the object store live this long unless deleted first.
BODY_TTL_S = 600.0


#: Per-connection callbacks run when the connection drops (see on_disconnect).
_DISCONNECT_LISTENERS: weakref.WeakKeyDictionary[NATS, list[Callable[[], None]]] = (
    weakref.WeakKeyDictionary())


def on_disconnect(nc: NATS, callback: Callable[[], None]) -> None:
    """Run ``callback`` whenever ``nc`` loses its server (e.g. to fail
    in-flight requests fast instead of letting them wait for their deadline)."""
    _DISCONNECT_LISTENERS.setdefault(nc, []).append(callback)


async def connect(url: str, name: str, *, connect_timeout: float = DEPENDENCY_WAIT_S) -> NATS:
    """Connect, retrying for up to ``connect_timeout``: services may start
    before NATS. Each attempt is a bounded TCP probe, then a bounded client
    connect (nats-py alone retries its first connect forever when reconnects
    are on). Raises :class:`DependencyUnavailableError` naming the address."""
    holder: list[NATS] = []

    async def _error_cb(exc: Exception) -> None:
        if holder:  # the first connect's errors are ours to report
            log.warning("nats error: %s", exc)

    async def _disconnected_cb() -> None:
        if holder and (holder[0].is_closed or holder[0].is_draining):
            return  # our own close
        log.warning("nats disconnected")
        for callback in _DISCONNECT_LISTENERS.get(holder[0], ()) if holder else ():
            callback()

    async def _reconnected_cb() -> None:
        log.info("nats reconnected")

    where = endpoint_of(url)

    async def attempt() -> NATS:
        reason = await probe_async(url, timeout=2.0)
        if reason is not None:
            raise ConnectionError(f"cannot connect to NATS: {reason}")
        nc = NATS()
        try:
            await asyncio.wait_for(nc.connect(
                url, name=name, allow_reconnect=True, max_reconnect_attempts=-1,
                # nats-py annotates int; it sleeps for the float it is given.
                reconnect_time_wait=0.25,  # type: ignore[arg-type]
                connect_timeout=2, ping_interval=10,
                max_outstanding_pings=3, error_cb=_error_cb,
                disconnected_cb=_disconnected_cb, reconnected_cb=_reconnected_cb,
                # Fail fast while disconnected rather than buffering unboundedly.
                pending_size=8 * 1024 * 1024,
            ), timeout=5.0)
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            detail = str(exc) or type(exc).__name__
            raise ConnectionError(f"cannot connect to NATS at {where}: {detail}") from None
        except BaseException:
            with contextlib.suppress(Exception):
                await nc.close()
            raise
        holder.append(nc)
        return nc

    return await retry_until("nats", attempt, wait_s=connect_timeout)


def inline_limit(nc: NATS) -> int:
    """Largest payload that fits in one message, with room for the envelope."""
    return max(1024, nc.max_payload - ENVELOPE_RESERVE)


class BodyStore:
    """Request bodies too large for one NATS message, in a JetStream object store."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._store: ObjectStore | None = None
        self._lock = asyncio.Lock()

    async def _bucket(self) -> ObjectStore:
        if self._store is None:
            async with self._lock:
                if self._store is None:
                    js = self._nc.jetstream()
                    config = ObjectStoreConfig(bucket=contract.BODY_BUCKET, ttl=BODY_TTL_S,
                                               storage=StorageType.FILE)
                    self._store = await js.create_object_store(contract.BODY_BUCKET, config)
        return self._store

    async def put(self, name: str, data: bytes) -> None:
        store = await self._bucket()
        await store.put(name, data)

    async def get(self, name: str) -> bytes:
        store = await self._bucket()
        result = await store.get(name)
        return result.data or b""

    async def delete(self, name: str) -> None:
        store = await self._bucket()
        try:
            await store.delete(name)
        except Exception as exc:  # noqa: BLE001 - cleanup is best effort, the TTL catches it
            log.debug("body delete failed for %s: %s", name, exc)


async def serve_pings(nc: NATS, subject: str, queue: str, pong: bytes) -> Subscription:
    """Answer readiness pings on ``subject`` (one member of ``queue`` answers)."""

    async def reply(msg: Msg) -> None:
        if msg.reply:
            await nc.publish(msg.reply, pong)

    return await nc.subscribe(subject, queue=queue, cb=reply)


async def unsubscribe_all(subs: list[Subscription]) -> None:
    """Stop taking new messages; the connection may already be gone."""
    for sub in subs:
        try:
            await sub.unsubscribe()
        except Exception:  # noqa: BLE001 - closing anyway
            pass
    subs.clear()
