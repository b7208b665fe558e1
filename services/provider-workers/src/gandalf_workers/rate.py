"""``max_rps``: a token bucket per provider instance and worker.

The instance's rate is shared by its live workers (each takes
``max_rps / workers``, the count coming from presence heartbeats), so N
replicas together stay near the configured rate without a shared counter on
the request path. The bucket holds one second's worth of tokens: a burst of
at most ``max_rps`` calls, never an unbounded queue (a refused call is
answered at once with the time until the next token).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.clock = clock
        self.rate = float(rate)
        self.capacity = max(1.0, self.rate)
        self._tokens = self.capacity
        self._at = clock()

    def set_rate(self, rate: float) -> None:
        """Change the rate (the worker count changed); tokens stay as they are."""
        self._refill()
        self.rate = max(float(rate), 1e-3)
        self.capacity = max(1.0, self.rate)
        self._tokens = min(self._tokens, self.capacity)

    def take(self) -> float:
        """0.0 when a call may go now (a token is taken), else seconds to wait."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now
