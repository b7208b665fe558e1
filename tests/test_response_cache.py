"""Response cache library: keys, cacheability, TTL rule, memory + Redis backends, stream replay."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid
from typing import Any

import msgspec
import pytest

from gandalf_ingress.cache import (
    CacheUnavailable,
    MemoryCache,
    RedisCache,
    ResponseCache,
    cache_key,
    cacheable,
    effective_ttl,
    synthesize_stream,
)

# --------------------------------------------------------------------------- keys

BODY: dict[str, Any] = {
    "model": "gpt-x",
    "messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hello  there ", "name": "bob"},
    ],
    "temperature": 0.2,
    "max_tokens": 50,
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
}


def _key(body: dict[str, Any], model: str = "gpt-x", scope: str = "key-1") -> str:
    return cache_key(body, model=model, scope=scope)


def test_key_is_hex_sha256_and_deterministic() -> None:
    k = _key(BODY)
    assert len(k) == 64 and int(k, 16) >= 0
    assert _key(json.loads(json.dumps(BODY))) == k


def test_key_ignores_dict_order_and_json_whitespace() -> None:
    reordered = dict(reversed(list(BODY.items())))
    reordered["messages"] = [dict(reversed(list(m.items()))) for m in BODY["messages"]]
    assert _key(reordered) == _key(BODY)
    spaced = json.loads(json.dumps(BODY, indent=4, separators=(" ,  ", " :  ")))
    assert _key(spaced) == _key(BODY)


def test_key_content_is_byte_exact() -> None:
    for content in ("Hello there", "Hello  there", "hello  there ", "Hello  there \n"):
        changed = json.loads(json.dumps(BODY))
        changed["messages"][1]["content"] = content
        assert _key(changed) != _key(BODY), content


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("stream", True),
        ("stream_options", {"include_usage": True}),
        ("n", 1),
        ("user", "someone"),
        ("metadata", {"a": "b"}),
        ("store", True),
        ("unknown_field", 1),
    ],
)
def test_excluded_fields_do_not_change_key(field: str, value: Any) -> None:
    assert _key({**BODY, field: value}) == _key(BODY)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 0.1),
        ("top_p", 0.9),
        ("presence_penalty", 0.5),
        ("frequency_penalty", 0.5),
        ("max_tokens", 51),
        ("max_completion_tokens", 10),
        ("stop", ["\n"]),
        ("seed", 7),
        ("tools", []),
        ("tool_choice", "none"),
        ("response_format", {"type": "json_object"}),
        ("logit_bias", {"50256": -100}),
        ("logprobs", True),
        ("top_logprobs", 2),
        ("parallel_tool_calls", False),
        ("reasoning_effort", "low"),
        ("modalities", ["text"]),
    ],
)
def test_included_fields_change_key(field: str, value: Any) -> None:
    assert _key({**BODY, field: value}) != _key(BODY)


def test_message_fields() -> None:
    def with_msg(**fields: Any) -> dict[str, Any]:
        return {**BODY, "messages": [*BODY["messages"], {"role": "assistant", **fields}]}

    base = _key(with_msg(content="x"))
    assert _key(with_msg(content="x", name="n")) != base
    assert _key(with_msg(content="x", tool_call_id="c1")) != base
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    assert _key(with_msg(content="x", tool_calls=calls)) != base
    # ignored message fields and explicit nulls
    assert _key(with_msg(content="x", refusal=None, extra="y")) == base
    assert _key(with_msg(content=None, tool_calls=calls)) == _key(with_msg(tool_calls=calls))


def test_sampling_params_rounded_to_4dp() -> None:
    assert _key({**BODY, "temperature": 0.20000001}) == _key(BODY)
    assert _key({**BODY, "temperature": 0}) == _key({**BODY, "temperature": 0.0})
    assert _key({**BODY, "top_p": 0.12344}) == _key({**BODY, "top_p": 0.1234})
    assert _key({**BODY, "top_p": 0.1236}) != _key({**BODY, "top_p": 0.1234})


def test_scope_and_model_separate_keys() -> None:
    assert _key(BODY, scope="key-1") != _key(BODY, scope="key-2")
    assert _key(BODY, scope="org-1") != _key(BODY, scope="org-2")
    assert _key(BODY, model="a") != _key(BODY, model="b")
    # the alias argument wins over the body's model field
    assert _key({**BODY, "model": "other"}) == _key(BODY)


def test_key_is_cheap() -> None:
    start = time.perf_counter()
    for _ in range(2000):
        _key(BODY)
    assert (time.perf_counter() - start) / 2000 < 200e-6


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, False),  # default temperature 1.0
        ({"temperature": 0.3}, True),
        ({"temperature": 0}, True),
        ({"temperature": 0.31}, False),
        ({"temperature": 1.0}, False),
        ({"temperature": None}, False),
        ({"temperature": "0.1"}, False),
        ({"temperature": True}, False),
        ({"seed": 1}, True),
        ({"seed": 0, "temperature": 1.5}, True),
        ({"seed": None}, False),
        ({"temperature": 0.1, "n": 1}, True),
        ({"temperature": 0.1, "n": None}, True),
        ({"temperature": 0.1, "n": 2}, False),
        ({"seed": 1, "n": 3}, False),
        ({"temperature": 0.1, "n": "2"}, False),
        ({"temperature": 0.1, "stream": True}, True),  # caller serves a synthesized stream
    ],
)
def test_cacheable_truth_table(body: dict[str, Any], expected: bool) -> None:
    assert cacheable(body) is expected


def test_cacheable_threshold_configurable() -> None:
    assert cacheable({"temperature": 0.5}, max_temperature=0.5)
    assert not cacheable({"temperature": 0.2}, max_temperature=0.0)


@pytest.mark.parametrize(
    ("route", "default", "expected"),
    [(0, 300.0, 300.0), (-5, 300.0, 300.0), (60, 300.0, 60.0), (3600, 300.0, 300.0),
     (60, 0.0, 0.0), (0, 3600.0, 3600.0)],
)
def test_effective_ttl(route: int, default: float, expected: float) -> None:
    assert effective_ttl(route, default) == expected


# --------------------------------------------------------------------------- backends


@pytest.fixture
async def memory_cache():
    cache = MemoryCache(max_size=1000)
    yield cache
    await cache.aclose()


@pytest.fixture
async def redis_cache(redis_url: str):
    import redis.asyncio as aioredis

    prefix = f"gandalf:test:{uuid.uuid4().hex}:"
    cache = RedisCache(redis_url, prefix=prefix, timeout=2.0)
    yield cache
    await cache.aclose()
    client = aioredis.Redis.from_url(redis_url)
    try:
        names = [n async for n in client.scan_iter(match=prefix + "*")]
        if names:
            await client.delete(*names)
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
def cache(request: pytest.FixtureRequest) -> ResponseCache:
    return request.getfixturevalue(f"{request.param}_cache")


async def _fill(cache: ResponseCache) -> None:
    entries = [("a1", "m-a", "k1"), ("a2", "m-a", "k2"), ("b1", "m-b", "k1"), ("b2", "m-b", "k2")]
    for key, model, key_id in entries:
        await cache.set(key, key.encode(), ttl=60, model=model, key_id=key_id, org_id="o")


async def _present(cache: ResponseCache) -> set[str]:
    return {k for k in ("a1", "a2", "b1", "b2") if await cache.get(k) is not None}


async def test_protocol(cache: ResponseCache) -> None:
    assert isinstance(cache, ResponseCache)


async def test_set_get_and_overwrite(cache: ResponseCache) -> None:
    assert await cache.get("nope") is None
    await cache.set("k", b'{"id":"x"}', ttl=60, model="m", key_id="key", org_id="org")
    assert await cache.get("k") == b'{"id":"x"}'
    await cache.set("k", b"second", ttl=60, model="m", key_id="key", org_id="org")
    assert await cache.get("k") == b"second"
    await cache.set("empty", b"", ttl=60, model="m", key_id="key", org_id="org")
    assert await cache.get("empty") == b""
    await cache.set("zero", b"v", ttl=0, model="m", key_id="key", org_id="org")
    assert await cache.get("zero") is None  # ttl <= 0: not stored


async def test_ttl_expiry(cache: ResponseCache) -> None:
    await cache.set("short", b"v", ttl=0.15, model="m", key_id="key", org_id="org")
    await cache.set("long", b"v", ttl=60, model="m", key_id="key", org_id="org")
    assert await cache.get("short") == b"v"
    await asyncio.sleep(0.3)
    assert await cache.get("short") is None
    assert await cache.get("long") == b"v"


async def test_purge_all(cache: ResponseCache) -> None:
    await _fill(cache)
    assert await cache.purge() == 4
    assert await _present(cache) == set()
    assert await cache.purge() == 0


async def test_purge_by_model(cache: ResponseCache) -> None:
    await _fill(cache)
    assert await cache.purge(model="m-a") == 2
    assert await _present(cache) == {"b1", "b2"}
    assert await cache.purge(model="m-a") == 0
    assert await cache.purge(model="unknown") == 0


async def test_purge_by_key_id(cache: ResponseCache) -> None:
    await _fill(cache)
    assert await cache.purge(key_id="k1") == 2
    assert await _present(cache) == {"a2", "b2"}
    # the index still finds entries written after a purge
    await cache.set("a1", b"again", ttl=60, model="m-a", key_id="k1", org_id="o")
    assert await cache.purge(model="m-a") == 2
    assert await _present(cache) == {"b2"}


async def test_purge_by_model_and_key_id(cache: ResponseCache) -> None:
    await _fill(cache)
    assert await cache.purge(model="m-b", key_id="k2") == 1
    assert await _present(cache) == {"a1", "a2", "b1"}


async def test_purge_skips_expired(cache: ResponseCache) -> None:
    await cache.set("gone", b"v", ttl=0.1, model="m", key_id="k", org_id="o")
    await cache.set("live", b"v", ttl=60, model="m", key_id="k", org_id="o")
    await asyncio.sleep(0.2)
    assert await cache.purge(model="m") == 1
    assert await cache.get("live") is None


async def test_large_value_round_trip(cache: ResponseCache) -> None:
    value = json.dumps(
        {"choices": [{"message": {"content": "lorem ipsum " * 17_000 + os.urandom(16).hex()}}]}
    ).encode()
    assert len(value) > 200_000
    await cache.set("big", value, ttl=60, model="m", key_id="k", org_id="o")
    assert await cache.get("big") == value
    binary = os.urandom(200_000)  # incompressible
    await cache.set("bin", binary, ttl=60, model="m", key_id="k", org_id="o")
    assert await cache.get("bin") == binary


async def test_redis_values_are_compressed(redis_cache: RedisCache, redis_url: str) -> None:
    import redis.asyncio as aioredis

    value = b'{"content":"' + b"abc " * 50_000 + b'"}'
    await redis_cache.set("big", value, ttl=60, model="m", key_id="k", org_id="o")
    client = aioredis.Redis.from_url(redis_url)
    try:
        stored = await client.get(redis_cache._vprefix + "big")
        ttl = await client.pttl(redis_cache._vprefix + "big")
    finally:
        await client.aclose()
    assert stored is not None and len(stored) < len(value) // 10
    assert 0 < ttl <= 60_000


async def test_redis_index_sets_outlive_entries(redis_cache: RedisCache, redis_url: str) -> None:
    import redis.asyncio as aioredis

    await redis_cache.set("long", b"v", ttl=60, model="m", key_id="k", org_id="o")
    await redis_cache.set("short", b"v", ttl=1, model="m", key_id="k", org_id="o")
    client = aioredis.Redis.from_url(redis_url)
    try:
        for name in ("m:m", "k:k"):
            assert (await client.pttl(redis_cache._prefix + name)) > 50_000
    finally:
        await client.aclose()


async def test_redis_stale_index_members_are_pruned(
    redis_cache: RedisCache, redis_url: str
) -> None:
    import redis.asyncio as aioredis

    for i in range(50):
        await redis_cache.set(f"s{i}", b"v", ttl=0.1, model="m", key_id="k", org_id="o")
    await asyncio.sleep(0.2)
    for i in range(100):
        await redis_cache.set(f"l{i}", b"v", ttl=60, model="m", key_id="k", org_id="o")
    client = aioredis.Redis.from_url(redis_url)
    try:
        sizes = [await client.scard(redis_cache._prefix + n) for n in ("m:m", "k:k")]
    finally:
        await client.aclose()
    assert all(100 <= n <= 125 for n in sizes), sizes  # most of the 50 dead members are gone
    assert await redis_cache.purge(model="m") == 100


def test_memory_requires_positive_size() -> None:
    with pytest.raises(ValueError):
        MemoryCache(0)


async def test_memory_max_size_bound() -> None:
    cache = MemoryCache(max_size=100)
    try:
        for i in range(2000):
            await cache.set(f"k{i}", b"v", ttl=60, model=f"m{i % 3}", key_id="k", org_id="o")
        cache._cache._force_drain_write()  # theine applies its policy in batches
        assert len(cache) <= 100
        present = sum([await cache.get(f"k{i}") is not None for i in range(2000)])
        assert 0 < present <= 100
        # side indexes are pruned lazily and stay bounded
        assert len(cache._meta) <= 2 * 2000 and len(cache._meta) <= cache._prune_at
        assert await cache.purge(model="m0") <= present
    finally:
        await cache.aclose()


async def test_memory_index_stays_bounded_under_eviction() -> None:
    cache = MemoryCache(max_size=10)
    try:
        for i in range(3000):
            await cache.set(f"k{i}", b"v", ttl=60, model="m", key_id="k", org_id="o")
        assert len(cache._meta) <= 1024 + 1
    finally:
        await cache.aclose()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_redis_unavailable_raises_quickly() -> None:
    cache = RedisCache(f"redis://127.0.0.1:{_closed_port()}/0", timeout=0.25)
    try:
        for call in (
            cache.get("k"),
            cache.set("k", b"v", ttl=10, model="m", key_id="k", org_id="o"),
            cache.purge(),
            cache.purge(model="m"),
        ):
            start = time.monotonic()
            with pytest.raises(CacheUnavailable):
                await call
            assert time.monotonic() - start < 1.0
    finally:
        await cache.aclose()


async def test_redis_unanswering_server_times_out() -> None:
    """A server that accepts but never answers is cut off by the timeout."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cache = RedisCache(f"redis://127.0.0.1:{port}/0", timeout=0.2)
    try:
        start = time.monotonic()
        with pytest.raises(CacheUnavailable):
            await cache.get("k")
        assert time.monotonic() - start < 1.0
    finally:
        await cache.aclose()
        server.close()


