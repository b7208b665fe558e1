"""Shared response cache in Redis.

Layout under `prefix` (default `gandalf:cache:`):

- `{prefix}v:{key}`      the value: 1 header byte (`z` zlib, `r` raw) + payload, `PX ttl`.
- `{prefix}m:{model}`    SET of cache keys stored for that model alias.
- `{prefix}k:{key_id}`   SET of cache keys stored by that API key.

An index SET's TTL is only ever raised (to the longest TTL of what it indexes), so it outlives
every entry it points at and purge-by-model/key never misses a live entry. Members whose value
has expired are dropped lazily: each write samples two members of each index it touches and
removes the dead ones, which keeps the sets near the number of live entries. Purge-by removes
the values and the purged members; stale members left in the *other* index are harmless
(deleting a missing key is a no-op) and get sampled away.

The set script touches keys it doesn't declare (sampled members), so this targets a single
Redis (or a single-shard deployment), not Redis Cluster.

Every call is bounded by a short timeout; any Redis/network failure surfaces as
`CacheUnavailable`, which the caller treats as a miss (get) or ignores (set).
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gandalf_ingress.cache.errors import CacheUnavailable

__all__ = ["CacheUnavailable", "RedisCache"]


_SET_SCRIPT = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local ttl = tonumber(ARGV[2])
for i = 2, 3 do
  local idx = KEYS[i]
  local sample = redis.call('SRANDMEMBER', idx, 2)
  for _, m in ipairs(sample) do
    if redis.call('EXISTS', ARGV[4] .. m) == 0 then redis.call('SREM', idx, m) end
  end
  redis.call('SADD', idx, ARGV[3])
  if redis.call('PTTL', idx) < ttl then redis.call('PEXPIRE', idx, ttl) end
end
return 1
"""

_ZLIB = b"z"
_RAW = b"r"
_BATCH = 500


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisCache:
    """`ResponseCache` on Redis. Values over `min_compress` bytes are zlib-compressed."""

    def __init__(
        self,
        url: str,
        prefix: str = "gandalf:cache:",
        *,
        timeout: float = 0.25,
        purge_timeout: float = 10.0,
        compress_level: int = 1,
        min_compress: int = 256,
        client: Any = None,
    ) -> None:
        if not 1 <= compress_level <= 9:
            raise ValueError("compress_level must be 1..9")
        self._prefix = prefix
        self._vprefix = prefix + "v:"
        self._timeout = timeout
        self._purge_timeout = purge_timeout
        self._level = compress_level
        self._min_compress = min_compress
        self._client = client or aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # one immediate retry heals a pooled connection that died (Redis restart)
            retry=Retry(NoBackoff(), 1),
            health_check_interval=30,
        )
        self._set_script = self._client.register_script(_SET_SCRIPT)

    # ------------------------------------------------------------------ ResponseCache

    async def get(self, key: str) -> bytes | None:
        raw = await self._call(self._client.get(self._vprefix + key), self._timeout)
        if not raw:
            return None
        head, body = raw[:1], raw[1:]
        if head == _RAW:
            return bytes(body)
        if head == _ZLIB:
            try:
                return zlib.decompress(body)
            except zlib.error:
                return None
        return None  # unknown format (other version wrote it): a miss

    async def set(
        self, key: str, value: bytes, *, ttl: float, model: str, key_id: str, org_id: str
    ) -> None:
        ttl_ms = int(ttl * 1000)
        if ttl_ms <= 0:
            return
        if len(value) >= self._min_compress:
            stored = _ZLIB + zlib.compress(value, self._level)
        else:
            stored = _RAW + value
        keys = [self._vprefix + key, self._prefix + "m:" + model, self._prefix + "k:" + key_id]
        args: list[bytes | str | int] = [stored, ttl_ms, key, self._vprefix]
        await self._call(self._set_script(keys=keys, args=args), self._timeout)

    async def purge(self, *, model: str = "", key_id: str = "") -> int:
        work = self._purge_all() if not model and not key_id else self._purge_by(model, key_id)
        removed: int = await self._call(work, self._purge_timeout)
        return removed

    async def aclose(self) -> None:
        try:
            await self._client.aclose()
        except (RedisError, OSError):
            pass

    # ------------------------------------------------------------------ internals

    async def _call(self, awaitable: Any, timeout: float) -> Any:
        try:
            async with asyncio.timeout(timeout):
                return await awaitable
        except (RedisError, OSError, TimeoutError) as exc:
            raise CacheUnavailable(f"redis cache: {type(exc).__name__}: {exc}") from exc

    async def _purge_all(self) -> int:
        removed = 0
        batch: list[bytes] = []
        vprefix = self._vprefix.encode()
        async for name in self._client.scan_iter(
            match=_glob_escape(self._prefix) + "*", count=1000
        ):
            batch.append(name)
            if len(batch) >= _BATCH:
                removed += await self._unlink(batch, vprefix)
                batch = []
        if batch:
            removed += await self._unlink(batch, vprefix)
        return removed

    async def _unlink(self, names: list[bytes], vprefix: bytes) -> int:
        values = [n for n in names if n.startswith(vprefix)]
        others = [n for n in names if not n.startswith(vprefix)]
        pipe = self._client.pipeline(transaction=False)
        if values:
            pipe.unlink(*values)
        if others:
            pipe.unlink(*others)
        res = await pipe.execute()
        return int(res[0]) if values else 0

    async def _purge_by(self, model: str, key_id: str) -> int:
        mset = self._prefix + "m:" + model
        kset = self._prefix + "k:" + key_id
        if model and key_id:
            members = await self._client.sinter([mset, kset])
        else:
            members = await self._client.smembers(mset if model else kset)
        members = list(members)
        removed = 0
        for i in range(0, len(members), _BATCH):
            chunk = members[i : i + _BATCH]
            pipe = self._client.pipeline(transaction=False)
            pipe.unlink(*[self._vprefix + m.decode() for m in chunk])
            if model:
                pipe.srem(mset, *chunk)
            if key_id:
                pipe.srem(kset, *chunk)
            res = await pipe.execute()
            removed += int(res[0])
        return removed
