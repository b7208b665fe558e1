"""CircuitBreaker.adopt / remaining_open (gandalf_workers/breaker.py): a worker
follows a sibling's breaker transitions for the same provider instance. Pure,
fake clock."""

from __future__ import annotations

import pytest

from fake_clock import FakeClock
from gandalf_workers.breaker import BreakerSnapshot, CircuitBreaker
from test_breaker import make, trip


def test_remaining_open_is_zero_unless_open() -> None:
    b, clock, _ = make(open_timeout=30.0)
    assert b.remaining_open() == 0.0
    trip(b)
    assert b.remaining_open() == pytest.approx(30.0)
    clock.advance(12.5)
    assert b.remaining_open() == pytest.approx(17.5)
    clock.advance(17.5)
    assert b.remaining_open() == 0.0
    assert b.state == "half_open"


def test_adopt_open_on_a_closed_breaker() -> None:
    b, clock, transitions = make(open_timeout=30.0)
    b.adopt("open", open_for=5.0)
    assert b.state == "open"
    assert b.allow() is False
    assert b.remaining_open() == pytest.approx(5.0)
    assert transitions == [("closed", "open")]

    clock.advance(4.9)
    assert b.state == "open"
    assert b.allow() is False
    assert b.remaining_open() == pytest.approx(0.1)

    clock.advance(0.1 + 1e-9)
    assert b.state == "half_open"
    assert b.remaining_open() == 0.0
    assert b.allow() is True  # the one probe
    assert b.allow() is False
    assert transitions == [("closed", "open"), ("open", "half_open")]


def test_adopt_open_is_visible_to_the_transition_callback() -> None:
    """The worker publishes ``remaining_open()`` from its callback: the new
    open time must already be in place when the callback runs."""
    clock = FakeClock()
    seen: list[tuple[str, float]] = []
    b = CircuitBreaker(clock=clock, open_timeout=30.0)
    b.on_transition = lambda _old, new: seen.append((new, b.remaining_open()))
    b.adopt("open", open_for=7.0)
    assert seen == [("open", pytest.approx(7.0))]


def test_adopt_open_extends_but_never_shortens() -> None:
    b, clock, transitions = make(open_timeout=30.0)
    trip(b)
    clock.advance(20.0)
    assert b.remaining_open() == pytest.approx(10.0)

    b.adopt("open", open_for=5.0)  # shorter: ignored
    assert b.remaining_open() == pytest.approx(10.0)

    b.adopt("open", open_for=25.0)  # longer: extended
    assert b.state == "open"
    assert b.remaining_open() == pytest.approx(25.0)
    assert transitions == [("closed", "open")]  # no new transition

    b.adopt("open", open_for=3.0)
    assert b.remaining_open() == pytest.approx(25.0)

    clock.advance(24.9)
    assert b.state == "open"
    clock.advance(0.1 + 1e-9)
    assert b.state == "half_open"


def test_adopt_open_on_a_half_open_breaker_reopens_and_frees_the_probe() -> None:
    b, clock, transitions = make(open_timeout=30.0)
    trip(b)
    clock.advance(30.0)
    assert b.allow() is True  # probe out
    b.adopt("open", open_for=4.0)
    assert b.state == "open"
    assert b.snapshot().probe_out is False  # open: no probe is out
    assert transitions[-1] == ("half_open", "open")
    b.record(0.0)  # the probe's late success: ignored while open
    assert b.state == "open"
    assert b.remaining_open() == pytest.approx(4.0)
    clock.advance(4.0 + 1e-9)
    assert b.snapshot().probe_out is False
    assert b.allow() is True


def test_adopt_open_after_the_open_time_lazily_elapsed() -> None:
    b, clock, transitions = make(open_timeout=30.0)
    trip(b)
    clock.advance(31.0)  # half-open now, though no method was called yet
    b.adopt("open", open_for=5.0)
    assert b.state == "open"
    assert b.remaining_open() == pytest.approx(5.0)
    assert transitions == [("closed", "open"), ("open", "half_open"), ("half_open", "open")]


def test_adopt_closed_on_an_open_breaker_starts_a_fresh_window() -> None:
    b, _, transitions = make(min_samples=10, open_timeout=30.0)
    trip(b)
    assert b.snapshot().samples == 10  # tripping keeps the window
    b.adopt("closed")
    assert b.snapshot() == BreakerSnapshot("closed", 0, 0.0, False)
    assert b.allow() is True
    assert b.remaining_open() == 0.0
    assert transitions == [("closed", "open"), ("open", "closed")]
    # The old failures are gone: tripping again takes min_samples new ones.
    for _ in range(9):
        b.record(1.0)
    assert b.state == "closed"
    b.record(1.0)
    assert b.state == "open"


def test_adopt_closed_on_a_half_open_breaker_with_a_probe_out() -> None:
    b, clock, transitions = make(open_timeout=30.0)
    trip(b)
    clock.advance(30.0)
    assert b.allow() is True
    assert b.snapshot().probe_out is True
    b.adopt("closed")
    assert b.snapshot() == BreakerSnapshot("closed", 0, 0.0, False)
    assert transitions[-1] == ("half_open", "closed")
    assert b.allow() is True


def test_adopt_closed_on_a_closed_breaker_does_nothing() -> None:
    b, _, transitions = make(min_samples=10)
    for _ in range(5):
        b.record(1.0)
    b.adopt("closed")
    assert b.snapshot() == BreakerSnapshot("closed", 5, 5.0, False)  # window kept
    assert transitions == []


def test_adopt_half_open_does_nothing() -> None:
    b, clock, transitions = make(open_timeout=30.0)
    b.adopt("half_open")
    assert b.state == "closed"
    assert transitions == []

    trip(b)
    clock.advance(10.0)
    b.adopt("half_open")
    assert b.state == "open"
    assert b.allow() is False
    assert b.remaining_open() == pytest.approx(20.0)
    assert transitions == [("closed", "open")]


@pytest.mark.parametrize("open_for", [0.0, -1.0, -30.0])
def test_adopt_open_without_a_positive_duration_does_nothing(open_for: float) -> None:
    b, clock, transitions = make(open_timeout=30.0)
    b.adopt("open", open_for=open_for)
    assert b.state == "closed"
    assert b.allow() is True
    assert transitions == []

    trip(b)
    clock.advance(10.0)
    b.adopt("open", open_for=open_for)
    assert b.state == "open"
    assert b.remaining_open() == pytest.approx(20.0)
    assert transitions == [("closed", "open")]


def test_adopt_open_default_duration_does_nothing() -> None:
    b, _, transitions = make()
    b.adopt("open")
    assert b.state == "closed"
    assert transitions == []
