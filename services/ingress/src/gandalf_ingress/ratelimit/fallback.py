"""Redis failure policy for rate limits (RELIABILITY C12/C13).

``FallbackLimiter(primary, local, policy)`` calls the shared (Redis) limiter; when it fails with
a connection error or a timeout:

* ``"local"`` (the default, "rate limits fail open to a local limiter"): answer from the
  per-process :class:`MemoryLimiter`, with each limit divided by ``replicas`` so the fleet as a
  whole stays near the configured limit. Every fallen-back call counts
  ``gandalf_ratelimit_fallback_total``; the outage is logged once when it starts and once when
  it ends.
* ``"closed"``: deny with ``retry_after = 1`` and ``unavailable=True``. Recommended answer:
  **503** with ``Retry-After: 1`` (a dependency is down, not the client over its limit; a 429
  would make clients back off as if they had misbehaved and would show up as quota errors).

While Redis is failing, only one call per ``probe_interval`` tries it (the rest go straight to
the fallback), so a slow or dead Redis costs at most one timeout per interval instead of one
per request, and nothing piles up (C13). The first call that succeeds ends the outage.

``settle`` follows the same path; a settle after an acquire that was answered by the other
backend is a harmless approximation (bounded refund or charge).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from prometheus_client import Counter
from redis.exceptions import RedisError

from gandalf_common.metrics_hub import REGISTRY

from .ports import Decision, RateLimiter

log = logging.getLogger("gandalf.ratelimit")

Policy = Literal["local", "closed"]
T = TypeVar("T")

#: Errors that mean "Redis is unavailable" (not a verdict): connection refused/reset,
#: timeouts (socket or asyncio), server loading or read-only, and other Redis errors.
FALLBACK_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


def _counter() -> Counter:
    name = "gandalf_ratelimit_fallback"
    existing = REGISTRY._names_to_collectors.get(name + "_total")  # re-import safe
    if isinstance(existing, Counter):
        return existing
    return Counter(name + "_total", "Rate-limit calls answered without Redis (Redis failed), "
                   "by policy and operation", ["policy", "op"], registry=REGISTRY)


FALLBACK_TOTAL = _counter()


class FallbackLimiter:
    def __init__(self, primary: RateLimiter, local: RateLimiter, policy: Policy = "local", *,
                 replicas: int = 1, probe_interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if policy not in ("local", "closed"):
            raise ValueError(f"unknown rate-limit failure policy {policy!r}")
        self.primary = primary
        self.local = local
        self.policy: Policy = policy
        self._replicas = max(1, replicas)
        self._probe_interval = probe_interval
        self._clock = clock
        self._down_since: float | None = None
        self._next_probe = 0.0

    @property
    def degraded(self) -> bool:
        """True while Redis is considered down."""
        return self._down_since is not None

    def _share(self, limit: int) -> int:
        return 0 if limit <= 0 else max(1, limit // self._replicas)

    async def _try(self, call: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
        now = self._clock()
        if self._down_since is not None:
            if now < self._next_probe:
                return False, None
            self._next_probe = now + self._probe_interval  # this call probes; others don't
        try:
            result = await call()
        except FALLBACK_ERRORS as exc:
            if self._down_since is None:
                self._down_since = now
                log.warning("rate limiter: Redis unavailable (%s), policy %r until it answers",
                            type(exc).__name__, self.policy)
            self._next_probe = self._clock() + self._probe_interval
            return False, None
        if self._down_since is not None:
            log.warning("rate limiter: Redis answers again after %.1f s",
                        self._clock() - self._down_since)
            self._down_since = None
        return True, result

    async def acquire(self, key: str, rpm: int, tpm: int, tokens: int) -> Decision:
        ok, decision = await self._try(lambda: self.primary.acquire(key, rpm, tpm, tokens))
        if ok:
            assert decision is not None
            return decision
        FALLBACK_TOTAL.labels(self.policy, "acquire").inc()
        if self.policy == "closed":
            return Decision(False, max(rpm, 0), 0, max(tpm, 0), 0, 1.0, 0, unavailable=True)
        return await self.local.acquire(key, self._share(rpm), self._share(tpm), tokens)

    async def settle(self, key: str, tpm: int, reserved: int, actual: int) -> None:
        if self.degraded and self.policy == "local":
            # Redis is down: the acquire was (most likely) the local limiter's.
            FALLBACK_TOTAL.labels(self.policy, "settle").inc()
            await self.local.settle(key, self._share(tpm), reserved, actual)
            return
        ok, _ = await self._try(lambda: self.primary.settle(key, tpm, reserved, actual))
        if ok:
            return
        FALLBACK_TOTAL.labels(self.policy, "settle").inc()
        if self.policy == "local":
            await self.local.settle(key, self._share(tpm), reserved, actual)

    async def aclose(self) -> None:
        await self.primary.aclose()
        await self.local.aclose()
