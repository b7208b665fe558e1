"""Per-process response cache: theine W-TinyLFU with per-entry TTL and purge side indexes."""

from __future__ import annotations

import time
from datetime import timedelta

from theine import Cache

__all__ = ["MemoryCache"]


class MemoryCache:
    """Bounded in-memory cache (`max_size` entries, W-TinyLFU admission/eviction).

    theine has no eviction callback, so purge-by-model/key uses side indexes
    (model -> keys, key_id -> keys) that may hold keys theine already evicted or expired.
    They are pruned lazily: whenever the index grows past twice the cache bound, entries that
    expired (by our own clock) or that theine no longer holds are dropped. Purge only counts
    entries theine actually removed.
    """

    def __init__(self, max_size: int) -> None:
        if max_size <= 0:
            raise ValueError("max_size must be > 0")
        self._max_size = max_size
        self._cache: Cache[str, bytes] = Cache(max_size)
        # key -> (model, key_id, expires_at monotonic ns)
        self._meta: dict[str, tuple[str, str, int]] = {}
        self._by_model: dict[str, set[str]] = {}
        self._by_key: dict[str, set[str]] = {}
        self._prune_at = max(2 * max_size, 1024)

    def __len__(self) -> int:
        return len(self._cache)

    async def get(self, key: str) -> bytes | None:
        value, ok = self._cache.get(key)
        return value if ok else None

    async def set(
        self, key: str, value: bytes, *, ttl: float, model: str, key_id: str, org_id: str
    ) -> None:
        if ttl <= 0:
            return
        self._unindex(key)
        self._cache.set(key, value, timedelta(seconds=ttl))
        self._meta[key] = (model, key_id, time.monotonic_ns() + int(ttl * 1e9))
        self._by_model.setdefault(model, set()).add(key)
        self._by_key.setdefault(key_id, set()).add(key)
        if len(self._meta) > self._prune_at:
            self._prune()

    async def purge(self, *, model: str = "", key_id: str = "") -> int:
        if not model and not key_id:
            removed = len(self._cache)
            self._cache.clear()
            self._meta.clear()
            self._by_model.clear()
            self._by_key.clear()
            return removed
        if model and key_id:
            keys = self._by_model.get(model, set()) & self._by_key.get(key_id, set())
        elif model:
            keys = set(self._by_model.get(model, ()))
        else:
            keys = set(self._by_key.get(key_id, ()))
        now = time.monotonic_ns()
        removed = 0
        for key in keys:
            meta = self._meta.get(key)
            if self._cache.delete(key) and meta is not None and meta[2] > now:
                removed += 1
            self._unindex(key)
        return removed

    async def aclose(self) -> None:
        self._cache.clear()
        self._cache.close()
        self._meta.clear()
        self._by_model.clear()
        self._by_key.clear()

    # ------------------------------------------------------------------ internals

    def _unindex(self, key: str) -> None:
        meta = self._meta.pop(key, None)
        if meta is None:
            return
        model, key_id, _ = meta
        for index, name in ((self._by_model, model), (self._by_key, key_id)):
            keys = index.get(name)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del index[name]

    def _prune(self) -> None:
        now = time.monotonic_ns()
        for key, (_, _, expires) in list(self._meta.items()):
            if expires <= now or not self._cache.get(key)[1]:
                self._unindex(key)
        # If the cache is genuinely full of live entries, don't rescan on every set.
        self._prune_at = max(2 * self._max_size, 2 * len(self._meta), 1024)
