"""Retry policy (gandalf_workers/retry.py): jittered backoff bounds, Retry-After
against the deadline, max_attempts, the retryable() table, and the sliding-window
retry budget (fake clock), including a hypothesis property for the budget bound."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gandalf_workers.retry import RetryBudget, RetryPolicy


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- RetryPolicy


@pytest.mark.parametrize("attempt", [0, 1, 2, 3, 5, 8, 20, 200])
def test_delay_within_full_jitter_bounds(attempt: int) -> None:
    policy = RetryPolicy(base=0.1, cap=10.0, max_attempts=1000, rng=random.Random(1234))
    ceiling = min(10.0, 0.1 * 2**attempt) if attempt < 64 else 10.0
    samples = [policy.delay(attempt, remaining=1e9) for _ in range(2000)]
    assert all(s is not None and 0.0 <= s <= ceiling for s in samples)
    # Full jitter: spread over the whole range, not bunched near the top.
    assert min(samples) < 0.1 * ceiling  # type: ignore[operator]
    assert max(samples) > 0.9 * ceiling  # type: ignore[operator]
    mean = sum(samples) / len(samples)  # type: ignore[arg-type]
    assert 0.4 * ceiling < mean < 0.6 * ceiling


def test_delay_is_deterministic_with_seeded_rng() -> None:
    a = RetryPolicy(max_attempts=10, rng=random.Random(7))
    b = RetryPolicy(max_attempts=10, rng=random.Random(7))
    assert [a.delay(i, remaining=100) for i in range(9)] == [
        b.delay(i, remaining=100) for i in range(9)
    ]


def test_retry_after_used_when_shorter_than_remaining() -> None:
    policy = RetryPolicy(rng=random.Random(0))
    assert policy.delay(0, retry_after=2.5, remaining=10.0) == 2.5
    # Honoured even above the backoff cap: the upstream knows best.
    long_policy = RetryPolicy(cap=1.0, rng=random.Random(0))
    assert long_policy.delay(0, retry_after=5.0, remaining=30.0) == 5.0


@pytest.mark.parametrize("remaining", [1.0, 2.0, 2.04])
def test_retry_after_refused_when_not_fitting_deadline(remaining: float) -> None:
    policy = RetryPolicy(rng=random.Random(0))
    # 2.0 s requested; remaining minus the 50 ms margin is shorter.
    assert policy.delay(0, retry_after=2.0, remaining=remaining) is None


def test_zero_retry_after_falls_back_to_backoff() -> None:
    policy = RetryPolicy(base=0.1, rng=random.Random(3))
    d = policy.delay(1, retry_after=0.0, remaining=10.0)
    assert d is not None and 0.0 <= d <= 0.2


def test_backoff_not_fitting_remaining_gives_none() -> None:
    policy = RetryPolicy(base=1.0, cap=1.0, max_attempts=100, rng=random.Random(5))
    results = [policy.delay(0, remaining=0.55) for _ in range(500)]
    fitted = [r for r in results if r is not None]
    assert all(r <= 0.5 for r in fitted)
    assert len(fitted) < len(results)  # some draws exceed 0.5 s and are refused
    assert policy.delay(0, remaining=0.0) is None
    assert policy.delay(0, remaining=-1.0) is None


def test_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3, rng=random.Random(0))
    assert policy.delay(0, remaining=100) is not None
    assert policy.delay(1, remaining=100) is not None
    assert policy.delay(2, remaining=100) is None
    assert policy.delay(2, retry_after=0.1, remaining=100) is None
    assert policy.delay(7, remaining=100) is None
    single = RetryPolicy(max_attempts=1)
    assert single.delay(0, remaining=100) is None


def test_policy_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(base=0)
    with pytest.raises(ValueError):
        RetryPolicy().delay(-1, remaining=10)


@pytest.mark.parametrize(
    ("status", "connect_error", "expected"),
    [
        (None, True, True),
        (None, False, False),
        (200, False, False),
        (400, False, False),
        (401, False, False),
        (403, False, False),
        (404, False, False),
        (408, False, True),
        (409, False, False),
        (413, False, False),
        (422, False, False),
        (429, False, True),
        (500, False, True),
        (502, False, True),
        (503, False, True),
        (504, False, True),
        (529, False, True),
        (599, False, True),
        (600, False, False),
        (400, True, True),
    ],
)
def test_retryable_table(status: int | None, connect_error: bool, expected: bool) -> None:
    assert RetryPolicy.retryable(status, connect_error=connect_error) is expected
    assert RetryPolicy().retryable(status, connect_error=connect_error) is expected


# ---------------------------------------------------------------- RetryBudget


def _drain(budget: RetryBudget) -> int:
    granted = 0
    while budget.try_acquire_retry():
        granted += 1
        assert granted < 10_000
    return granted


def test_budget_allows_ratio_plus_floor_then_denies() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_per_s=1.0, window_s=10.0, clock=clock)
    for _ in range(100):
        budget.record_request()
    assert _drain(budget) == 20 + 10
    assert not budget.try_acquire_retry()
    assert budget.requests == 100 and budget.retries == 30


def test_budget_floor_without_requests() -> None:
    budget = RetryBudget(clock=FakeClock())
    assert _drain(budget) == 10


def test_budget_new_requests_earn_more_retries() -> None:
    budget = RetryBudget(clock=FakeClock())
    assert _drain(budget) == 10
    for _ in range(5):
        budget.record_request()
    assert _drain(budget) == 1  # 0.2 * 5 = 1 more


def test_budget_ages_out() -> None:
    clock = FakeClock(1000.0)
    budget = RetryBudget(ratio=0.2, min_per_s=1.0, window_s=10.0, clock=clock)
    for _ in range(100):
        budget.record_request()
    assert _drain(budget) == 30
    clock.now += 9.0  # still in the window
    assert not budget.try_acquire_retry()
    clock.now += 1.0  # the first bucket is now window_s seconds old
    assert budget.requests == 0 and budget.retries == 0
    assert _drain(budget) == 10  # back to the floor


def test_budget_sliding_buckets() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(ratio=0.5, min_per_s=0.0, window_s=10.0, clock=clock)
    for _ in range(10):
        budget.record_request()  # second 0
    clock.now = 5.5
    for _ in range(10):
        budget.record_request()  # second 5
    assert _drain(budget) == 10
    clock.now = 10.0  # second 0 ages out: 10 requests, 10 retries left
    assert budget.requests == 10 and budget.retries == 10
    assert not budget.try_acquire_retry()
    clock.now = 15.0  # everything gone
    assert budget.requests == 0 and budget.retries == 0
    assert not budget.try_acquire_retry()  # min_per_s=0: no floor


def test_budget_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        RetryBudget(ratio=-0.1)
    with pytest.raises(ValueError):
        RetryBudget(window_s=0.5)


_events = st.lists(
    st.tuples(st.booleans(), st.floats(min_value=0.0, max_value=9.999)),
    max_size=300,
)


@settings(max_examples=150, deadline=None)
@given(
    events=_events,
    ratio=st.sampled_from([0.0, 0.1, 0.2, 0.5]),
    min_per_s=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
)
def test_budget_never_exceeds_bound_within_one_window(
    events: list[tuple[bool, float]], ratio: float, min_per_s: float
) -> None:
    window_s = 10.0
    clock = FakeClock(0.0)
    budget = RetryBudget(ratio=ratio, min_per_s=min_per_s, window_s=window_s, clock=clock)
    requests = granted = 0
    # Time moves forward but stays inside one window, so nothing ages out.
    for is_request, offset in sorted(events, key=lambda e: e[1]):
        clock.now = offset
        if is_request:
            budget.record_request()
            requests += 1
        elif budget.try_acquire_retry():
            granted += 1
        else:  # denied only when one more retry would break the bound
            assert granted + 1 > ratio * requests + min_per_s * window_s - 1e-9
        assert granted <= ratio * requests + min_per_s * window_s + 1e-9
    assert budget.requests == requests and budget.retries == granted
