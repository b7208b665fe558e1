"""Rate limiting for the ingress: per-key RPM/TPM token buckets and budget reservations.

Backends behind :class:`RateLimiter` / :class:`BudgetReservations`: in-memory (per process) and
Redis (shared, atomic Lua, server time), plus :class:`FallbackLimiter` for Redis outages.
See ``ports`` for the semantics shared by all backends.
"""

from __future__ import annotations

from .estimate import (
    DEFAULT_COMPLETION_ESTIMATE,
    estimate_chat_tokens,
    estimate_embedding_tokens,
)
from .memory import MemoryBudgetReservations, MemoryLimiter
from .ports import BudgetReservations, Decision, RateLimiter

__all__ = [
    "DEFAULT_COMPLETION_ESTIMATE",
    "BudgetReservations",
    "Decision",
    "MemoryBudgetReservations",
    "MemoryLimiter",
    "RateLimiter",
    "estimate_chat_tokens",
    "estimate_embedding_tokens",
]
