"""Retry policy for provider calls: pure decisions, no I/O.

Two pieces:

* `RetryPolicy` decides *whether* a failed attempt may be retried and *how long* to
  wait first: exponential backoff with full jitter, or the upstream's Retry-After
  when it fits in the request's remaining deadline.
* `RetryBudget` caps *how many* retries a provider instance may issue, as a share
  of its recent requests, so an upstream outage cannot multiply load on it by more
  than ``ratio`` (about 20%) plus a small floor.

Streaming rule: never retry once the first byte of a response has reached the
client -- the client has already seen part of an answer and a retry would splice
two different answers together. This module cannot know about that; the caller
must simply not consult it (neither `RetryPolicy.delay` nor
`RetryBudget.try_acquire_retry`) after anything was written downstream.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable

__all__ = ["RetryBudget", "RetryPolicy"]

# Statuses worth retrying: request timeout, rate limited, and any 5xx.
_RETRYABLE_4XX = frozenset({408, 429})


class RetryPolicy:
    """Backoff schedule and retryability for one provider call.

    ``attempt`` is the 0-based index of the attempt that just failed: after the
    first try fails, ``delay(0, ...)`` gives the wait before the second try.
    ``max_attempts`` counts every try, the first one included.
    """

    def __init__(
        self,
        base: float = 0.1,
        cap: float = 10.0,
        max_attempts: int = 3,
        rng: random.Random | None = None,
        *,
        margin: float = 0.05,
    ) -> None:
        if base <= 0 or cap <= 0:
            raise ValueError("base and cap must be positive")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if margin < 0:
            raise ValueError("margin must not be negative")
        self.base = base
        self.cap = cap
        self.max_attempts = max_attempts
        self.margin = margin
        self.rng = rng if rng is not None else random.Random()

    @staticmethod
    def retryable(status: int | None, *, connect_error: bool) -> bool:
        """True for connect errors, 408, 429 and 5xx; False for everything else
        (including a missing status without a connect error, e.g. a read timeout
        after the request may already have been processed)."""
        if connect_error:
            return True
        if status is None:
            return False
        return status in _RETRYABLE_4XX or 500 <= status <= 599

    def backoff_ceiling(self, attempt: int) -> float:
        """Upper bound of the jittered backoff after ``attempt``."""
        if attempt < 0:
            raise ValueError("attempt must not be negative")
        # Avoid float overflow for absurd attempt numbers: the cap wins anyway.
        if attempt >= 64:
            return self.cap
        return float(min(self.cap, self.base * 2**attempt))

    def delay(self, attempt: int, *, retry_after: float = 0.0, remaining: float) -> float | None:
        """Seconds to wait before the next attempt, or None for "do not retry".

        None when the attempts are used up (``attempt + 1 >= max_attempts``), when
        the upstream's Retry-After (``retry_after > 0``, already converted to
        seconds from Retry-After or retry-after-ms) does not fit in ``remaining``
        minus the margin, or when the jittered backoff does not fit either.
        """
        if attempt + 1 >= self.max_attempts:
            return None
        budget = remaining - self.margin
        if retry_after > 0:
            return retry_after if retry_after < budget else None
        wait = self.rng.uniform(0.0, self.backoff_ceiling(attempt))
        return wait if wait <= budget else None


class RetryBudget:
    """Sliding-window retry budget for one provider instance.

    Call `record_request` once per original request (not per retry) and
    `try_acquire_retry` before each retry. A retry is granted only while the
    retries in the window, this one included, stay within
    ``ratio * requests + min_per_s * window_s``. Counts are kept in one-second
    buckets and age out once their second is ``window_s`` or more in the past.
    Not thread-safe: use it from one event loop.
    """

    def __init__(
        self,
        ratio: float = 0.2,
        min_per_s: float = 1.0,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ratio < 0 or min_per_s < 0:
            raise ValueError("ratio and min_per_s must not be negative")
        if window_s < 1:
            raise ValueError("window_s must be at least one second")
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.window_s = window_s
        self._clock = clock
        # [second, requests, retries], oldest first.
        self._buckets: deque[list[int]] = deque()
        self._requests = 0
        self._retries = 0

    def _bucket(self) -> list[int]:
        now = int(self._clock() // 1)
        horizon = now - self.window_s
        while self._buckets and self._buckets[0][0] <= horizon:
            _, requests, retries = self._buckets.popleft()
            self._requests -= requests
            self._retries -= retries
        if not self._buckets or self._buckets[-1][0] != now:
            # A clock that steps backwards keeps counting into the newest bucket.
            if self._buckets and self._buckets[-1][0] > now:
                return self._buckets[-1]
            self._buckets.append([now, 0, 0])
        return self._buckets[-1]

    def limit(self) -> float:
        """Retries currently allowed in the window (not counting those used)."""
        self._bucket()
        return self.ratio * self._requests + self.min_per_s * self.window_s

    def record_request(self) -> None:
        bucket = self._bucket()
        bucket[1] += 1
        self._requests += 1

    def try_acquire_retry(self) -> bool:
        bucket = self._bucket()
        allowed = self.ratio * self._requests + self.min_per_s * self.window_s
        if self._retries + 1 > allowed:
            return False
        bucket[2] += 1
        self._retries += 1
        return True

    @property
    def requests(self) -> int:
        self._bucket()
        return self._requests

    @property
    def retries(self) -> int:
        self._bucket()
        return self._retries
