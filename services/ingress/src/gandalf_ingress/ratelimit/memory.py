"""In-process backends: dual token buckets per key and budget reservations.

Everything runs on the event loop without awaiting, so each operation is atomic.
Idle keys are evicted lazily: a bucket untouched for ``IDLE_TTL`` (> the 60 s refill window) is
full again, so dropping it loses nothing. The dict is an LRU bounded by ``max_keys``.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .ports import IDLE_TTL, WINDOW, Decision, cap_tokens

_EPS = 1e-9


@dataclass(slots=True)
class _Bucket:
    level: float
    ts: float
    limit: int

    def refresh(self, limit: int, now: float) -> None:
        """Lazy refill at the stored limit's rate, then keep the level under a new limit."""
        elapsed = max(0.0, now - self.ts)
        self.level = min(float(self.limit), self.level + elapsed * self.limit / WINDOW)
        self.ts = now
        if limit != self.limit:
            self.level = min(self.level, float(limit))
            self.limit = limit


@dataclass(slots=True)
class _Entry:
    req: _Bucket | None
    tok: _Bucket | None
    touched: float


def _wait(bucket: _Bucket, need: float) -> float:
    """Seconds until ``bucket`` holds ``need`` (0 if it already does)."""
    missing = need - bucket.level
    if missing <= _EPS:
        return 0.0
    return missing * WINDOW / bucket.limit


class MemoryLimiter:
    """Per-process dual token buckets (also the local fallback of the Redis limiter)."""

    def __init__(self, *, max_keys: int = 100_000, idle_ttl: float = IDLE_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._max_keys = max_keys
        self._idle_ttl = idle_ttl
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    def _evict(self, now: float) -> None:
        entries = self._entries
        while entries:
            key, entry = next(iter(entries.items()))
            if len(entries) > self._max_keys or now - entry.touched > self._idle_ttl:
                del entries[key]
            else:
                break

    def _bucket(self, bucket: _Bucket | None, limit: int, now: float) -> _Bucket | None:
        if limit <= 0:
            return bucket  # unlimited: skipped, state kept untouched
        if bucket is None:
            return _Bucket(float(limit), now, limit)
        bucket.refresh(limit, now)
        return bucket

    def _entry(self, key: str, rpm: int, tpm: int, now: float) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            entry = _Entry(None, None, now)
            self._entries[key] = entry
        else:
            self._entries.move_to_end(key)
        entry.touched = now
        entry.req = self._bucket(entry.req, rpm, now)
        entry.tok = self._bucket(entry.tok, tpm, now)
        return entry

    async def acquire(self, key: str, rpm: int, tpm: int, tokens: int) -> Decision:
        if rpm <= 0 and tpm <= 0:
            return Decision(True, 0, 0, 0, 0, 0.0, 0)  # unlimited: no state
        now = self._clock()
        self._evict(now)
        entry = self._entry(key, rpm, tpm, now)
        need = cap_tokens(tokens, tpm) if tpm > 0 else 0
        req = entry.req if rpm > 0 else None
        tok = entry.tok if tpm > 0 else None
        wait = max(_wait(req, 1.0) if req else 0.0, _wait(tok, need) if tok else 0.0)
        allowed = wait == 0.0
        if allowed:
            if req:
                req.level = max(0.0, req.level - 1.0)
            if tok:
                tok.level = max(0.0, tok.level - need)
        self._evict(now)
        return Decision(
            allowed=allowed,
            limit_requests=max(rpm, 0),
            remaining_requests=math.floor(req.level + _EPS) if req else 0,
            limit_tokens=max(tpm, 0),
            remaining_tokens=math.floor(tok.level + _EPS) if tok else 0,
            retry_after=wait,
            reserved_tokens=need if allowed else 0,
        )

    async def settle(self, key: str, tpm: int, reserved: int, actual: int) -> None:
        if tpm <= 0:
            return
        now = self._clock()
        entry = self._entry(key, 0, tpm, now)
        tok = entry.tok
        assert tok is not None
        tok.level = min(float(tpm), max(0.0, tok.level + (reserved - actual)))

    async def aclose(self) -> None:
        self._entries.clear()


class MemoryBudgetReservations:
    """Outstanding reservations per (scope, period), in this process only."""

    def __init__(self) -> None:
        self._outstanding: dict[tuple[str, str], float] = {}

    def outstanding(self, scope_key: str, period_key: str) -> float:
        return self._outstanding.get((scope_key, period_key), 0.0)

    async def reserve(self, scope_key: str, budget: float, spent: float, estimate: float,
                      period_key: str) -> bool:
        k = (scope_key, period_key)
        out = self._outstanding.get(k, 0.0)
        estimate = max(0.0, estimate)
        if spent + out + estimate > budget + _EPS:
            return False
        self._outstanding[k] = out + estimate
        return True

    async def release(self, scope_key: str, period_key: str, reserved: float,
                      actual: float) -> None:
        k = (scope_key, period_key)
        out = self._outstanding.get(k, 0.0) - max(0.0, reserved)
        if out <= _EPS:
            self._outstanding.pop(k, None)
        else:
            self._outstanding[k] = out

    async def aclose(self) -> None:
        self._outstanding.clear()
