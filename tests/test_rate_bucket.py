"""max_rps token bucket (gandalf_workers/rate.py), with a fake clock: the burst
is one second's worth of tokens, a refused take answers the exact time until
the next token, set_rate rescales capacity and refill, and (hypothesis) no
window of time ever admits more than capacity + rate * its length."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fake_clock import FakeClock
from gandalf_workers.rate import TokenBucket

#: Slack for float rounding when the fake clock is advanced by exactly a wait.
EPS = 1e-9




def drain(b: TokenBucket) -> int:
    """Take until refused; the number of admitted takes."""
    n = 0
    while b.take() == 0.0:
        n += 1
        assert n < 10_000
    return n


@pytest.mark.parametrize(
    ("rate", "burst", "wait"),
    [(4, 4, 0.25), (1, 1, 1.0), (10, 10, 0.1), (0.5, 1, 2.0), (2.5, 2, 0.2)],
)
def test_fresh_bucket_burst_then_exact_wait(rate: float, burst: int, wait: float) -> None:
    clock = FakeClock()
    b = TokenBucket(rate, clock=clock)
    assert b.capacity == max(1.0, rate)
    assert [b.take() for _ in range(burst)] == [0.0] * burst
    assert b.take() == pytest.approx(wait)
    assert b.take() == pytest.approx(wait)  # a refusal takes nothing


def test_wait_counts_down_and_one_token_per_period() -> None:
    clock = FakeClock()
    b = TokenBucket(4, clock=clock)
    assert drain(b) == 4
    clock.advance(0.1)
    assert b.take() == pytest.approx(0.15)
    clock.advance(0.15 + EPS)
    assert b.take() == 0.0
    assert b.take() == pytest.approx(0.25)
    clock.advance(0.25 + EPS)
    assert b.take() == 0.0
    assert b.take() > 0.0


def test_refill_is_capped_at_capacity() -> None:
    clock = FakeClock()
    b = TokenBucket(3, clock=clock)
    assert drain(b) == 3
    clock.advance(3600)
    assert drain(b) == 3


@pytest.mark.parametrize("rate", [0, 0.0, -1, -0.5])
def test_rate_must_be_positive(rate: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, clock=FakeClock())


def test_set_rate_halving_shrinks_capacity_clamps_tokens_and_slows_refill() -> None:
    clock = FakeClock()
    b = TokenBucket(10, clock=clock)
    b.set_rate(5)
    assert (b.rate, b.capacity) == (5.0, 5.0)
    assert drain(b) == 5  # the 10 tokens were clamped to the new capacity
    assert b.take() == pytest.approx(0.2)
    clock.advance(0.1)  # a token at rate 10, only half of one at rate 5
    assert b.take() == pytest.approx(0.1)
    clock.advance(0.1 + EPS)
    assert b.take() == 0.0
    clock.advance(3600)
    assert drain(b) == 5


def test_set_rate_keeps_tokens_below_the_new_capacity() -> None:
    clock = FakeClock()
    b = TokenBucket(10, clock=clock)
    assert [b.take() for _ in range(7)] == [0.0] * 7
    b.set_rate(5)
    assert drain(b) == 3


def test_set_rate_refills_at_the_old_rate_up_to_the_change() -> None:
    clock = FakeClock()
    b = TokenBucket(10, clock=clock)
    drain(b)
    clock.advance(0.05)  # half a token earned at rate 10
    b.set_rate(1)
    assert b.take() == pytest.approx(0.5)  # the other half, at rate 1


def test_set_rate_raising_does_not_top_up() -> None:
    clock = FakeClock()
    b = TokenBucket(2, clock=clock)
    b.set_rate(8)
    assert b.capacity == 8.0
    assert drain(b) == 2
    clock.advance(0.75)  # 6 tokens at rate 8
    assert drain(b) == 6


def test_set_rate_to_zero_still_answers_a_finite_wait() -> None:
    clock = FakeClock()
    b = TokenBucket(2, clock=clock)
    drain(b)
    b.set_rate(0)
    wait = b.take()
    assert wait > 0.0
    assert math.isfinite(wait)


# ------------------------------------------------------------------ properties

STEPS = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=2.0, allow_nan=False),
        st.integers(min_value=0, max_value=6),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(min_value=0.1, max_value=50.0, allow_nan=False), steps=STEPS)
def test_no_window_admits_more_than_capacity_plus_rate_times_length(
    rate: float, steps: list[tuple[float, int]]
) -> None:
    clock = FakeClock()
    b = TokenBucket(rate, clock=clock)
    times: list[float] = []
    admitted: list[int] = []  # admitted at each step
    for dt, takes in steps:
        clock.advance(dt)
        n = 0
        for _ in range(takes):
            wait = b.take()
            if wait == 0.0:
                n += 1
            else:
                assert 0.0 < wait <= 1.0 / rate + EPS
        times.append(clock.t)
        admitted.append(n)
    for i in range(len(times)):
        total = 0
        for j in range(i, len(times)):
            total += admitted[j]
            assert total <= b.capacity + rate * (times[j] - times[i]) + 1e-6


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=0.1, max_value=50.0, allow_nan=False),
    taken=st.integers(min_value=0, max_value=60),
    dt=st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
)
def test_the_wait_is_exactly_the_time_to_the_next_token(rate: float, taken: int, dt: float) -> None:
    clock = FakeClock()
    b = TokenBucket(rate, clock=clock)
    for _ in range(taken):
        b.take()
    clock.advance(dt)
    wait = b.take()
    if wait == 0.0:
        return
    if wait > 1e-6:
        clock.advance(wait - 1e-7)  # a little less is not enough
        assert b.take() > 0.0
        clock.advance(1e-7)
    clock.advance(EPS)
    assert b.take() == 0.0
