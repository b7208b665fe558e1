"""In-memory mirrors of NATS KV buckets.

A mirror loads the whole bucket (every key's latest value) before
:meth:`KVMirror.start` returns, then applies changes as they come through a
watch (an ordered push consumer, which resumes after reconnects). Readers
only touch the dict: no round trip on the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from nats.aio.client import Client as NATS
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from .records import CONFIG_BUCKET, KEYS_BUCKET

log = logging.getLogger("gandalf.kv")

T = TypeVar("T")
#: Called with (key, value or None when deleted) after the mirror changed.
Listener = Callable[[str, Any], None]


async def ensure_buckets(nc: NATS) -> dict[str, KeyValue]:
    """Create the replication buckets if missing (the admin service does this)."""
    js = nc.jetstream()
    out: dict[str, KeyValue] = {}
    for bucket in (KEYS_BUCKET, CONFIG_BUCKET):
        try:
            out[bucket] = await js.key_value(bucket)
        except BucketNotFoundError:
            out[bucket] = await js.create_key_value(bucket=bucket, history=1)
    return out


async def open_bucket(nc: NATS, bucket: str, *, wait: float) -> KeyValue:
    """The bucket, waiting up to ``wait`` seconds for the admin to create it."""
    js = nc.jetstream()
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        try:
            return await js.key_value(bucket)
        except BucketNotFoundError:
            if asyncio.get_running_loop().time() >= deadline:
                raise
            await asyncio.sleep(0.2)


async def watch_all(kv: KeyValue) -> tuple[Any, int]:
    """A watcher over every key (deletes included) and the stream sequence at
    which its initial values are all in (0: the bucket is empty).

    nats-py's own end-of-initial-values marker cannot be trusted: it is
    decided from consumer info, which reports nothing pending once the server
    has pushed every message, even while they still sit unread in the client;
    under load a full bucket then looks empty. The last sequence is read first,
    so every initial value has a revision at or below it.
    """
    state = (await kv.status()).stream_info.state
    last = state.last_seq if state.messages else 0
    return await kv.watchall(), last


def is_entry(item: Any) -> bool:
    """False for nats-py's end-of-initial-values marker (see :func:`watch_all`)."""
    return item is not None


class KVMirror(Generic[T]):
    """``bucket`` mirrored into ``self.entries`` (KV key -> decoded value)."""

    def __init__(self, bucket: str, decode: Callable[[str, bytes], T | None]) -> None:
        self.bucket = bucket
        self._decode = decode
        self.entries: dict[str, T] = {}
        self.loaded = asyncio.Event()
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        self._watcher: Any = None
        self._initial_last = 0

    def on_change(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def start(self, nc: NATS, *, wait: float = 30.0) -> None:
        kv = await open_bucket(nc, self.bucket, wait=wait)
        self._watcher, self._initial_last = await watch_all(kv)
        if not self._initial_last:
            self.loaded.set()
        self._task = asyncio.create_task(self._run(), name=f"kv-mirror-{self.bucket}")
        await self.loaded.wait()

    async def _run(self) -> None:
        async for entry in self._watcher:
            if not is_entry(entry):
                continue
            self._apply(entry)
            if not self.loaded.is_set() and entry.revision >= self._initial_last:
                self.loaded.set()  # the initial values are all in

    def _apply(self, entry: Any) -> None:
        key = entry.key
        value: T | None = None
        if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
            self.entries.pop(key, None)
        else:
            try:
                value = self._decode(key, entry.value)
            except Exception:  # one bad entry must not stop the mirror
                log.exception("kv %s: cannot decode %s; ignored", self.bucket, key)
                return
            if value is None:
                return
            self.entries[key] = value
        for listener in self._listeners:
            try:
                listener(key, value)
            except Exception:  # a listener bug must not stop the mirror
                log.exception("kv %s: listener failed on %s", self.bucket, key)

    async def stop(self) -> None:
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
