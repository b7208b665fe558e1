"""Singleflight (gandalf_workers/flights.py): concurrent joins of one key share
one call, errors reach every waiter, the key is forgotten when the call ends
(not a cache), and cancellation is per waiter: the shared call is cancelled
only when its last waiter leaves, and a join arriving while a flight is being
cancelled starts a fresh call. Pure asyncio, no NATS."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from gandalf_workers.flights import Flights


class Boom(Exception):
    pass


async def until(pred: Callable[[], bool], *, rounds: int = 200) -> None:
    """Let the loop run until ``pred()`` holds (a bounded number of iterations)."""
    for _ in range(rounds):
        if pred():
            return
        await asyncio.sleep(0)
    assert pred(), "condition never became true"


class Upstream:
    """A fake shared call: counts its runs, blocks until released, and records
    whether it ran to its end or saw a cancellation."""

    def __init__(self, result: object = "answer") -> None:
        self.result = result
        self.runs = 0
        self.release = asyncio.Event()
        self.finished = 0
        self.cancelled = 0

    async def __call__(self) -> object:
        self.runs += 1
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        return self.result


async def test_concurrent_joins_share_one_call() -> None:
    flights: Flights[object] = Flights()
    up = Upstream()
    tasks = [asyncio.create_task(flights.join("k", up)) for _ in range(5)]
    await until(lambda: up.runs == 1)
    await asyncio.sleep(0)
    assert up.runs == 1
    assert "k" in flights
    assert len(flights) == 1

    up.release.set()
    results = await asyncio.gather(*tasks)
    assert [r for r, _ in results] == ["answer"] * 5
    assert all(r is up.result for r, _ in results)
    assert [leader for _, leader in results].count(True) == 1
    assert results[0][1] is True  # the first to join started the call
    assert up.runs == 1
    assert up.finished == 1


async def test_different_keys_run_separately() -> None:
    flights: Flights[object] = Flights()
    a, b = Upstream("A"), Upstream("B")
    ta = asyncio.create_task(flights.join("a", a))
    tb = asyncio.create_task(flights.join("b", b))
    ta2 = asyncio.create_task(flights.join("a", a))
    await until(lambda: a.runs == 1 and b.runs == 1)
    assert len(flights) == 2
    assert "a" in flights and "b" in flights

    b.release.set()
    assert await tb == ("B", True)
    assert not ta.done()  # "a" is not finished by "b"'s result
    assert "a" in flights and "b" not in flights

    a.release.set()
    assert await ta == ("A", True)
    assert await ta2 == ("A", False)
    assert (a.runs, b.runs) == (1, 1)
    assert len(flights) == 0


async def test_exception_reaches_every_waiter_and_key_is_forgotten() -> None:
    flights: Flights[object] = Flights()
    runs = 0
    release = asyncio.Event()
    boom = Boom("upstream exploded")

    async def failing() -> object:
        nonlocal runs
        runs += 1
        await release.wait()
        raise boom

    tasks = [asyncio.create_task(flights.join("k", failing)) for _ in range(3)]
    await until(lambda: runs == 1)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(r is boom for r in results)
    assert runs == 1
    assert "k" not in flights
    assert len(flights) == 0

    # Forgotten: the next join runs a call of its own.
    up = Upstream("fresh")
    up.release.set()
    assert await flights.join("k", up) == ("fresh", True)
    assert up.runs == 1


async def test_not_a_cache_after_success() -> None:
    flights: Flights[object] = Flights()
    up = Upstream()
    up.release.set()
    assert await flights.join("k", up) == ("answer", True)
    assert "k" not in flights
    assert len(flights) == 0
    assert await flights.join("k", up) == ("answer", True)
    assert up.runs == 2


async def test_cancelling_one_waiter_keeps_the_shared_call() -> None:
    flights: Flights[object] = Flights()
    up = Upstream(42)
    leader = asyncio.create_task(flights.join("k", up))
    follower = asyncio.create_task(flights.join("k", up))
    await until(lambda: up.runs == 1)
    await asyncio.sleep(0)  # the follower joins too

    leader.cancel()  # the one that started the call goes away
    with pytest.raises(asyncio.CancelledError):
        await leader
    for _ in range(5):
        await asyncio.sleep(0)
    assert up.cancelled == 0
    assert "k" in flights
    assert not follower.done()

    up.release.set()
    assert await follower == (42, False)
    assert up.finished == 1
    assert up.runs == 1
    assert up.cancelled == 0


async def test_cancelling_every_waiter_cancels_the_shared_call() -> None:
    flights: Flights[object] = Flights()
    up = Upstream()
    waiters = [asyncio.create_task(flights.join("k", up)) for _ in range(2)]
    await until(lambda: up.runs == 1)
    await asyncio.sleep(0)

    waiters[0].cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiters[0]
    await asyncio.sleep(0)
    assert up.cancelled == 0  # one waiter is left

    waiters[1].cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiters[1]
    await until(lambda: up.cancelled == 1 and "k" not in flights)
    assert up.finished == 0
    assert len(flights) == 0


async def test_join_while_the_flight_is_being_cancelled_starts_a_fresh_call() -> None:
    flights: Flights[object] = Flights()
    runs: list[int] = []
    first_cancelled = asyncio.Event()

    async def call() -> object:
        runs.append(len(runs) + 1)
        n = len(runs)
        if n == 1:
            try:
                await asyncio.Event().wait()  # forever, until cancelled
            except asyncio.CancelledError:
                first_cancelled.set()
                raise
        return f"call {n}"

    only = asyncio.create_task(flights.join("k", call))
    await until(lambda: runs == [1])

    # Cancel the only waiter and join again at once: by the time the new join
    # runs, the old waiter has left and cancelled the shared call, whose task
    # has not yet processed the cancellation (cancelling() > 0). The new join
    # must start a call of its own, not wait on the dying one.
    only.cancel()
    again = asyncio.create_task(flights.join("k", call))
    with pytest.raises(asyncio.CancelledError):
        await only
    assert await asyncio.wait_for(again, 1.0) == ("call 2", True)
    assert runs == [1, 2]
    await asyncio.wait_for(first_cancelled.wait(), 1.0)
    await until(lambda: "k" not in flights)


async def test_dying_flight_does_not_unregister_its_replacement() -> None:
    """The old flight's slow cancellation ends while its replacement is in
    flight: the replacement stays registered and later joins share it."""
    flights: Flights[object] = Flights()
    runs: list[int] = []
    old_cancelled = asyncio.Event()
    old_may_end = asyncio.Event()
    old_ended = asyncio.Event()
    new_release = asyncio.Event()

    async def call() -> object:
        runs.append(len(runs) + 1)
        n = len(runs)
        if n == 1:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                old_cancelled.set()
                await old_may_end.wait()  # slow cleanup: stays "being cancelled"
                raise
            finally:
                old_ended.set()
        await new_release.wait()
        return f"call {n}"

    try:
        only = asyncio.create_task(flights.join("k", call))
        await until(lambda: runs == [1])
        only.cancel()
        # The waiter leaves at once, without waiting for the call's cleanup.
        await asyncio.wait({only}, timeout=1.0)
        assert only.cancelled()
        await asyncio.wait_for(old_cancelled.wait(), 1.0)
        assert "k" in flights  # the dying flight is still registered

        new = asyncio.create_task(flights.join("k", call))
        await until(lambda: runs == [1, 2])

        old_may_end.set()
        await asyncio.wait_for(old_ended.wait(), 1.0)
        for _ in range(5):
            await asyncio.sleep(0)  # the old task's done callback has run
        assert "k" in flights
        assert len(flights) == 1

        follower = asyncio.create_task(flights.join("k", call))
        for _ in range(5):
            await asyncio.sleep(0)
        assert runs == [1, 2]  # joined the replacement, no third call

        new_release.set()
        assert await new == ("call 2", True)
        assert await follower == ("call 2", False)
        assert "k" not in flights
    finally:
        # Never leave the slow cleanup blocked (it would hang the loop's teardown
        # if an assertion above failed).
        old_may_end.set()
        new_release.set()
