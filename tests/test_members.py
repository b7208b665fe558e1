"""Worker membership (gandalf_common/presence.py): rendezvous ownership of keys
among the live workers of an instance (stable, order independent, minimal
movement when a worker joins, even spread), and liveness from presence
heartbeats with a fake clock (expiry, leaving, forget)."""

from __future__ import annotations

import random
from collections import Counter

from fake_clock import FakeClock
from gandalf_common.contract import Presence
from gandalf_common.presence import EXPIRY, Membership

INSTANCE = "openai-main"




def hear(m: Membership, *workers: str, instance: str = INSTANCE, leaving: bool = False) -> None:
    for w in workers:
        m.heard(Presence(instance=instance, worker=w, leaving=leaving))


def random_keys(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.getrandbits(64):016x}" for _ in range(n)]


def owners(m: Membership, keys: list[str], instance: str = INSTANCE) -> dict[str, str | None]:
    return {k: m.owner(instance, k) for k in keys}


def test_no_owner_without_workers() -> None:
    m = Membership(clock=FakeClock())
    assert m.owner(INSTANCE, "k") is None
    assert m.live(INSTANCE) == []
    hear(m, "w1", instance="other")
    assert m.owner(INSTANCE, "k") is None  # workers of another instance do not count
    assert m.owner("other", "k") == "w1"


def test_owner_is_a_live_worker_stable_and_independent_of_hearing_order() -> None:
    workers = [f"worker-{i}" for i in range(5)]
    shuffled = workers[:]
    random.Random(3).shuffle(shuffled)
    ms = []
    for order in (workers, list(reversed(workers)), shuffled):
        m = Membership(clock=FakeClock())
        hear(m, *order)
        ms.append(m)
    keys = random_keys(200)
    first = owners(ms[0], keys)
    assert set(first.values()) <= set(workers)
    assert len(set(first.values())) > 1  # not one worker for everything
    assert owners(ms[0], keys) == first  # stable across calls
    assert owners(ms[1], keys) == first
    assert owners(ms[2], keys) == first
    hear(ms[0], *workers)  # a round of heartbeats changes nothing
    assert owners(ms[0], keys) == first


def test_a_joining_worker_takes_only_keys_it_wins() -> None:
    m = Membership(clock=FakeClock())
    hear(m, "w1", "w2", "w3", "w4")
    keys = random_keys(500)
    before = owners(m, keys)
    hear(m, "w5")
    after = owners(m, keys)
    moved = [k for k in keys if after[k] != before[k]]
    assert all(after[k] == "w5" for k in moved)
    # About 1/5 of the keys move (100 expected).
    assert 50 <= len(moved) <= 160

    # It leaves again: every key goes back where it was.
    hear(m, "w5", leaving=True)
    assert owners(m, keys) == before


def test_a_leaving_worker_gives_up_only_its_own_keys() -> None:
    m = Membership(clock=FakeClock())
    hear(m, "w1", "w2", "w3", "w4")
    keys = random_keys(500, seed=11)
    before = owners(m, keys)
    hear(m, "w2", leaving=True)
    after = owners(m, keys)
    for k in keys:
        if before[k] == "w2":
            assert after[k] in {"w1", "w3", "w4"}
        else:
            assert after[k] == before[k]


def test_keys_spread_over_three_workers() -> None:
    m = Membership(clock=FakeClock())
    hear(m, "alpha", "beta", "gamma")
    counts = Counter(owners(m, random_keys(600, seed=42)).values())
    assert set(counts) == {"alpha", "beta", "gamma"}
    for n in counts.values():
        assert 0.20 * 600 <= n <= 0.47 * 600


def test_a_silent_worker_expires() -> None:
    clock = FakeClock()
    m = Membership(clock=clock)
    hear(m, "w1", "w2")
    clock.advance(EXPIRY - 0.01)
    assert sorted(m.live(INSTANCE)) == ["w1", "w2"]
    hear(m, "w2")  # w2 keeps beating, w1 has gone silent
    clock.advance(0.02)  # w1 last heard more than EXPIRY ago
    assert m.live(INSTANCE) == ["w2"]
    assert all(o == "w2" for o in owners(m, random_keys(50)).values())

    clock.advance(EXPIRY + 0.01)
    assert m.live(INSTANCE) == []
    assert m.owner(INSTANCE, "k") is None

    hear(m, "w1")  # back: a heartbeat makes it live again
    assert m.owner(INSTANCE, "k") == "w1"


def test_leaving_presence_removes_at_once() -> None:
    m = Membership(clock=FakeClock())
    hear(m, "w1", "w2")
    hear(m, "w1", leaving=True)
    assert m.live(INSTANCE) == ["w2"]
    assert all(o == "w2" for o in owners(m, random_keys(50)).values())
    hear(m, "ghost", leaving=True)  # never heard: nothing to remove, no error
    hear(m, "w1", leaving=True, instance="unknown")
    assert m.live(INSTANCE) == ["w2"]
    assert m.live("unknown") == []


def test_forget_removes_a_worker() -> None:
    m = Membership(clock=FakeClock())
    hear(m, "w1", "w2")
    hear(m, "w9", instance="other")
    m.forget(INSTANCE, "w1")
    assert m.live(INSTANCE) == ["w2"]
    assert m.owner(INSTANCE, "any key") == "w2"
    m.forget(INSTANCE, "nobody")
    m.forget("never-heard", "w1")
    assert m.live(INSTANCE) == ["w2"]
    assert m.live("other") == ["w9"]
    m.forget(INSTANCE, "w2")
    assert m.owner(INSTANCE, "any key") is None


def test_heard_says_when_the_set_of_workers_changed() -> None:
    m = Membership(clock=FakeClock())

    def said(worker: str, leaving: bool = False) -> bool:
        return m.heard(Presence(instance=INSTANCE, worker=worker, leaving=leaving))

    assert said("w1") is True  # joined
    assert said("w1") is False  # a heartbeat
    assert said("w2") is True
    assert said("w1", leaving=True) is True  # left
    assert said("w1", leaving=True) is False  # already gone
    assert m.instances() == [INSTANCE] and m.live(INSTANCE) == ["w2"]
