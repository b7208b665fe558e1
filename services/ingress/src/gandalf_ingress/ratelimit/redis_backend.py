"""Redis backends: dual token buckets and budget reservations shared by every ingress process.

One round trip per request: the acquire is one EVALSHA of one Lua script that takes the request
and the tokens together (NOSCRIPT → EVAL, which also caches it; ``load()`` pre-loads all scripts
with SCRIPT LOAD), and the calls of one event-loop turn share a pipeline (``autopipe``). The
settle after the call adds no round trip when it is a refund (the usual case: the estimate
includes the completion allowance): the refund waits in the process and rides on the key's
next acquire, which applies it before deciding; what no acquire picks up within
``REFUND_DELAY`` goes out in one batch. A late refund only makes the bucket stricter, so the
upper bound stays exact: never more admitted than the limit, across every process sharing the
store. A charge (usage above the estimate) is sent at once, as before.

The scripts read the clock with
``redis.call('TIME')``, so replicas with skewed clocks agree, and keep each key's state in one
hash ``gandalf:rl:<key>`` (req_tokens, req_ts, req_limit, tok_tokens, tok_ts, tok_limit) with an
expiry of ``IDLE_TTL`` seconds: after 60 s idle a bucket is full anyway, so expiry loses nothing.
Lua numbers are doubles; levels are stored with ``%.17g`` so nothing is lost between calls.

The client uses short socket timeouts and no retries: a failing Redis surfaces quickly as
``redis.exceptions.ConnectionError``/``TimeoutError`` for :class:`FallbackLimiter` to handle.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError

from .autopipe import AutoPipeline
from .ports import IDLE_TTL, WINDOW, Decision, cap_tokens

log = logging.getLogger("gandalf.ratelimit")

DEFAULT_TIMEOUT = 0.1
#: Seconds a refund waits for the key's next acquire before it is sent alone.
REFUND_DELAY = 0.5

_COMMON = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local eps = 1e-9

-- level of a bucket at ``now`` under limit ``new``; nil when ``new`` is 0 (unlimited)
local function refresh(level, ts, limit, new)
  if new <= 0 then return nil end
  level = tonumber(level)
  ts = tonumber(ts)
  limit = tonumber(limit)
  if level == nil or ts == nil or limit == nil or limit <= 0 then return new end
  local elapsed = now - ts
  if elapsed < 0 then elapsed = 0 end
  level = math.min(limit, level + elapsed * limit / window)
  if new ~= limit then level = math.min(level, new) end
  return level
end

local function fmt(x) return string.format('%.17g', x) end
"""

#: KEYS[1] = state hash; ARGV = window, ttl, rpm, tpm, tokens (already capped),
#: refund (earlier requests' unused tokens, applied first)
#: returns {allowed (0/1), req level, tok level, retry_after} (levels "-1" when unlimited)
ACQUIRE_LUA = _COMMON + """
local rpm = tonumber(ARGV[3])
local tpm = tonumber(ARGV[4])
local need = tonumber(ARGV[5])
local refund = tonumber(ARGV[6]) or 0
local s = redis.call('HMGET', KEYS[1],
  'req_tokens', 'req_ts', 'req_limit', 'tok_tokens', 'tok_ts', 'tok_limit')
local req = refresh(s[1], s[2], s[3], rpm)
local tok = refresh(s[4], s[5], s[6], tpm)
if tok and refund > 0 then tok = math.min(tpm, tok + refund) end

local wait = 0
if req and 1 - req > eps then wait = math.max(wait, (1 - req) * window / rpm) end
if tok and need - tok > eps then wait = math.max(wait, (need - tok) * window / tpm) end
local allowed = 0
if wait == 0 then
  allowed = 1
  if req then req = math.max(0, req - 1) end
  if tok then tok = math.max(0, tok - need) end
end

local fields = {}
if req then
  table.insert(fields, 'req_tokens'); table.insert(fields, fmt(req))
  table.insert(fields, 'req_ts'); table.insert(fields, fmt(now))
  table.insert(fields, 'req_limit'); table.insert(fields, rpm)
end
if tok then
  table.insert(fields, 'tok_tokens'); table.insert(fields, fmt(tok))
  table.insert(fields, 'tok_ts'); table.insert(fields, fmt(now))
  table.insert(fields, 'tok_limit'); table.insert(fields, tpm)
end
if #fields > 0 then
  redis.call('HSET', KEYS[1], unpack(fields))
  redis.call('EXPIRE', KEYS[1], ttl)
end
return {allowed, fmt(req or -1), fmt(tok or -1), fmt(wait)}
"""

