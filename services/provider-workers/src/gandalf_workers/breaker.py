"""Circuit breaker for one provider instance (pure: no I/O, injectable clock).

Rebuild of the Go gateway's breaker (seed spec §5.1) with the two bugs of
§15.3 fixed:

- the half-open probe slot is released by *any* outcome of the probe, including
  weight-0 ones (an upstream 400) and a cancelled probe (:meth:`release_probe`),
  so the breaker can no longer stick half-open and reject forever;
- client cancellations and client deadlines are not samples at all
  (:func:`classify` returns ``None`` for them), so a client going away never
  counts against the provider.

Window: ``window_seconds`` one-second buckets in a ring, each holding the
weighted failures and the sample count recorded during that second. The totals
are those of the buckets stamped within the last ``window_seconds`` seconds
(``floor(now) - window_seconds < second <= floor(now)``); older buckets are
forgotten.

States:

- ``closed``: every call is allowed; each recorded sample is added to the
  window and the breaker trips (→ ``open``) when samples ≥ ``min_samples`` and
  weighted failures / samples ≥ ``threshold``;
- ``open``: every call is rejected until ``open_timeout`` seconds have passed,
  then the breaker is ``half_open`` (the transition is made lazily, on the next
  call to any method or property);
- ``half_open``: exactly one probe is allowed at a time. Its outcome decides:
  weight 0 (success, other 4xx) → ``closed`` with an empty window; weight > 0 →
  ``open`` with a new timer; cancelled (:meth:`release_probe`) → stays
  ``half_open`` with the slot free.

Outcomes recorded while ``open``, or while ``half_open`` with no probe out
(late results of calls admitted before the breaker tripped), are ignored.
While a probe is out, the next recorded outcome is taken as the probe's.

Not thread-safe: meant to be used from one asyncio event loop.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "WEIGHT_NETWORK",
    "WEIGHT_RATE_LIMITED",
    "WEIGHT_SERVER_ERROR",
    "WEIGHT_SUCCESS",
    "WEIGHT_TIMEOUT",
    "BreakerSnapshot",
    "CircuitBreaker",
    "State",
    "classify",
]

log = logging.getLogger(__name__)

State = Literal["closed", "open", "half_open"]

WEIGHT_SUCCESS = 0.0
WEIGHT_RATE_LIMITED = 0.5
WEIGHT_SERVER_ERROR = 1.0
WEIGHT_NETWORK = 1.0
WEIGHT_TIMEOUT = 1.5


def classify(
    status: int | None, *, timeout: bool = False, client_gone: bool = False
) -> float | None:
    """Weight of one call's outcome; ``None`` means "not a sample".

    - ``client_gone`` (client cancellation or the client's own deadline) →
      ``None``, whatever else is set: the provider is not to blame;
    - ``timeout`` (the upstream did not answer in time) → 1.5;
    - ``status`` ``None`` without a timeout (network / connection error) → 1.0;
    - 429 → 0.5; 5xx → 1.0; any other status (2xx, other 4xx, …) → 0.0, a
      sample that is not a failure.
    """
    if client_gone:
        return None
    if timeout:
        return WEIGHT_TIMEOUT
    if status is None:
        return WEIGHT_NETWORK
    if status == 429:
        return WEIGHT_RATE_LIMITED
    if 500 <= status <= 599:
        return WEIGHT_SERVER_ERROR
    return WEIGHT_SUCCESS


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """Window totals and state at one instant (for tests and diagnostics)."""

    state: State
    samples: int
    failures: float
    probe_out: bool


class CircuitBreaker:
    """Sliding-window circuit breaker; see the module docstring for the rules."""

    def __init__(
        self,
        *,
        window_seconds: int = 60,
        min_samples: int = 10,
        threshold: float = 0.30,
        open_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_transition: Callable[[str, str], None] | None = None,
    ) -> None:
        if window_seconds < 1:
            raise ValueError("window_seconds must be >= 1")
        if min_samples < 1:
            raise ValueError("min_samples must be >= 1")
        if not threshold > 0:
            raise ValueError("threshold must be > 0")
        if open_timeout < 0:
            raise ValueError("open_timeout must be >= 0")
        self.window_seconds = int(window_seconds)
        self.min_samples = int(min_samples)
        self.threshold = float(threshold)
        self.open_timeout = float(open_timeout)
        self.clock = clock
        self.on_transition = on_transition
        n = self.window_seconds
        self._stamps: list[int | None] = [None] * n
        self._failures: list[float] = [0.0] * n
        self._samples: list[int] = [0] * n
        self._state: State = "closed"
        self._opened_at = 0.0
        self._probe_out = False

    # -- public API ---------------------------------------------------------

    @property
    def state(self) -> State:
        self._tick()
        return self._state

    def allow(self) -> bool:
        """Whether a call may be sent now; in half-open, takes the probe slot."""
        self._tick()
        if self._state == "closed":
            return True
        if self._state == "open":
            return False
        if self._probe_out:
            return False
        self._probe_out = True
        return True

    def record(self, weight: float | None) -> None:
        """Record one outcome (a weight from :func:`classify`; ``None`` = no sample).

        In half-open with the probe out, ``None`` releases the slot like
        :meth:`release_probe`.
        """
        self._tick()
        if self._state == "closed":
            if weight is None:
                return
            self._add(self._second(), float(weight))
            samples, failures = self._totals()
            if samples >= self.min_samples and failures / samples >= self.threshold:
                self._trip()
            return
        if self._state == "half_open" and self._probe_out:
            self._probe_out = False
            if weight is None:
                return
            if weight > 0:
                self._trip()
            else:
                self._reset_window()
                self._transition("closed")
        # open, or half-open without a probe out: a late outcome, ignored.

    def release_probe(self) -> None:
        """The probe was cancelled: free the slot, stay half-open."""
        self._tick()
        if self._state == "half_open":
            self._probe_out = False

    def remaining_open(self) -> float:
        """Seconds until an open breaker half-opens (0 when not open)."""
        self._tick()
        if self._state != "open":
            return 0.0
        return max(0.0, self.open_timeout - (self.clock() - self._opened_at))

    def adopt(self, new: str, *, open_for: float = 0.0) -> None:
        """Take another replica's transition for the same provider instance.

        ``open``: open for ``open_for`` seconds, at most this breaker's own
        ``open_timeout`` (or longer, if already open for longer);
        ``closed``: a sibling's probe succeeded, close with a fresh window.
        ``half_open`` is not adopted: each replica half-opens on its own
        clock and sends its own single probe.
        """
        self._tick()
        if new == "open" and open_for > 0:
            opened_at = self.clock() - max(0.0, self.open_timeout - open_for)
            if self._state == "open":
                self._opened_at = max(self._opened_at, opened_at)
                return
            self._opened_at = opened_at
            self._probe_out = False
            self._transition("open")
        elif new == "closed" and self._state != "closed":
            self._probe_out = False
            self._reset_window()
            self._transition("closed")

    def snapshot(self) -> BreakerSnapshot:
        self._tick()
        samples, failures = self._totals()
        return BreakerSnapshot(self._state, samples, failures, self._probe_out)

    # -- internals ----------------------------------------------------------

    def _second(self) -> int:
        return math.floor(self.clock())

    def _tick(self) -> None:
        if self._state == "open" and self.clock() - self._opened_at >= self.open_timeout:
            self._probe_out = False
            self._transition("half_open")

    def _add(self, second: int, weight: float) -> None:
        i = second % self.window_seconds
        if self._stamps[i] != second:
            self._stamps[i] = second
            self._failures[i] = 0.0
            self._samples[i] = 0
        self._failures[i] += weight
        self._samples[i] += 1

    def _totals(self) -> tuple[int, float]:
        now = self._second()
        low = now - self.window_seconds
        samples = 0
        failures = 0.0
        for stamp, f, s in zip(self._stamps, self._failures, self._samples, strict=True):
            if stamp is not None and low < stamp <= now:
                samples += s
                failures += f
        return samples, failures

    def _reset_window(self) -> None:
        n = self.window_seconds
        self._stamps = [None] * n
        self._failures = [0.0] * n
        self._samples = [0] * n

    def _trip(self) -> None:
        self._opened_at = self.clock()
        self._probe_out = False
        self._transition("open")

    def _transition(self, new: State) -> None:
        old = self._state
        self._state = new
        if old == new or self.on_transition is None:
            return
        try:
            self.on_transition(old, new)
        except Exception:
            log.exception("circuit breaker on_transition callback failed (%s -> %s)", old, new)
