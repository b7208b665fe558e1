"""Rate limiter library: memory and Redis token buckets, fallback policy, budget reservations,
token estimates. Redis tests use the `redis_url` server (system or embedded Valkey) under a
per-test key prefix, deleted afterwards."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from gandalf_ingress.metrics import REGISTRY
from gandalf_ingress.ratelimit import (
    DEFAULT_COMPLETION_ESTIMATE,
    BudgetReservations,
    Decision,
    MemoryBudgetReservations,
    MemoryLimiter,
    RateLimiter,
    estimate_chat_tokens,
    estimate_embedding_tokens,
)
from gandalf_ingress.ratelimit.fallback import FallbackLimiter
from gandalf_ingress.ratelimit.redis_backend import (
    RedisBudgetReservations,
    RedisLimiter,
    make_client,
)

DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connection refused


async def _drop_prefix(url: str, prefix: str) -> None:
    client = make_client(url, timeout=2)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
def prefix() -> str:
    return f"gandalf:test-rl:{uuid.uuid4().hex}:"


@pytest_asyncio.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[RateLimiter]:
    if request.param == "memory":
        lim: RateLimiter = MemoryLimiter()
        yield lim
        await lim.aclose()
        return
    url = request.getfixturevalue("redis_url")
    lim = RedisLimiter(url, prefix=prefix, timeout=2)
    yield lim
    await lim.aclose()
    await _drop_prefix(url, prefix)


@pytest_asyncio.fixture(params=["memory", "redis"])
async def budgets(request: pytest.FixtureRequest,
                  prefix: str) -> AsyncIterator[BudgetReservations]:
    if request.param == "memory":
        res: BudgetReservations = MemoryBudgetReservations()
        yield res
        return
    url = request.getfixturevalue("redis_url")
    res = RedisBudgetReservations(url, prefix=prefix, timeout=2)
    yield res
    await res.aclose()
    await _drop_prefix(url, prefix)


# --------------------------------------------------------------------------- buckets


async def test_rpm_exact(limiter: RateLimiter) -> None:
    remaining = []
    for _ in range(10):
        d = await limiter.acquire("k", 10, 0, 0)
        assert d.allowed and d.retry_after == 0 and d.limit_requests == 10
        remaining.append(d.remaining_requests)
    assert remaining == list(range(9, -1, -1))
    d = await limiter.acquire("k", 10, 0, 0)
    assert not d.allowed
    assert 5.5 < d.retry_after <= 6.0
    assert d.retry_after_header() == "6"
    assert d.reserved_tokens == 0 and d.limit_tokens == 0
    # another key is independent
    assert (await limiter.acquire("other", 10, 0, 0)).allowed


async def test_tpm_reserve_and_settle(limiter: RateLimiter) -> None:
    d = await limiter.acquire("k", 0, 6000, 3000)
    assert d.allowed and d.reserved_tokens == 3000 and d.remaining_tokens == 3000
    await limiter.settle("k", 6000, 3000, 1000)  # refund 2000
    d = await limiter.acquire("k", 0, 6000, 0)
    assert 5000 <= d.remaining_tokens <= 5010
    await limiter.settle("k", 6000, 0, 2000)  # charge 2000 more
    d = await limiter.acquire("k", 0, 6000, 0)
    assert 3000 <= d.remaining_tokens <= 3010
    await limiter.settle("k", 6000, 0, 50_000)  # charge beyond the bucket: floor at 0
    d = await limiter.acquire("k", 0, 6000, 0)
    assert 0 <= d.remaining_tokens <= 10
    d = await limiter.acquire("k", 0, 6000, 600)
    assert not d.allowed and 5.5 < d.retry_after <= 6.0
    await limiter.settle("k", 6000, 50_000, 0)  # refund beyond capacity: ceiling at 6000
    d = await limiter.acquire("k", 0, 6000, 0)
    assert d.remaining_tokens == 6000


async def test_estimate_above_capacity_is_capped(limiter: RateLimiter) -> None:
    d = await limiter.acquire("k", 0, 100, 500)
    assert d.allowed and d.reserved_tokens == 100 and d.remaining_tokens == 0
    d = await limiter.acquire("k", 0, 100, 500)
    assert not d.allowed and d.reserved_tokens == 0
    assert 59 < d.retry_after <= 60.0  # until the bucket is full again


async def test_zero_means_unlimited(limiter: RateLimiter) -> None:
    for _ in range(200):
        d = await limiter.acquire("k", 0, 0, 10**9)
        assert d.allowed
    assert (d.limit_requests, d.limit_tokens) == (0, 0)
    # only the token bucket limited; requests unlimited
    for _ in range(50):
        assert (await limiter.acquire("t", 0, 1000, 20)).allowed
    d = await limiter.acquire("t", 0, 1000, 20)
    assert not d.allowed and d.limit_requests == 0
    await limiter.settle("u", 0, 10, 1000)  # unlimited: settle is a no-op


async def test_limit_change_keeps_level(limiter: RateLimiter) -> None:
    for _ in range(4):
        d = await limiter.acquire("k", 10, 0, 0)
    assert d.remaining_requests == 6
    d = await limiter.acquire("k", 20, 0, 0)  # raised: not reset to full
    assert d.allowed and d.limit_requests == 20 and d.remaining_requests == 5
    d = await limiter.acquire("k", 3, 0, 0)  # lowered: clamped to the new capacity
    assert d.allowed and d.remaining_requests == 2
    d = await limiter.acquire("k", 0, 1000, 0)  # rpm now unlimited, then back
    d = await limiter.acquire("k", 3, 0, 0)
    assert d.remaining_requests == 1


async def test_both_or_neither(limiter: RateLimiter) -> None:
    d = await limiter.acquire("k", 10, 100, 90)
    assert d.allowed and d.remaining_requests == 9 and d.remaining_tokens == 10
    d = await limiter.acquire("k", 10, 100, 50)  # tokens short: request must not be taken
    assert not d.allowed and d.remaining_requests == 9 and d.remaining_tokens == 10
    assert 23 < d.retry_after <= 24.0
    d = await limiter.acquire("k", 10, 100, 5)
    assert d.allowed and d.remaining_requests == 8 and d.remaining_tokens == 5
    for _ in range(8):
        assert (await limiter.acquire("k", 10, 100, 0)).allowed
    d = await limiter.acquire("k", 10, 100, 5)  # requests short: tokens must not be taken
    assert not d.allowed and d.remaining_tokens == 5


async def test_memory_retry_after_is_the_max_of_both_and_refills() -> None:
    now = [1000.0]
    lim = MemoryLimiter(clock=lambda: now[0])
    assert (await lim.acquire("k", 60, 600, 600)).allowed  # tokens empty, 59 requests left
    d = await lim.acquire("k", 60, 600, 300)
    assert not d.allowed and d.retry_after == pytest.approx(30.0)
    now[0] += 30
    d = await lim.acquire("k", 60, 600, 300)
    assert d.allowed and d.remaining_requests == 59 and d.remaining_tokens == 0  # 30 back
    for _ in range(59):
        assert (await lim.acquire("k", 60, 600, 0)).allowed
    now[0] += 0.5  # half a request and 5 tokens back: the request is the longer wait
    d = await lim.acquire("k", 60, 600, 2)
    assert not d.allowed and d.retry_after == pytest.approx(0.5)
    now[0] += 0.5  # a request and 10 tokens back: tokens are the longer wait (20 more = 2 s)
    d = await lim.acquire("k", 60, 600, 30)
    assert not d.allowed and d.retry_after == pytest.approx(2.0)
    d = await lim.acquire("k", 60, 600, 10)
    assert d.allowed and d.remaining_requests == 0 and d.remaining_tokens == 0


async def test_memory_eviction_bounds_the_dict() -> None:
    now = [0.0]
    lim = MemoryLimiter(max_keys=100, clock=lambda: now[0])
    for i in range(250):
        await lim.acquire(f"k{i}", 10, 0, 0)
    assert len(lim) == 100
    now[0] += 121  # all idle: the next call evicts them (a refilled bucket loses nothing)
    await lim.acquire("fresh", 10, 0, 0)
    assert len(lim) == 1


# --------------------------------------------------------------------------- Redis specifics


async def test_redis_shared_by_two_processes(redis_url: str, prefix: str) -> None:
    a = RedisLimiter(redis_url, prefix=prefix, timeout=2)
    b = RedisLimiter(redis_url, prefix=prefix, timeout=2)
    try:
        results = await asyncio.gather(
            *[(a if i % 2 else b).acquire("shared", 10, 0, 0) for i in range(30)])
        assert sum(d.allowed for d in results) == 10
        denied = [d for d in results if not d.allowed]
        assert all(5 < d.retry_after <= 6.0 for d in denied)
    finally:
        await a.aclose()
        await b.aclose()
        await _drop_prefix(redis_url, prefix)


async def test_redis_state_hash_ttl_and_noscript(redis_url: str, prefix: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from gandalf_ingress.ratelimit import redis_backend

    lim = RedisLimiter(redis_url, prefix=prefix, timeout=2)
    client = make_client(redis_url, timeout=2)
    try:
        await lim.load()
        await lim.acquire("k", 10, 1000, 100)
        state = await client.hgetall(prefix + "k")
        assert set(state) == {"req_tokens", "req_ts", "req_limit",
                              "tok_tokens", "tok_ts", "tok_limit"}
        assert state["req_limit"] == "10" and float(state["tok_tokens"]) == 900
        assert 0 < await client.ttl(prefix + "k") <= 120
        # NOSCRIPT (e.g. after a server restart) falls back to EVAL
        monkeypatch.setattr(redis_backend._ACQUIRE, "sha", "0" * 40)
        d = await lim.acquire("k", 10, 1000, 100)
        assert d.allowed and d.remaining_requests == 8 and d.remaining_tokens == 800
    finally:
        await client.aclose()
        await lim.aclose()
        await _drop_prefix(redis_url, prefix)


# --------------------------------------------------------------------------- fallback


def _fallback_count(policy: str, op: str = "acquire") -> float:
    return REGISTRY.get_sample_value("gandalf_ratelimit_fallback_total",
                                     {"policy": policy, "op": op}) or 0.0


async def test_fallback_local_answers_from_memory(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="gandalf.ratelimit")
    lim = FallbackLimiter(RedisLimiter(DEAD_REDIS, timeout=0.1), MemoryLimiter(), "local",
                          probe_interval=0.0)  # probe on every call: still one log line
    before = _fallback_count("local")
    try:
        d1 = await lim.acquire("k", 2, 0, 0)
        d2 = await lim.acquire("k", 2, 0, 0)
        d3 = await lim.acquire("k", 2, 0, 0)
        assert (d1.allowed, d2.allowed, d3.allowed) == (True, True, False)
        assert not d3.unavailable
        assert lim.degraded
        assert _fallback_count("local") == before + 3
        await lim.settle("k", 100, 10, 5)
        assert _fallback_count("local", "settle") >= 1
        assert sum("Redis unavailable" in r.getMessage() for r in caplog.records) == 1
    finally:
        await lim.aclose()


async def test_fallback_closed_denies() -> None:
    lim = FallbackLimiter(RedisLimiter(DEAD_REDIS, timeout=0.1), MemoryLimiter(), "closed")
    before = _fallback_count("closed")
    try:
        d = await lim.acquire("k", 10, 1000, 5)
        assert not d.allowed and d.unavailable and d.retry_after == 1.0
        assert d.reserved_tokens == 0 and d.retry_after_header() == "1"
        assert _fallback_count("closed") == before + 1
    finally:
        await lim.aclose()


class _Flaky:
    """A primary that fails while ``down`` is set; counts its calls."""

    def __init__(self) -> None:
        self.down = True
        self.calls = 0

    async def acquire(self, key: str, rpm: int, tpm: int, tokens: int) -> Decision:
        self.calls += 1
        if self.down:
            raise ConnectionRefusedError("down")
        return Decision(True, rpm, 99, tpm, 99, 0.0, tokens)

    async def settle(self, key: str, tpm: int, reserved: int, actual: int) -> None:
        self.calls += 1

    async def aclose(self) -> None:
        pass


async def test_fallback_probes_and_recovers() -> None:
    now = [0.0]
    primary = _Flaky()
    lim = FallbackLimiter(primary, MemoryLimiter(), "local", replicas=2, probe_interval=1.0,
                          clock=lambda: now[0])
    d = await lim.acquire("k", 10, 0, 0)
    assert d.allowed and d.limit_requests == 5  # local share = limit / replicas
    for _ in range(5):
        await lim.acquire("k", 10, 0, 0)
    assert primary.calls == 1  # no probe before the interval: no pile-up on a dead Redis
    primary.down = False
    now[0] += 1.5
    d = await lim.acquire("k", 10, 0, 0)
    assert d.allowed and d.remaining_requests == 99 and not lim.degraded


async def test_fallback_recovers_with_real_redis(redis_url: str, prefix: str) -> None:
    lim = FallbackLimiter(RedisLimiter(redis_url, prefix=prefix, timeout=2), MemoryLimiter(),
                          "closed", probe_interval=0.0)
    try:
        d = await lim.acquire("k", 10, 0, 0)
        assert d.allowed and d.remaining_requests == 9 and not lim.degraded
    finally:
        await lim.aclose()
        await _drop_prefix(redis_url, prefix)


# --------------------------------------------------------------------------- budgets


async def test_budget_reservations_concurrent(budgets: BudgetReservations) -> None:
    results = await asyncio.gather(
        *[budgets.reserve("key:k1", 1.0, 0.95, 0.01, "monthly:2026-07") for _ in range(50)])
    assert sum(results) == 5
    # another period or scope is independent
    assert await budgets.reserve("key:k1", 1.0, 0.95, 0.01, "monthly:2026-08")
    assert await budgets.reserve("key:k2", 1.0, 0.95, 0.01, "monthly:2026-07")
    # releasing frees the room again
    for _ in range(5):
        await budgets.release("key:k1", "monthly:2026-07", 0.01, 0.004)
    results = await asyncio.gather(
        *[budgets.reserve("key:k1", 1.0, 0.95, 0.01, "monthly:2026-07") for _ in range(50)])
    assert sum(results) == 5
    assert not await budgets.reserve("key:k1", 1.0, 1.0, 0.01, "monthly:2026-09")
    await budgets.release("key:k3", "x", 0.5, 0.1)  # nothing outstanding: no-op, no negative
    assert await budgets.reserve("key:k3", 1.0, 0.5, 0.5, "x")
    assert not await budgets.reserve("key:k3", 1.0, 0.5, 0.01, "x")


# --------------------------------------------------------------------------- estimates


def test_estimate_chat_heuristic() -> None:
    body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 50}
    # 4 + ceil(4/4)=1 + ceil(len('"hello"')=7 /4)=2 → 7, + 3 primer = 10, + 50 completion
    assert estimate_chat_tokens(body) == 60
    body = {"messages": [
        {"role": "assistant", "content": None, "name": "bob",
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ], "max_completion_tokens": 7, "max_tokens": 1000}
    tc = '[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]'
    first = 4 + 3 + 1 + (1 + 1) + -(-len(tc) // 4)  # role, null content, name, tool_calls
    second = 4 + 1 + 1 + 1  # role 'tool', '"ok"', tool_call_id
    assert estimate_chat_tokens(body) == first + second + 3 + 7
    assert estimate_chat_tokens({"messages": []}) == 3 + DEFAULT_COMPLETION_ESTIMATE
    assert estimate_chat_tokens({"messages": [], "max_tokens": 10, "n": 3}) == 33
    assert estimate_chat_tokens({"max_tokens": True}) == 3 + DEFAULT_COMPLETION_ESTIMATE
    # multibyte text counts UTF-8 bytes, as the original's raw JSON did
    assert estimate_chat_tokens({"messages": [{"role": "user", "content": "ééé"}],
                                 "max_tokens": 1}) == 4 + 1 + 2 + 3 + 1


def test_estimate_embeddings() -> None:
    assert estimate_embedding_tokens({"input": "abcdefgh"}) == 2
    assert estimate_embedding_tokens({"input": ["abc", "abcde"]}) == 3
    assert estimate_embedding_tokens({"input": [1, 2, 3, 4, 5]}) == 5
    assert estimate_embedding_tokens({"input": [[1, 2], [3]]}) == 3
    assert estimate_embedding_tokens({"input": ""}) == 1
    assert estimate_embedding_tokens({}) == 1


async def test_fallback_on_a_hanging_redis_is_bounded_by_the_timeout() -> None:
    """Redis slow rather than down (C13): accepts connections, never answers."""
    held: list[asyncio.StreamWriter] = []

    async def silent(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    lim = FallbackLimiter(RedisLimiter(f"redis://127.0.0.1:{port}/0", timeout=0.05),
                          MemoryLimiter(), "local")
    before = _fallback_count("local")
    loop = asyncio.get_running_loop()
    try:
        t0 = loop.time()
        results = await asyncio.gather(*[lim.acquire("k", 10, 0, 0) for _ in range(20)])
        elapsed = loop.time() - t0
        assert all(d.allowed for d in results[:10]) and sum(d.allowed for d in results) == 10
        assert elapsed < 0.5  # one short timeout, not one per request in series
        assert _fallback_count("local") == before + 20
        t0 = loop.time()
        await lim.acquire("k", 10, 0, 0)  # within the probe interval: no Redis call at all
        assert loop.time() - t0 < 0.02
    finally:
        await lim.aclose()
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()


# --------------------------------------------------------------------------- Redis cost


async def _scripts_run(client: Any) -> int:
    """Scripts the server has run so far (EVALSHA + EVAL, all clients)."""
    stats = await client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


async def test_redis_refund_rides_on_the_next_acquire(redis_url: str, prefix: str) -> None:
    """acquire + settle (refund) + acquire: the refund costs no round trip of
    its own, and the next decision already counts it."""
    lim = RedisLimiter(redis_url, prefix=prefix, timeout=2)
    client = make_client(redis_url, timeout=2)
    try:
        await lim.load()
        await lim.acquire("k", 100, 6000, 3000)  # the hash exists; scripts are cached
        before = await _scripts_run(client)
        await lim.settle("k", 6000, 3000, 1000)  # refund 2000: kept for the next acquire
        d = await lim.acquire("k", 100, 6000, 4000)
        # 5000 tokens (3000 + the refund) take 4000; without the refund it would wait.
        assert d.allowed and 1000 <= d.remaining_tokens <= 1010
        # One script run: no separate settle.
        assert await _scripts_run(client) - before == 1
    finally:
        await client.aclose()
        await lim.aclose()
        await _drop_prefix(redis_url, prefix)


async def test_redis_refund_without_a_next_acquire_is_flushed(redis_url: str,
                                                              prefix: str) -> None:
    from gandalf_ingress.ratelimit.redis_backend import REFUND_DELAY

    lim = RedisLimiter(redis_url, prefix=prefix, timeout=2)
    client = make_client(redis_url, timeout=2)
    try:
        await lim.acquire("k", 0, 6000, 3000)
        await lim.settle("k", 6000, 3000, 0)
        await asyncio.sleep(REFUND_DELAY + 0.3)
        assert float(await client.hget(prefix + "k", "tok_tokens")) >= 5999
    finally:
        await client.aclose()
        await lim.aclose()
        await _drop_prefix(redis_url, prefix)


async def test_redis_pipelined_acquires_stay_exact(redis_url: str, prefix: str) -> None:
    """Many concurrent acquires from two processes' clients, batched into
    pipelines: exactly the limit is admitted, RPM and TPM together."""
    a = RedisLimiter(redis_url, prefix=prefix, timeout=2)
    b = RedisLimiter(redis_url, prefix=prefix, timeout=2)
    try:
        rpm = await asyncio.gather(*[(a if i % 2 else b).acquire("r", 25, 0, 0)
                                     for i in range(80)])
        assert sum(d.allowed for d in rpm) == 25
        tpm = await asyncio.gather(*[(a if i % 2 else b).acquire("t", 1000, 1000, 100)
                                     for i in range(80)])
        assert sum(d.allowed for d in tpm) == 10
    finally:
        await a.aclose()
        await b.aclose()
        await _drop_prefix(redis_url, prefix)


# --------------------------------------------------------------------------- leases


async def test_redis_lease_admits_locally_and_never_above_the_limit(redis_url: str,
                                                                    prefix: str) -> None:
    """Large limit: most acquires cost no round trip; two processes together still
    admit at most the limit (plus what refills meanwhile), and are refused early by
    at most one lease each."""
    from gandalf_ingress.ratelimit import lease

    rpm = 3000  # lease: 60 requests
    a = RedisLimiter(redis_url, prefix=prefix, timeout=2)
    b = RedisLimiter(redis_url, prefix=prefix, timeout=2)
    client = make_client(redis_url, timeout=2)
    try:
        await a.load()
        await a.acquire("warm", 10, 0, 0)
        before = await _scripts_run(client)
        t0 = asyncio.get_running_loop().time()
        admitted = 0
        for _ in range(100):
            admitted += (await a.acquire("k", rpm, 0, 0)).allowed
        assert admitted == 100
        # 100 requests took a handful of round trips, not 100
        assert await _scripts_run(client) - before <= 100 // lease.size(rpm, 0, 0)[0] + 2
        # Both processes drain the bucket: the bound holds across them.
        results = []
        for i in range(6000):
            d = await (a if i % 2 else b).acquire("k", rpm, 0, 0)
            results.append(d)
            if not d.allowed and i > 200 and not any(r.allowed for r in results[-50:]):
                break
        elapsed = asyncio.get_running_loop().time() - t0
        total = admitted + sum(d.allowed for d in results)
        refill = elapsed * rpm / 60
        assert total <= rpm + refill + 1
        assert total >= rpm - 2 * lease.size(rpm, 0, 0)[0]
    finally:
        await client.aclose()
        await a.aclose()
        await b.aclose()
        await _drop_prefix(redis_url, prefix)


async def test_redis_lease_is_returned_on_close_and_expiry(redis_url: str, prefix: str,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    from gandalf_ingress.ratelimit import lease, redis_backend

    monkeypatch.setattr(lease, "TTL", 0.2)
    monkeypatch.setattr(redis_backend, "REFUND_DELAY", 0.1)
    client = make_client(redis_url, timeout=2)
    a = RedisLimiter(redis_url, prefix=prefix, timeout=2)
    try:
        d = await a.acquire("k", 5000, 500_000, 100)
        assert d.allowed
        state = await client.hgetall(prefix + "k")
        # the lease was taken out of Redis: 64 requests and 6,400 tokens beside this one
        assert float(state["req_tokens"]) <= 5000 - 1 - 64 + 1
        assert float(state["tok_tokens"]) <= 500_000 - 100 - 6400 + 10
        # unused, it goes back once it expires
        await asyncio.sleep(0.6)
        state = await client.hgetall(prefix + "k")
        assert float(state["req_tokens"]) >= 5000 - 1
        assert float(state["tok_tokens"]) >= 500_000 - 100
        # and on close
        await a.acquire("c", 5000, 0, 0)
        await a.aclose()
        assert float(await client.hget(prefix + "c", "req_tokens")) >= 5000 - 1
    finally:
        await client.aclose()
        await a.aclose()
        await _drop_prefix(redis_url, prefix)


async def test_redis_no_lease_below_half_or_for_small_limits(redis_url: str,
                                                             prefix: str) -> None:
    """Small limits and a bucket under half full are decided by Redis on every
    request, so the remaining count stays exact across processes."""
    a = RedisLimiter(redis_url, prefix=prefix, timeout=2)
    b = RedisLimiter(redis_url, prefix=prefix, timeout=2)
    try:
        seen = [(await (a if i % 2 else b).acquire("small", 40, 0, 0)).remaining_requests
                for i in range(40)]
        assert seen == list(range(39, -1, -1))
        # 3,000 rpm: leases until the bucket is half empty, then every request is exact
        rem = []
        for i in range(3000):
            d = await (a if i % 2 else b).acquire("big", 3000, 0, 0)
            if not d.allowed:
                break
            rem.append(d.remaining_requests)
        # well below half: both processes see one count, falling by one a request (less the
        # refill, 50 a second, which can repeat a value)
        tail = rem[-1000:]
        assert all(x >= y for x, y in itertools.pairwise(tail))
        assert tail[0] - tail[-1] >= 900
    finally:
        await a.aclose()
        await b.aclose()
        await _drop_prefix(redis_url, prefix)
