"""Redis backends: dual token buckets and budget reservations shared by every ingress process.

At most one round trip per request, and usually none for large limits: a process leases a
few requests' worth of both buckets and admits from them locally (``lease.py`` states the
bound). Otherwise the acquire is one EVALSHA of one Lua script that takes the request
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
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError

from . import lease
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
#: refund (earlier requests' unused tokens, applied first), refund_req (an ended lease's
#: requests), lease_req, lease_tok (a lease wanted beside this request, see lease.py)
#: returns {allowed (0/1), req level, tok level, retry_after, lease granted (0/1)}
#: (levels "-1" when unlimited)
ACQUIRE_LUA = _COMMON + """
local rpm = tonumber(ARGV[3])
local tpm = tonumber(ARGV[4])
local need = tonumber(ARGV[5])
local refund = tonumber(ARGV[6]) or 0
local refund_req = tonumber(ARGV[7]) or 0
local lease_req = tonumber(ARGV[8]) or 0
local lease_tok = tonumber(ARGV[9]) or 0
local s = redis.call('HMGET', KEYS[1],
  'req_tokens', 'req_ts', 'req_limit', 'tok_tokens', 'tok_ts', 'tok_limit')
local req = refresh(s[1], s[2], s[3], rpm)
local tok = refresh(s[4], s[5], s[6], tpm)
if tok and refund > 0 then tok = math.min(tpm, tok + refund) end
if req and refund_req > 0 then req = math.min(rpm, req + refund_req) end

local wait = 0
if req and 1 - req > eps then wait = math.max(wait, (1 - req) * window / rpm) end
if tok and need - tok > eps then wait = math.max(wait, (need - tok) * window / tpm) end
local allowed = 0
if wait == 0 then
  allowed = 1
  if req then req = math.max(0, req - 1) end
  if tok then tok = math.max(0, tok - need) end
end

-- A lease only while every bucket stays at least half full once it is taken.
local granted = 0
if allowed == 1 and (lease_req > 0 or lease_tok > 0) then
  local ok = true
  if req and (lease_req <= 0 or req - lease_req < rpm / 2) then ok = false end
  if tok and tok - lease_tok < tpm / 2 then ok = false end
  if ok then
    if req then req = req - lease_req end
    if tok then tok = tok - lease_tok end
    granted = 1
  end
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
return {allowed, fmt(req or -1), fmt(tok or -1), fmt(wait), granted}
"""

#: KEYS[1] = state hash; ARGV = window, ttl, tpm, delta (reserved - actual),
#: rpm, req_delta (an ended lease's unused requests)
SETTLE_LUA = _COMMON + """
local tpm = tonumber(ARGV[3])
local delta = tonumber(ARGV[4])
local rpm = tonumber(ARGV[5]) or 0
local req_delta = tonumber(ARGV[6]) or 0
local s = redis.call('HMGET', KEYS[1],
  'req_tokens', 'req_ts', 'req_limit', 'tok_tokens', 'tok_ts', 'tok_limit')
local fields = {}
local tok = refresh(s[4], s[5], s[6], tpm)
if tok and delta ~= 0 then
  tok = math.min(tpm, math.max(0, tok + delta))
  table.insert(fields, 'tok_tokens'); table.insert(fields, fmt(tok))
  table.insert(fields, 'tok_ts'); table.insert(fields, fmt(now))
  table.insert(fields, 'tok_limit'); table.insert(fields, tpm)
end
local req = refresh(s[1], s[2], s[3], rpm)
if req and req_delta > 0 then
  req = math.min(rpm, req + req_delta)
  table.insert(fields, 'req_tokens'); table.insert(fields, fmt(req))
  table.insert(fields, 'req_ts'); table.insert(fields, fmt(now))
  table.insert(fields, 'req_limit'); table.insert(fields, rpm)