# --------------------------------------------------------------------------- stream

COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-123",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "gpt-x-2024",
    "system_fingerprint": "fp_1",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "The quick brown fox jumps over the lazy dog. " * 5 + "Ünïcödé ✓ 🦊",
                "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Paris", '
                                  '"unit": "celsius", "days": [1, 2, 3]}'}},
                    {"id": "call_2", "type": "function",
                     "function": {"name": "noop", "arguments": "{}"}},
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46},
}


IDENT = ("chatcmpl-123", 1_700_000_000, "gpt-x-2024")


def _accumulate_by_hand(payloads: list[bytes], ident: tuple = IDENT) -> dict[str, Any]:
    content, finish, usage, calls = "", None, None, {}
    for p in payloads:
        c = json.loads(p)
        assert c["object"] == "chat.completion.chunk"
        assert (c["id"], c["created"], c["model"]) == ident
        if c.get("usage"):
            usage = c["usage"]
        for ch in c["choices"]:
            d = ch["delta"]
            content += d.get("content") or ""
            for tc in d.get("tool_calls") or []:
                slot = calls.setdefault(tc["index"], {"id": "", "name": "", "arguments": ""})
                slot["id"] = tc.get("id") or slot["id"]
                fn = tc.get("function") or {}
                slot["name"] += fn.get("name") or ""
                slot["arguments"] += fn.get("arguments") or ""
            finish = ch["finish_reason"] or finish
    return {"content": content, "finish": finish, "usage": usage, "calls": calls}


