"""Script calls issued in the same event-loop turn go out to Redis as one
pipeline: one write, one read, one pool checkout for all of them. Under load
many requests are admitted per turn, and each costs a fraction of a round
trip; a lone call is sent as it is."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from .redis_backend import _Script

_Call = tuple["_Script", Sequence[str], Sequence[Any], "asyncio.Future[Any]"]


class AutoPipeline:
    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._queue: list[_Call] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(self, script: _Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((script, keys, args, future))
        if len(self._queue) == 1:  # the first of this turn sends the batch at its end
            loop.call_soon(self._spawn)
        return await future

    def _spawn(self) -> None:
        batch, self._queue = self._queue, []
        task = asyncio.ensure_future(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Call]) -> None:
        if len(batch) == 1:
            script, keys, args, future = batch[0]
            try:
                _resolve(future, await script(self._client, keys, args))
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                _fail(future, exc)
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for script, keys, args, _ in batch:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            results = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # noqa: BLE001 - Redis down: every caller learns it
            for *_, future in batch:
                _fail(future, exc)
            return
        for (script, keys, args, future), result in zip(batch, results, strict=True):
            if isinstance(result, NoScriptError):  # flushed scripts: EVAL reloads them
                try:
                    result = await script(self._client, keys, args)
                except Exception as exc:  # noqa: BLE001
                    result = exc
            if isinstance(result, Exception):
                _fail(future, result)
            else:
                _resolve(future, result)


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():  # the caller may have timed out
        future.set_result(value)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
