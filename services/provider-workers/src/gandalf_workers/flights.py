"""Singleflight: identical calls in flight at the same time share one.

The first caller of a key starts the shared call; later callers of the same
key wait for its result instead of starting their own. Every waiter keeps its
own cancellation: a waiter that is cancelled (its client went away) stops
waiting, and the shared call is cancelled only when no waiter is left. The
key is forgotten as soon as the call ends, success or failure: this shares
calls in flight, it is not a cache.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class _Flight(Generic[T]):
    __slots__ = ("task", "waiters")

    def __init__(self, task: asyncio.Task[T]) -> None:
        self.task = task
        self.waiters = 0


class Flights(Generic[T]):
    def __init__(self) -> None:
        self._flights: dict[str, _Flight[T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def __contains__(self, key: str) -> bool:
        return key in self._flights

    async def join(self, key: str, call: Callable[[], Coroutine[Any, Any, T]]) -> tuple[T, bool]:
        """The shared call's result, and whether this caller started it.

        The shared call's exception is raised to every waiter.
        """
        flight = self._flights.get(key)
        # A flight being cancelled (its last waiter left) is not joined.
        leader = flight is None or flight.task.cancelling() > 0
        if flight is None or leader:
            flight = _Flight(asyncio.create_task(call()))
            self._flights[key] = flight
            flight.task.add_done_callback(functools.partial(self._forget_done, key, flight))
        flight.waiters += 1
        try:
            # shield: cancelling this waiter must not cancel the shared call.
            return await asyncio.shield(flight.task), leader
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                flight.task.cancel()  # nobody is left waiting for it

    def _forget_done(self, key: str, flight: _Flight[T], _task: object) -> None:
        self._forget(key, flight)

    def _forget(self, key: str, flight: _Flight[T]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.task.cancelled():
            flight.task.exception()  # retrieved: no "never retrieved" warning
