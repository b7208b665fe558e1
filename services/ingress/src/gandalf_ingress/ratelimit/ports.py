"""The rate-limiter port: one Protocol, two backends (memory, Redis) and a fallback wrapper.

Semantics shared by every backend (behaviour-spec §7, with the §15.14 quirks fixed):

* Two token buckets per key: requests (RPM) and tokens (TPM). Capacity = the per-minute limit,
  refill = limit/60 per second, lazy refill, a new bucket starts full.
* A limit of 0 means *unlimited*: that bucket is skipped (``limit_*`` = 0, ``remaining_*`` = 0
  in the Decision; callers omit the matching ``X-Ratelimit-*`` headers). Resolving ``None``
  ("inherit") to a number is the caller's job (``Limits`` → ``RateLimitsConfig`` defaults).
* ``acquire`` takes one request and ``tokens`` estimated tokens atomically: both or neither.
  An estimate above the TPM capacity is capped at the capacity, so it passes on a full bucket;
  ``reserved_tokens`` is the capped value, to hand back to ``settle``.
* A denied acquire consumes nothing; ``retry_after`` is the time until both the request and the
  (capped) tokens are available.
* The limit is stored with the bucket. When it changes, the level is kept and clamped to the
  new capacity (no reset to full, no refill).
* ``settle`` corrects the TPM bucket once the real usage is known (refund ``reserved - actual``
  or charge ``actual - reserved``), clamped to [0, capacity]. Cache hits settle with
  ``actual = 0`` so they cost no TPM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

#: Seconds for an empty bucket to refill completely, whatever the limit.
WINDOW = 60.0
#: Idle state older than this is equivalent to a full bucket and can be dropped.
IDLE_TTL = 120


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit_requests: int  # 0 = unlimited
    remaining_requests: int
    limit_tokens: int  # 0 = unlimited
    remaining_tokens: int
    retry_after: float  # seconds, 0 when allowed
    reserved_tokens: int  # what was taken from the TPM bucket (to settle later)
    #: True when the limiter could not be consulted and policy "closed" denied the request:
    #: callers should answer 503 (a dependency failed), not 429 (the client's fault).
    unavailable: bool = False

    def retry_after_header(self) -> str:
        """``Retry-After`` value: whole seconds, rounded up, at least 1."""
        whole = int(self.retry_after)
        return str(max(1, whole if whole == self.retry_after else whole + 1))


@runtime_checkable
class RateLimiter(Protocol):
    async def acquire(self, key: str, rpm: int, tpm: int, tokens: int) -> Decision:
        """One request plus ``tokens`` estimated tokens, atomically (both or neither)."""
        ...

    async def settle(self, key: str, tpm: int, reserved: int, actual: int) -> None:
        """After the call: refund ``reserved - actual`` (or charge the excess), within bounds."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class BudgetReservations(Protocol):
    """Outstanding (in-flight) spend per budget scope and period.

    ``reserve`` passes only if ``spent + outstanding + estimate <= budget`` and then adds
    ``estimate`` to the outstanding amount, atomically, so N concurrent requests against a
    nearly exhausted budget overshoot it by at most one estimate. ``release`` removes the
    reservation when the request ends; the actual cost is counted from then on through
    ``spent`` (recorded usage), which the caller passes to the next ``reserve``.
    """

    async def reserve(self, scope_key: str, budget: float, spent: float, estimate: float,
                      period_key: str) -> bool: ...

    async def release(self, scope_key: str, period_key: str, reserved: float,
                      actual: float) -> None: ...

    async def aclose(self) -> None: ...


def cap_tokens(tokens: int, tpm: int) -> int:
    """The token count actually reserved: non-negative and at most the TPM capacity."""
    tokens = max(0, int(tokens))
    return min(tokens, tpm) if tpm > 0 else tokens