def test_synthesize_stream_by_hand() -> None:
    payloads = synthesize_stream(json.dumps(COMPLETION).encode(), include_usage=True)
    first = json.loads(payloads[0])["choices"][0]["delta"]
    assert first["role"] == "assistant"
    got = _accumulate_by_hand(payloads)
    msg = COMPLETION["choices"][0]["message"]
    assert got["content"] == msg["content"]
    assert got["finish"] == "tool_calls"
    assert got["usage"] == COMPLETION["usage"]
    assert [got["calls"][i] for i in sorted(got["calls"])] == [
        {"id": c["id"], "name": c["function"]["name"], "arguments": c["function"]["arguments"]}
        for c in msg["tool_calls"]
    ]
    content_chunks = [p for p in payloads if json.loads(p)["choices"]
                      and json.loads(p)["choices"][0]["delta"].get("content")]
    assert 1 < len(content_chunks) <= 4
    last = json.loads(payloads[-1])
    assert last["choices"] == [] and last["usage"] == COMPLETION["usage"]
    assert json.loads(payloads[-2])["choices"][0]["delta"] == {}


def test_synthesize_stream_without_usage() -> None:
    payloads = synthesize_stream(json.dumps(COMPLETION).encode(), include_usage=False)
    assert all(json.loads(p)["choices"] for p in payloads)
    assert all("usage" not in json.loads(p) for p in payloads)


