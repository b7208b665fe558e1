"""Exact-match response cache for the ingress (spec §8, with the §15.15 fixes).

- `cache_key` / `cacheable` / `effective_ttl`: the rules (keys.py).
- `MemoryCache` (per process, theine W-TinyLFU) and `RedisCache` (shared) implement
  `ResponseCache`; values are the exact response bytes.
- `synthesize_stream`: replay a cached chat.completion to a streaming client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from gandalf_ingress.cache.errors import CacheUnavailable
from gandalf_ingress.cache.keys import cache_key, cacheable, effective_ttl
from gandalf_ingress.cache.memory import MemoryCache
from gandalf_ingress.cache.stream import synthesize_stream

if TYPE_CHECKING:
    from gandalf_ingress.cache.redis_cache import RedisCache


def __getattr__(name: str) -> Any:
    # redis-py costs every process ~6 MiB: imported only when a Redis cache is used.
    if name == "RedisCache":
        from gandalf_ingress.cache.redis_cache import RedisCache

        return RedisCache
    raise AttributeError(name)

__all__ = [
    "CacheUnavailable",
    "MemoryCache",
    "RedisCache",
    "ResponseCache",
    "cache_key",
    "cacheable",
    "effective_ttl",
    "synthesize_stream",
]


@runtime_checkable
class ResponseCache(Protocol):
    """A response cache. Backends may raise `CacheUnavailable`; callers treat it as a miss."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(
        self, key: str, value: bytes, *, ttl: float, model: str, key_id: str, org_id: str
    ) -> None: ...

    async def purge(self, *, model: str = "", key_id: str = "") -> int:
        """Remove entries of that model and/or key (all when both are empty); count removed."""
        ...

    async def aclose(self) -> None: ...
