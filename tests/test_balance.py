"""Unit tests for the router's pure load-balancing module (no I/O)."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from gandalf_common.records import RouteTargetRecord
from gandalf_router.balance import (
    DEFAULT_PRIOR_S,
    LEAST_LATENCY,
    PRIORITY,
    WEIGHTED,
    Balancer,
    PeakEwma,
    target_key,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def tgt(provider: str, *, model: str = "m", priority: int = 0,
        weight: int = 1) -> RouteTargetRecord:
    return RouteTargetRecord(provider=provider, model=model, priority=priority, weight=weight)


def firsts(bal: Balancer, targets, strategy: str, n: int) -> Counter:
    return Counter(bal.order(targets, strategy)[0].provider for _ in range(n))


# -- PeakEwma -------------------------------------------------------------------


def test_peak_jumps_then_decays_with_time() -> None:
    clock = FakeClock()
    e = PeakEwma(decay_s=10.0, clock=clock)
    assert e.value is None
    assert e.observe(0.1) == pytest.approx(0.1)
    clock.now += 1.0
    assert e.observe(2.0) == pytest.approx(2.0)          # peak: taken at once
    clock.now += 10.0                                     # one decay constant later
    w = math.exp(-1.0)
    assert e.observe(0.1) == pytest.approx(2.0 * w + 0.1 * (1 - w))
    v = e.value
    clock.now += 100.0                                    # long quiet -> nearly the sample
    assert e.observe(0.1) == pytest.approx(0.1, abs=1e-4)
    assert e.value < v


def test_decay_is_slow_for_samples_close_in_time() -> None:
    clock = FakeClock()
    e = PeakEwma(decay_s=10.0, clock=clock)
    e.observe(1.0)
    clock.now += 0.1
    assert e.observe(0.0) == pytest.approx(math.exp(-0.01))   # barely moves


def test_cost_scales_with_inflight_and_uses_prior() -> None:
    e = PeakEwma(clock=FakeClock())
    assert e.cost(0) == pytest.approx(DEFAULT_PRIOR_S)
    assert e.cost(3, prior=0.2) == pytest.approx(0.8)
    e.observe(0.5)
    assert e.cost(0) == pytest.approx(0.5)
    assert e.cost(2) == pytest.approx(1.5)
    with pytest.raises(ValueError):
        PeakEwma(decay_s=0)


# -- Balancer bookkeeping ---------------------------------------------------------


def test_start_finish_tracks_inflight_and_latency() -> None:
    bal = Balancer(random.Random(1), FakeClock())
    bal.start("a/m")
    bal.start("a/m")
    assert bal.inflight("a/m") == 2
    assert bal.cost("a/m") == pytest.approx(DEFAULT_PRIOR_S * 3)
    bal.finish("a/m", 0.2)
    assert bal.inflight("a/m") == 1
    assert bal.latency("a/m") == pytest.approx(0.2)
    bal.finish("a/m", 0.2)
    bal.finish("a/m", 0.2)                                # extra finish never goes negative
    assert bal.inflight("a/m") == 0


def test_failure_is_charged_a_penalty() -> None:
    bal = Balancer(random.Random(1), FakeClock(), failure_penalty_s=1.5)
    bal.finish("a/m", 0.01, ok=False)
    assert bal.latency("a/m") == pytest.approx(1.5)


def test_prior_is_median_of_known() -> None:
    bal = Balancer(random.Random(1), FakeClock())
    assert bal.prior() == DEFAULT_PRIOR_S
    for key, lat in (("a/m", 0.1), ("b/m", 0.3), ("c/m", 0.9)):
        bal.finish(key, lat)
    assert bal.prior() == pytest.approx(0.3)
    assert bal.cost("new/m") == pytest.approx(0.3)


# -- order: priority groups ---------------------------------------------------------


@pytest.mark.parametrize("strategy", [PRIORITY, WEIGHTED, LEAST_LATENCY, "bogus"])
def test_priority_groups_never_reordered(strategy: str) -> None:
    bal = Balancer(random.Random(7), FakeClock())
    bal.finish(target_key(tgt("slow-p1")), 5.0)           # a slow tier-1 target
    bal.finish(target_key(tgt("fast-p2")), 0.001)          # a fast tier-2 target
    targets = [tgt("fast-p2", priority=2), tgt("slow-p1", priority=1),
               tgt("x-p1", priority=1, weight=5), tgt("y-p3", priority=3)]
    for _ in range(200):
        got = bal.order(targets, strategy)
        assert [t.priority for t in got] == [1, 1, 2, 3]
        assert sorted(got, key=lambda t: t.provider) == sorted(targets, key=lambda t: t.provider)


def test_priority_strategy_keeps_config_order() -> None:
    bal = Balancer(random.Random(7), FakeClock())
    bal.finish("a/m", 9.0)
    targets = [tgt("a"), tgt("b"), tgt("c")]
    assert bal.order(targets, PRIORITY) == targets
    assert bal.order(targets, "unknown") == targets
    assert bal.order([], LEAST_LATENCY) == []


@pytest.mark.parametrize("strategy", [WEIGHTED, LEAST_LATENCY])
def test_single_target_group_untouched(strategy: str) -> None:
    bal = Balancer(random.Random(7), FakeClock())
    t = tgt("only", weight=0)
    assert bal.order([t], strategy) == [t]


# -- order: weighted ------------------------------------------------------------------


def test_weighted_respects_weights() -> None:
    bal = Balancer(random.Random(42), FakeClock())
    targets = [tgt("heavy", weight=3), tgt("light", weight=1)]
    n = 4000
    c = firsts(bal, targets, WEIGHTED, n)
    assert abs(c["heavy"] / n - 0.75) < 0.03
    assert c["heavy"] + c["light"] == n


def test_weighted_zero_weight_never_first() -> None:
    bal = Balancer(random.Random(42), FakeClock())
    targets = [tgt("zero", weight=0), tgt("a"), tgt("b")]
    for _ in range(500):
        got = bal.order(targets, WEIGHTED)
        assert got[-1].provider == "zero"
        assert {t.provider for t in got[:2]} == {"a", "b"}
    everyone_zero = [tgt("a", weight=0), tgt("b", weight=0)]
    assert bal.order(everyone_zero, WEIGHTED) == everyone_zero


# -- order: least-latency (P2C) --------------------------------------------------------


def test_p2c_prefers_the_faster_upstream() -> None:
    bal = Balancer(random.Random(1234), FakeClock())
    bal.finish("fast/m", 0.05)
    bal.finish("slow/m", 0.5)
    targets = [tgt("slow"), tgt("fast")]
    c = firsts(bal, targets, LEAST_LATENCY, 1000)
    assert c["fast"] > 900


def test_p2c_rest_ordered_by_cost() -> None:
    bal = Balancer(random.Random(3), FakeClock())
    for name, lat in (("a", 0.4), ("b", 0.1), ("c", 0.3), ("d", 0.2)):
        bal.finish(f"{name}/m", lat)
    targets = [tgt(n) for n in "abcd"]
    for _ in range(200):
        got = [t.provider for t in bal.order(targets, LEAST_LATENCY)]
        rest = got[1:]
        assert rest == sorted(rest, key=lambda p: bal.cost(f"{p}/m"))
        assert got[0] != "a"                              # the slowest never wins a P2C duel


def test_inflight_penalizes_busy_target() -> None:
    bal = Balancer(random.Random(99), FakeClock())
    bal.finish("busy/m", 0.1)
    bal.finish("idle/m", 0.15)
    targets = [tgt("busy"), tgt("idle")]
    assert firsts(bal, targets, LEAST_LATENCY, 100)["busy"] == 100
    for _ in range(3):
        bal.start("busy/m")                               # 0.1 * 4 > 0.15 * 1
    assert firsts(bal, targets, LEAST_LATENCY, 100)["idle"] == 100
    for _ in range(3):
        bal.finish("busy/m", 0.1)
    assert firsts(bal, targets, LEAST_LATENCY, 100)["busy"] == 100


def test_p2c_weight_divides_cost() -> None:
    bal = Balancer(random.Random(5), FakeClock())
    bal.finish("a/m", 0.1)
    bal.finish("b/m", 0.15)
    # b is slower but has twice the weight: 0.15 / 2 < 0.1 / 1.
    c = firsts(bal, [tgt("a"), tgt("b", weight=2)], LEAST_LATENCY, 200)
    assert c["b"] == 200


def test_p2c_zero_weight_never_first() -> None:
    bal = Balancer(random.Random(5), FakeClock())
    bal.finish("zero/m", 0.001)
    bal.finish("a/m", 0.3)
    bal.finish("b/m", 0.4)
    for _ in range(200):
        assert bal.order([tgt("zero", weight=0), tgt("a"), tgt("b")],
                         LEAST_LATENCY)[0].provider != "zero"
    # only one eligible target -> it leads
    got = bal.order([tgt("zero", weight=0), tgt("b")], LEAST_LATENCY)
    assert [t.provider for t in got] == ["b", "zero"]


def test_new_target_is_not_starved() -> None:
    bal = Balancer(random.Random(11), FakeClock())
    bal.finish("fast/m", 0.05)
    bal.finish("slow/m", 0.5)
    targets = [tgt("fast"), tgt("slow"), tgt("new")]
    c = firsts(bal, targets, LEAST_LATENCY, 1000)
    assert c["new"] > 100                                 # median prior beats the slow one
    assert c["fast"] > c["new"]
    # alone with one known target, an unseen one ties on the prior and gets ~half
    solo = Balancer(random.Random(12), FakeClock())
    solo.finish("fast/m", 0.05)
    c2 = firsts(solo, [tgt("fast"), tgt("fresh")], LEAST_LATENCY, 1000)
    assert 350 < c2["fresh"] < 650


def test_seeded_rng_is_deterministic() -> None:
    targets = [tgt("a", weight=2), tgt("b"), tgt("c", weight=3)]

    def run(seed: int) -> list[list[str]]:
        bal = Balancer(random.Random(seed), FakeClock())
        return [[t.provider for t in bal.order(targets, WEIGHTED)] for _ in range(50)]

    assert run(8) == run(8)