def test_synthesize_stream_openai_sdk_accumulation() -> None:
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from openai.types.chat import ChatCompletionChunk

    state = ChatCompletionStreamState()
    for p in synthesize_stream(msgspec.json.encode(COMPLETION), include_usage=True):
        state.handle_chunk(ChatCompletionChunk.model_validate_json(p))
    final = state.get_final_completion()
    assert final.id == "chatcmpl-123" and final.model == "gpt-x-2024"
    assert final.created == 1_700_000_000 and final.system_fingerprint == "fp_1"
    choice = final.choices[0]
    msg = COMPLETION["choices"][0]["message"]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.role == "assistant"
    assert choice.message.content == msg["content"]
    assert [(t.id, t.function.name, t.function.arguments) for t in choice.message.tool_calls] == [
        (c["id"], c["function"]["name"], c["function"]["arguments"]) for c in msg["tool_calls"]
    ]
    assert final.usage is not None and final.usage.model_dump() == {
        **COMPLETION["usage"], "completion_tokens_details": None, "prompt_tokens_details": None
    }


def test_synthesize_stream_plain_and_short() -> None:
    completion = {
        "id": "c", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"},
                     "finish_reason": "stop"}],
    }
    payloads = synthesize_stream(json.dumps(completion).encode(), include_usage=True)
    got = _accumulate_by_hand(payloads, ("c", 1, "m"))
    assert got["content"] == "Hi" and got["finish"] == "stop" and got["calls"] == {}
    assert len(payloads) == 3  # role, content, finish; no usage chunk without stored usage