#: KEYS[1] = state hash; ARGV = window, ttl, tpm, delta (reserved - actual)
SETTLE_LUA = _COMMON + """
local tpm = tonumber(ARGV[3])
local delta = tonumber(ARGV[4])
local s = redis.call('HMGET', KEYS[1], 'tok_tokens', 'tok_ts', 'tok_limit')
local tok = refresh(s[1], s[2], s[3], tpm)
if not tok then return 0 end
tok = math.min(tpm, math.max(0, tok + delta))
redis.call('HSET', KEYS[1], 'tok_tokens', fmt(tok), 'tok_ts', fmt(now), 'tok_limit', tpm)
redis.call('EXPIRE', KEYS[1], ttl)
return 1
"""

#: KEYS[1] = outstanding amount; ARGV = budget, spent, estimate, ttl
RESERVE_LUA = """
local out = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local budget = tonumber(ARGV[1])
local spent = tonumber(ARGV[2])
local est = tonumber(ARGV[3])
if spent + out + est > budget + 1e-9 then return 0 end
redis.call('INCRBYFLOAT', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
"""

#: KEYS[1] = outstanding amount; ARGV = -reserved
RELEASE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local v = tonumber(redis.call('INCRBYFLOAT', KEYS[1], ARGV[1]))
if v <= 1e-9 then redis.call('DEL', KEYS[1]) end
return 1
"""


class _Script:
    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # Redis's script id

    async def __call__(self, client: aioredis.Redis, keys: Sequence[str],
                      args: Sequence[Any]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:  # flushed or a fresh server: EVAL runs and caches it
            return await client.eval(self.source, len(keys), *keys, *args)


_ACQUIRE = _Script(ACQUIRE_LUA)
_SETTLE = _Script(SETTLE_LUA)
_RESERVE = _Script(RESERVE_LUA)
_RELEASE = _Script(RELEASE_LUA)


def make_client(url: str, timeout: float = DEFAULT_TIMEOUT) -> aioredis.Redis:
    """A client that fails fast: short connect/read timeouts, no retries."""
    return aioredis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0), retry_on_timeout=False, decode_responses=True)


class _RedisBase:
    def __init__(self, url: str | None, client: aioredis.Redis | None, prefix: str,
                 timeout: float) -> None:
        if client is None:
            if not url:
                raise ValueError("a Redis URL or client is required")
            client = make_client(url, timeout)
            self._owned = True
        else:
            self._owned = False
        self._client = client
        self._prefix = prefix
        self._timeout = timeout

    async def _run(self, script: _Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        # Outer bound in case a command stalls past the socket timeouts (e.g. NOSCRIPT + EVAL).
        async with asyncio.timeout(self._timeout * 3):
            return await script(self._client, keys, args)

    async def load(self) -> None:
        """Pre-load the scripts (SCRIPT LOAD); optional, EVAL covers a missing script."""
        for script in (_ACQUIRE, _SETTLE, _RESERVE, _RELEASE):
            await self._client.script_load(script.source)

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()


class RedisLimiter(_RedisBase):
    """Dual token buckets in Redis, one hash per key, server time."""

    def __init__(self, url: str | None = None, *, client: aioredis.Redis | None = None,
                 prefix: str = "gandalf:rl:", timeout: float = DEFAULT_TIMEOUT,
                 ttl: int = IDLE_TTL) -> None:
        super().__init__(url, client, prefix, timeout)
        self._ttl = ttl
        self._pipe = AutoPipeline(self._client)
        #: Unused tokens of finished requests, per key: (tpm, tokens).
        self._refunds: dict[str, tuple[int, int]] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def acquire(self, key: str, rpm: int, tpm: int, tokens: int) -> Decision:
        rpm, tpm = max(rpm, 0), max(tpm, 0)
        need = cap_tokens(tokens, tpm) if tpm > 0 else 0
        if rpm == 0 and tpm == 0:
            return Decision(True, 0, 0, 0, 0, 0.0, 0)
        # A refund rides along only when this call touches the token bucket.
        refund = self._refunds.pop(key, (0, 0))[1] if tpm > 0 else 0
        async with asyncio.timeout(self._timeout * 3):
            res = await self._pipe.call(_ACQUIRE, [self._prefix + key],
                                        [WINDOW, self._ttl, rpm, tpm, need, refund])
        allowed = int(res[0]) == 1
        req, tok, wait = float(res[1]), float(res[2]), float(res[3])
        return Decision(
            allowed=allowed,
            limit_requests=rpm,
            remaining_requests=math.floor(req + 1e-9) if rpm else 0,
            limit_tokens=tpm,
            remaining_tokens=math.floor(tok + 1e-9) if tpm else 0,
            retry_after=0.0 if allowed else wait,
            reserved_tokens=need if allowed else 0,
        )

    async def settle(self, key: str, tpm: int, reserved: int, actual: int) -> None:
        if tpm <= 0 or reserved == actual:
            return
        delta = int(reserved) - int(actual)
        if delta < 0:  # a charge: at once
            await self._run(_SETTLE, [self._prefix + key], [WINDOW, self._ttl, tpm, delta])
            return
        self._refunds[key] = (tpm, self._refunds.get(key, (tpm, 0))[1] + delta)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        try:
            await asyncio.sleep(REFUND_DELAY)
        finally:
            self._flusher = None
        await self.flush()

    async def flush(self) -> None:
        """Send the refunds no acquire has picked up (one pipeline)."""
        pending, self._refunds = self._refunds, {}
        calls = [self._pipe.call(_SETTLE, [self._prefix + key], [WINDOW, self._ttl, tpm, n])
                 for key, (tpm, n) in pending.items()]
        try:
            async with asyncio.timeout(self._timeout * 3):
                await asyncio.gather(*calls)
        except Exception as exc:  # noqa: BLE001 - a lost refund only makes the bucket stricter
            log.debug("rate limiter: refunds not sent (%s)", type(exc).__name__)

    async def aclose(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        await self.flush()
        await super().aclose()


class RedisBudgetReservations(_RedisBase):
    """Outstanding spend per scope and period in one Redis float (INCRBYFLOAT) with a TTL.

    The TTL (default 1 h, refreshed by every reservation) bounds how long reservations of a
    crashed process can linger; it should exceed the longest request.
    """

    def __init__(self, url: str | None = None, *, client: aioredis.Redis | None = None,
                 prefix: str = "gandalf:budget:", timeout: float = DEFAULT_TIMEOUT,
                 ttl: int = 3600) -> None:
        super().__init__(url, client, prefix, timeout)
        self._ttl = ttl

    def _key(self, scope_key: str, period_key: str) -> str:
        return f"{self._prefix}{scope_key}:{period_key}"

    async def outstanding(self, scope_key: str, period_key: str) -> float:
        value = await self._client.get(self._key(scope_key, period_key))
        return float(value) if value is not None else 0.0

    async def reserve(self, scope_key: str, budget: float, spent: float, estimate: float,
                      period_key: str) -> bool:
        res = await self._run(_RESERVE, [self._key(scope_key, period_key)],
                              [repr(float(budget)), repr(float(spent)),
                               repr(max(0.0, float(estimate))), self._ttl])
        return int(res) == 1

    async def release(self, scope_key: str, period_key: str, reserved: float,
                      actual: float) -> None:
        if reserved <= 0:
            return
        await self._run(_RELEASE, [self._key(scope_key, period_key)],
                        [repr(-float(reserved))])