end
if #fields == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(fields))
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
    """Dual token buckets in Redis, one hash per key, server time; leases (lease.py) for
    limits large enough that a few requests' worth is a small fraction of them."""

    def __init__(self, url: str | None = None, *, client: aioredis.Redis | None = None,
                 prefix: str = "gandalf:rl:", timeout: float = DEFAULT_TIMEOUT,
                 ttl: int = IDLE_TTL, leases: bool = True) -> None:
        super().__init__(url, client, prefix, timeout)
        self._ttl = ttl
        self._pipe = AutoPipeline(self._client)
        #: What goes back to the shared buckets, per key: unused tokens of finished requests
        #: and what ended leases left.
        self._refunds: dict[str, _Refund] = {}
        self._leases: dict[str, lease.Lease] = {}
        self._leasing: set[str] = set()  # keys with a lease request in flight
        self._lease_on = leases
        self._flusher: asyncio.Task[None] | None = None

    async def acquire(self, key: str, rpm: int, tpm: int, tokens: int) -> Decision:
        rpm, tpm = max(rpm, 0), max(tpm, 0)
        need = cap_tokens(tokens, tpm) if tpm > 0 else 0
        if rpm == 0 and tpm == 0:
            return Decision(True, 0, 0, 0, 0, 0.0, 0)
        held = self._leases.get(key)
        if held is not None:
            if held.live(rpm, tpm, time.monotonic()) and held.take(need):
                req, tok = held.remaining()
                return Decision(True, rpm, req, tpm, tok, 0.0, need)
            self._end_lease(key)
        # What waits to go back rides along on this call, where it applies to its bucket.
        refund = refund_req = 0
        back = self._refunds.pop(key, None)
        if back is not None:
            if tpm > 0 and back.tpm == tpm:
                refund, back.tok = back.tok, 0
            if rpm > 0 and back.rpm == rpm:
                refund_req, back.req = back.req, 0
            if back.tok or back.req:
                self._refunds[key] = back
        want_req, want_tok = (0, 0)
        if self._lease_on and key not in self._leasing:
            want_req, want_tok = lease.size(rpm, tpm, need)
        if want_req or want_tok:
            self._leasing.add(key)
        try:
            async with asyncio.timeout(self._timeout * 3):
                res = await self._pipe.call(
                    _ACQUIRE, [self._prefix + key],
                    [WINDOW, self._ttl, rpm, tpm, need, refund, refund_req, want_req, want_tok])
        finally:
            if want_req or want_tok:
                self._leasing.discard(key)
        allowed = int(res[0]) == 1
        req_level, tok_level, wait = float(res[1]), float(res[2]), float(res[3])
        if allowed and int(res[4]) == 1:
            self._leases[key] = lease.new(rpm, tpm, want_req, want_tok, req_level, tok_level)
            self._schedule_flush()
            req_level += want_req
            tok_level += want_tok
        return Decision(
            allowed=allowed,
            limit_requests=rpm,
            remaining_requests=math.floor(req_level + 1e-9) if rpm else 0,
            limit_tokens=tpm,
            remaining_tokens=math.floor(tok_level + 1e-9) if tpm else 0,
            retry_after=0.0 if allowed else wait,
            reserved_tokens=need if allowed else 0,
        )

    async def settle(self, key: str, tpm: int, reserved: int, actual: int) -> None:
        if tpm <= 0 or reserved == actual:
            return
        delta = int(reserved) - int(actual)
        held = self._leases.get(key)
        if held is not None and held.tpm == tpm:
            # Settled against the lease first: its tokens were already taken from Redis.
            delta = held.refund(delta) if delta > 0 else -held.charge(-delta)
            if delta == 0:
                return
        if delta < 0:  # a charge: at once
            await self._run(_SETTLE, [self._prefix + key], [WINDOW, self._ttl, tpm, delta])
            return
        self._give_back(key, 0, tpm, 0, delta)
        self._schedule_flush()

    def _give_back(self, key: str, rpm: int, tpm: int, req: int, tok: int) -> None:
        old = self._refunds.get(key)
        if old is None:
            self._refunds[key] = _Refund(rpm, tpm, req, tok)
            return
        old.rpm, old.tpm = rpm or old.rpm, tpm or old.tpm
        old.req += req
        old.tok += tok

    def _end_lease(self, key: str) -> None:
        held = self._leases.pop(key)
        req, tok = held.leftover()
        if req or tok:
            self._give_back(key, held.rpm, held.tpm, req, tok)

    def _schedule_flush(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        try:
            await asyncio.sleep(REFUND_DELAY)
        finally:
            self._flusher = None
        now = time.monotonic()
        for key in [k for k, held in self._leases.items() if now >= held.expires]:
            self._end_lease(key)
        await self.flush()
        if self._leases:
            self._schedule_flush()

    async def flush(self) -> None:
        """Send what no acquire has picked up (one pipeline)."""
        pending, self._refunds = self._refunds, {}
        calls = [self._pipe.call(_SETTLE, [self._prefix + key],
                                 [WINDOW, self._ttl, r.tpm, r.tok, r.rpm, r.req])
                 for key, r in pending.items()]
        try:
            async with asyncio.timeout(self._timeout * 3):
                await asyncio.gather(*calls)
        except Exception as exc:  # noqa: BLE001 - a lost refund only makes the bucket stricter
            log.debug("rate limiter: refunds not sent (%s)", type(exc).__name__)

    async def aclose(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        for key in list(self._leases):
            self._end_lease(key)
        await self.flush()
        await super().aclose()


@dataclass(slots=True)
class _Refund:
    rpm: int
    tpm: int
    req: int
    tok: int


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
