"""The response cache on the request path: lookup before routing, store
after a 200, ``X-Gandalf-Cache: hit|miss``, ``Cache-Control: no-cache``
(skip the lookup) and ``no-store`` (neither look up nor store), purges from
the admin API, streaming hits served as a synthesized stream."""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from gandalf_common.config import GatewayConfig
from gandalf_common.contract import CachePurge, Usage, cache_purge_decoder

from .cache import CacheUnavailable, ResponseCache, cache_key, cacheable, effective_ttl
from .cache import synthesize_stream as _synthesize
from .relay import Send

log = logging.getLogger("gandalf.cache")

_HIT = (b"x-gandalf-cache", b"hit")
_MISS = (b"x-gandalf-cache", b"miss")
_JSON = (b"content-type", b"application/json")
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class _UsageView(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class _Body(msgspec.Struct):
    usage: _UsageView | None = None


_body_decoder = msgspec.json.Decoder(_Body)


class Caching:
    def __init__(self, cfg: GatewayConfig, cache: ResponseCache | None) -> None:
        c = cfg.cache
        self.cache = cache if c.enabled else None
        self.scope = c.scope
        self.max_temperature = c.max_temperature
        self.serve_streams = c.stream
        self.default_ttl = c.default_ttl
        self.route_ttl = {r.model_alias: r.cache_ttl_s for r in cfg.routes}

    def key_for(self, scope: dict[str, Any], payload: dict[str, Any], *, model: str,
                stream: bool, key_id: str, org_id: str) -> tuple[str, bool] | None:
        """(cache key, look up?) for a cacheable request, else None."""
        if self.cache is None or (stream and not self.serve_streams):
            return None
        control = _cache_control(scope)
        if "no-store" in control or not cacheable(payload,
                                                  max_temperature=self.max_temperature):
            return None
        return self.key(payload, model=model, key_id=key_id, org_id=org_id), \
            "no-cache" not in control

    def deterministic(self, *, n: int | None, seed: int | None,
                      temperature: float | None) -> bool:
        """Whether the cache would treat a request with these sampling
        parameters as deterministic (what request coalescing requires)."""
        return cacheable({"n": n, "seed": seed, "temperature": temperature},
                         max_temperature=self.max_temperature)

    def key(self, payload: dict[str, Any], *, model: str, key_id: str, org_id: str) -> str:
        """The cache's key for this request in the configured scope, whether or
        not a cache is on: request coalescing uses the same key."""
        owner = key_id if self.scope == "key" else org_id
        return cache_key(payload, model=model, scope=owner)

    async def get(self, key: str) -> bytes | None:
        assert self.cache is not None
        try:
            return await self.cache.get(key)
        except CacheUnavailable:
            return None  # a cache outage is a miss, never an error

    async def store(self, key: str, body: bytes, *, model: str, key_id: str,
                    org_id: str) -> None:
        assert self.cache is not None
        ttl = effective_ttl(self.route_ttl.get(model, 0), self.default_ttl)
        try:
            await self.cache.set(key, body, ttl=ttl, model=model, key_id=key_id, org_id=org_id)
        except CacheUnavailable:
            log.warning("response cache unavailable; answer not stored")

    async def purge(self, data: bytes) -> None:
        if self.cache is None:
            return
        order: CachePurge = cache_purge_decoder.decode(data)
        try:
            removed = await self.cache.purge(model=order.model, key_id=order.key_id)
        except CacheUnavailable:
            log.warning("cache purge failed: cache unavailable")
            return
        log.info("cache purge (model=%r key=%r): %d entries", order.model, order.key_id,
                 removed)

    async def aclose(self) -> None:
        if self.cache is not None:
            await self.cache.aclose()


def mark(state: dict[str, Any], hit: bool) -> None:
    state.setdefault("headers", []).append(_HIT if hit else _MISS)


async def serve_hit(send: Send, body: bytes, *, stream: bool, include_usage: bool) -> None:
    if not stream:
        await send({"type": "http.response.start", "status": 200, "headers": [_JSON]})
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": 200, "headers": _SSE})
    for piece in _synthesize(body, include_usage=include_usage):
        await send({"type": "http.response.body", "body": b"data: " + piece + b"\n\n",
                    "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


def usage_of(body: bytes) -> Usage | None:
    try:
        view = _body_decoder.decode(body).usage
    except msgspec.DecodeError:
        return None
    if view is None:
        return None
    return Usage(prompt_tokens=view.prompt_tokens, completion_tokens=view.completion_tokens,
                 total_tokens=view.total_tokens)


def _cache_control(scope: dict[str, Any]) -> str:
    for name, value in scope["headers"]:
        if name == b"cache-control":
            return str(value.decode("latin-1")).lower()
    return ""


def build_cache(cfg: GatewayConfig) -> ResponseCache | None:
    if not cfg.cache.enabled:
        return None
    backend = cfg.cache.backend or ("redis" if cfg.redis.url else "memory")
    if backend == "redis":
        from .cache import RedisCache

        return RedisCache(cfg.redis.url)
    from .cache import MemoryCache

    return MemoryCache(cfg.cache.max_size)
