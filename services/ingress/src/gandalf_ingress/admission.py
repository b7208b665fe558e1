"""Rate limits on the request path: RPM and TPM per key (dual token bucket,
memory or Redis), with inheritance and the config defaults; the estimate is
reserved before the call and settled with the real usage after it.

Headers as the original: ``X-Ratelimit-Limit-Requests``,
``X-Ratelimit-Remaining-Requests``, ``X-Ratelimit-Limit-Tokens``,
``X-Ratelimit-Remaining-Tokens``; a refusal is 429 with ``Retry-After``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from gandalf_common.config import GatewayConfig
from gandalf_common.contract import Usage
from gandalf_common.errors import GatewayError

from .auth import Identity
from .ratelimit.ports import Decision, RateLimiter


class RateLimits:
    def __init__(self, cfg: GatewayConfig, limiter: RateLimiter | None) -> None:
        self.default_rpm = cfg.rate_limits.default_rpm
        self.default_tpm = cfg.rate_limits.default_tpm
        self.limiter = limiter

    def limits_of(self, identity: Identity) -> tuple[int, int]:
        """(rpm, tpm): the key's (inherited) limits, else the defaults; 0 = unlimited
        (a key *can* opt out, unlike the original)."""
        lim = identity.limits
        rpm = self.default_rpm if lim.rpm_limit is None else lim.rpm_limit
        tpm = self.default_tpm if lim.tpm_limit is None else lim.tpm_limit
        return int(rpm), int(tpm)

    async def admit(self, state: dict[str, Any], identity: Identity,
                    tokens: int) -> Decision | None:
        """Take one request and ``tokens`` (0: a cache hit costs no TPM); sets the
        headers; raises 429 when a bucket is empty."""
        if self.limiter is None:
            return None
        rpm, tpm = self.limits_of(identity)
        if not rpm and not tpm:
            return None
        key = identity.key_id or f"user:{identity.org_id}:{identity.user_id}"
        decision = await self.limiter.acquire(key, rpm, tpm if tokens else 0, tokens)
        headers = state.setdefault("headers", [])
        if rpm:
            headers += [(b"x-ratelimit-limit-requests", str(rpm).encode()),
                        (b"x-ratelimit-remaining-requests",
                         str(max(0, decision.remaining_requests)).encode())]
        if tpm and tokens:
            headers += [(b"x-ratelimit-limit-tokens", str(tpm).encode()),
                        (b"x-ratelimit-remaining-tokens",
                         str(max(0, decision.remaining_tokens)).encode())]
        if not decision.allowed and decision.unavailable:
            # on_redis_failure: closed. Not the client's fault: 503, not 429.
            raise GatewayError("rate limiter unavailable; retry shortly", status=503,
                               code="rate_limiter_unavailable", retry_after=1)
        if not decision.allowed:
            raise GatewayError("rate limit exceeded: too many requests or tokens for this "
                               "key; retry after the interval in Retry-After", status=429,
                               type="rate_limit_error", code="rate_limit_exceeded",
                               retry_after=math.floor(decision.retry_after) + 1)
        return decision

    async def settle(self, identity: Identity, decision: Decision | None,
                     usage: Usage | None) -> None:
        """Refund (or charge) the difference between the estimate and the real usage."""
        if self.limiter is None or decision is None or not decision.reserved_tokens:
            return
        if usage is None:
            return  # unknown: the estimate stands
        _rpm, tpm = self.limits_of(identity)
        key = identity.key_id or f"user:{identity.org_id}:{identity.user_id}"
        await self.limiter.settle(key, tpm, decision.reserved_tokens, usage.total_tokens)


def build_limiter(cfg: GatewayConfig) -> RateLimiter:
    """memory (per process), or redis shared by every ingress with the
    configured failure policy (a per-process limiter, or closed)."""
    from .ratelimit import MemoryLimiter

    rl = cfg.rate_limits
    backend = rl.backend or ("redis" if cfg.redis.url else "memory")
    if backend != "redis":
        return MemoryLimiter()
    from .ratelimit.fallback import FallbackLimiter
    from .ratelimit.redis_backend import RedisLimiter

    policy: Literal["local", "closed"] = \
        "closed" if rl.on_redis_failure == "closed" else "local"
    return FallbackLimiter(RedisLimiter(cfg.redis.url), MemoryLimiter(), policy)


def build_reservations(cfg: GatewayConfig) -> Any:
    """Budget reservations where the rate limits live (Redis: shared)."""
    from .ratelimit import MemoryBudgetReservations

    backend = cfg.rate_limits.backend or ("redis" if cfg.redis.url else "memory")
    if backend != "redis":
        return MemoryBudgetReservations()
    from .ratelimit.redis_backend import RedisBudgetReservations

    return RedisBudgetReservations(cfg.redis.url)
