"""Unit and property tests for :mod:`gandalf_workers.breaker` (pure, fake clock)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fake_clock import FakeClock
from gandalf_workers.breaker import BreakerSnapshot, CircuitBreaker, classify


def make(**kw: object) -> tuple[CircuitBreaker, FakeClock, list[tuple[str, str]]]:
    clock = FakeClock()
    transitions: list[tuple[str, str]] = []
    b = CircuitBreaker(clock=clock, on_transition=lambda o, n: transitions.append((o, n)), **kw)
    return b, clock, transitions


def trip(b: CircuitBreaker) -> None:
    for _ in range(b.min_samples):
        b.record(1.0)
    assert b.state == "open"


# -- classify -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kw", "expected"),
    [
        (200, {}, 0.0),
        (201, {}, 0.0),
        (400, {}, 0.0),
        (401, {}, 0.0),
        (404, {}, 0.0),
        (408, {}, 0.0),
        (429, {}, 0.5),
        (500, {}, 1.0),
        (502, {}, 1.0),
        (503, {}, 1.0),
        (504, {}, 1.0),
        (599, {}, 1.0),
        (None, {}, 1.0),
        (None, {"timeout": True}, 1.5),
        (200, {"timeout": True}, 1.5),
        (None, {"client_gone": True}, None),
        (500, {"client_gone": True}, None),
        (None, {"timeout": True, "client_gone": True}, None),
    ],
)
def test_classify(status: int | None, kw: dict[str, bool], expected: float | None) -> None:
    assert classify(status, **kw) == expected


# -- closed state / tripping ------------------------------------------------------


def test_defaults() -> None:
    b = CircuitBreaker()
    assert (b.window_seconds, b.min_samples, b.threshold, b.open_timeout) == (60, 10, 0.30, 30.0)
    assert b.state == "closed"
    assert b.allow() is True
    assert b.snapshot() == BreakerSnapshot("closed", 0, 0.0, False)


def test_no_trip_below_min_samples() -> None:
    b, _, transitions = make()
    for _ in range(9):
        b.record(1.5)
    assert b.state == "closed"
    assert b.snapshot().samples == 9
    assert transitions == []
    b.record(1.5)
    assert b.state == "open"
    assert transitions == [("closed", "open")]


def test_trips_at_threshold_exactly() -> None:
    b, _, _ = make()
    for _ in range(7):
        b.record(0.0)
    for _ in range(2):
        b.record(1.0)
    assert b.state == "closed"  # 9 samples
    b.record(1.0)  # 3 / 10 = 0.30
    assert b.state == "open"


def test_below_threshold_stays_closed() -> None:
    b, _, _ = make()
    for _ in range(80):
        b.record(0.0)
    for _ in range(34):
        b.record(1.0)  # at most 34 / 114 < 0.30
    assert b.state == "closed"
    b.record(1.5)  # 35.5 / 115 >= 0.30
    assert b.state == "open"


def test_weights_429_half_failure() -> None:
    b, _, _ = make()
    for _ in range(4):
        b.record(0.0)
    for _ in range(5):
        b.record(classify(429))  # 2.5 / 9
    assert b.state == "closed"
    b.record(classify(429))  # 3.0 / 10
    assert b.state == "open"


def test_other_4xx_is_a_sample_not_a_failure() -> None:
    b, _, _ = make()
    for _ in range(50):
        b.record(classify(400))
    assert b.snapshot().samples == 50
    assert b.snapshot().failures == 0.0
    assert b.state == "closed"


def test_client_cancellation_and_deadline_not_recorded() -> None:
    b, _, _ = make()
    for _ in range(100):
        b.record(classify(None, client_gone=True))
        b.record(classify(None, timeout=True, client_gone=True))
    assert b.snapshot().samples == 0
    assert b.state == "closed"
    for _ in range(9):
        b.record(1.0)
    b.record(classify(None, client_gone=True))  # would have been the 10th sample
    assert b.state == "closed"
    assert b.snapshot().samples == 9


def test_weight0_sample_reaching_min_samples_trips() -> None:
    b, clock, _ = make(window_seconds=60)
    for _ in range(9):
        b.record(1.0)
    assert b.snapshot().samples == 9
    clock.advance(30)  # still inside the window
    b.record(0.0)  # 10 samples, 9.0 / 10 >= 0.30: the check runs on every sample
    assert b.state == "open"


def test_window_forgets_old_buckets_no_trip() -> None:
    b, clock, _ = make(window_seconds=60)
    for _ in range(9):
        b.record(1.0)
    clock.advance(59.999)  # same 60 s window (the first second is still in)
    assert b.snapshot().samples == 9
    clock.advance(1.0)  # the first bucket is now 60 s old: forgotten
    assert b.snapshot().samples == 0
    b.record(1.0)
    assert b.state == "closed"
    assert b.snapshot() == BreakerSnapshot("closed", 1, 1.0, False)


def test_window_bucket_reused_after_wraparound() -> None:
    b, clock, _ = make(window_seconds=5, min_samples=1000)
    b.record(1.0)
    clock.advance(5)  # same ring slot, new second
    b.record(0.5)
    assert (b.snapshot().samples, b.snapshot().failures) == (1, 0.5)
    clock.advance(1000)
    assert (b.snapshot().samples, b.snapshot().failures) == (0, 0.0)


# -- open / half-open ---------------------------------------------------------------


def test_open_rejects_until_timeout_then_single_probe() -> None:
    b, clock, transitions = make(open_timeout=30)
    trip(b)
    assert b.allow() is False
    clock.advance(29.9)
    assert b.allow() is False
    assert b.state == "open"
    clock.advance(0.1)
    assert b.state == "half_open"
    assert transitions == [("closed", "open"), ("open", "half_open")]
    assert b.allow() is True  # the probe
    assert b.allow() is False
    assert b.allow() is False
    assert b.snapshot().probe_out is True


def test_probe_success_closes_and_resets_window() -> None:
    b, clock, transitions = make()
    trip(b)
    clock.advance(30)
    assert b.allow() is True
    b.record(classify(200))
    assert b.state == "closed"
    assert b.snapshot() == BreakerSnapshot("closed", 0, 0.0, False)
    assert transitions == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    assert b.allow() is True
    # A fresh window: 9 failures do not trip.
    for _ in range(9):
        b.record(1.0)
    assert b.state == "closed"


def test_stuck_half_open_regression_400_probe_closes() -> None:
    """§15.3: a probe ending with a weight-0 outcome used to leave it half-open forever."""
    b, clock, _ = make()
    trip(b)
    clock.advance(30)
    assert b.allow() is True
    b.record(classify(400))
    assert b.state == "closed"
    assert b.allow() is True
    assert b.allow() is True


@pytest.mark.parametrize("weight", [0.5, 1.0, 1.5])
def test_probe_failure_reopens_with_new_timer(weight: float) -> None:
    b, clock, transitions = make(open_timeout=30)
    trip(b)
    clock.advance(30)
    assert b.allow() is True
    clock.advance(5)
    b.record(weight)
    assert b.state == "open"
    assert transitions[-1] == ("half_open", "open")
    clock.advance(29.9)  # timer restarted at the probe's failure
    assert b.allow() is False
    clock.advance(0.1)
    assert b.allow() is True
    assert b.allow() is False


def test_cancelled_probe_release_frees_slot_stays_half_open() -> None:
    b, clock, transitions = make()
    trip(b)
    clock.advance(30)
    assert b.allow() is True
    assert b.allow() is False
    b.release_probe()
    assert b.state == "half_open"
    assert transitions[-1] == ("open", "half_open")
    assert b.allow() is True  # a new probe
    assert b.allow() is False


def test_probe_client_gone_record_none_frees_slot() -> None:
    b, clock, _ = make()
    trip(b)
    clock.advance(30)
    assert b.allow() is True
    b.record(classify(None, client_gone=True))
    assert b.state == "half_open"
    assert b.allow() is True


def test_release_probe_is_noop_when_closed_or_open() -> None:
    b, _, _ = make()
    b.release_probe()
    assert b.state == "closed"
    trip(b)
    b.release_probe()
    assert b.state == "open"
    assert b.allow() is False


def test_late_outcomes_ignored_while_open_and_without_probe() -> None:
    b, clock, transitions = make()
    trip(b)
    b.record(0.0)  # a call admitted before the trip finishing now
    assert b.state == "open"
    clock.advance(30)
    assert b.state == "half_open"
    b.record(0.0)  # no probe out: ignored
    assert b.state == "half_open"
    b.record(1.0)
    assert b.state == "half_open"
    assert len(transitions) == 2


def test_on_transition_exception_does_not_break_breaker() -> None:
    clock = FakeClock()

    def boom(old: str, new: str) -> None:
        raise RuntimeError("publish failed")

    b = CircuitBreaker(clock=clock, on_transition=boom)
    trip(b)
    clock.advance(30)
    assert b.allow() is True
    b.record(0.0)
    assert b.state == "closed"


def test_default_clock_is_monotonic() -> None:
    import time

    assert CircuitBreaker().clock is time.monotonic


@pytest.mark.parametrize(
    "kw",
    [{"window_seconds": 0}, {"min_samples": 0}, {"threshold": 0}, {"open_timeout": -1}],
)
def test_invalid_parameters(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(**kw)  # type: ignore[arg-type]


# -- property tests -------------------------------------------------------------------

OUTCOMES = st.one_of(
    st.sampled_from([200, 400, 404, 429, 500, 503, None]).map(lambda s: classify(s)),
    st.just(classify(None, timeout=True)),
    st.just(classify(500, client_gone=True)),
)
ADVANCES = st.one_of(
    st.just(0.0),
    st.floats(min_value=0.0, max_value=2.0, allow_nan=False),
    st.floats(min_value=0.0, max_value=90.0, allow_nan=False),
)
STEPS = st.lists(st.tuples(ADVANCES, OUTCOMES), max_size=150)


def naive(records: list[tuple[float, float]], now: float, window: int) -> tuple[int, float]:
    low = math.floor(now) - window
    inside = [w for t, w in records if low < math.floor(t) <= math.floor(now)]
    return len(inside), sum(inside)


@settings(max_examples=150, deadline=None)
@given(steps=STEPS, window=st.integers(min_value=1, max_value=60))
def test_property_window_totals_match_naive(
    steps: list[tuple[float, float | None]], window: int
) -> None:
    clock = FakeClock(0.0)
    b = CircuitBreaker(window_seconds=window, min_samples=10**9, clock=clock)
    records: list[tuple[float, float]] = []
    for advance, weight in steps:
        clock.advance(advance)
        b.record(weight)
        if weight is not None:
            records.append((clock.t, weight))
        snap = b.snapshot()
        samples, failures = naive(records, clock.t, window)
        assert snap.samples == samples
        assert snap.failures == pytest.approx(failures)
        assert snap.state == "closed"


@settings(max_examples=150, deadline=None)
@given(
    steps=STEPS,
    window=st.integers(min_value=1, max_value=60),
    min_samples=st.integers(min_value=1, max_value=20),
    threshold=st.sampled_from([0.1, 0.3, 0.5, 0.9]),
)
def test_property_trips_exactly_per_model_never_below_min_samples(
    steps: list[tuple[float, float | None]], window: int, min_samples: int, threshold: float
) -> None:
    clock = FakeClock(0.0)
    seen: list[BreakerSnapshot] = []
    b = CircuitBreaker(
        window_seconds=window,
        min_samples=min_samples,
        threshold=threshold,
        open_timeout=1e12,
        clock=clock,
    )
    b.on_transition = lambda old, new: seen.append(b.snapshot())
    records: list[tuple[float, float]] = []
    for advance, weight in steps:
        clock.advance(advance)
        assert b.allow() is True
        b.record(weight)
        if weight is None:
            assert b.state == "closed"
            continue
        records.append((clock.t, weight))
        samples, failures = naive(records, clock.t, window)
        # Weights are multiples of 0.5, so the sums are exact in both computations.
        should_trip = samples >= min_samples and failures / samples >= threshold
        if b.state == "open":
            assert should_trip
            assert len(seen) == 1
            assert seen[0].samples >= min_samples
            assert seen[0].failures / seen[0].samples >= threshold
            assert b.allow() is False
            return
        assert not should_trip
    assert b.state == "closed"
    assert seen == []
