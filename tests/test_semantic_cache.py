"""The opt-in semantic response cache on real HTTP and NATS: an extra
in-process ingress in front of the session's test router and workers (whose
routes `m` = primary/ok, `emb` = primary/emb-ok and `all-fail` exist)."""

from __future__ import annotations

import secrets
from typing import Any

import httpx

from gandalf_ingress.metrics import REGISTRY
from gandalf_ingress.semantic import conversation_text, partition_of
from gateway_harness import free_port
from test_limits_cache_e2e import ingress, ingress_yaml

TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}}}}}]


def config(port: int, upstream: Any, key: str, *, semantic: bool = True,
           semantic_model: str = "emb") -> str:
    text = ingress_yaml(port, upstream.base_url, key, f"""
rate_limits: {{default_rpm: 0, default_tpm: 0}}
cache: {{enabled: true, backend: memory, default_ttl: 60s,
         semantic_model: {semantic_model}, semantic_threshold: 0.95}}
""")
    # The chat route opts in (or not); the embeddings alias is routed too.
    flag = "true" if semantic else "false"
    return text.replace(
        "targets: [{provider: primary, model: ok}]",
        f"targets: [{{provider: primary, model: ok}}]\n    semantic_cache: {flag}\n"
        "  - model_alias: emb\n    targets: [{provider: primary, model: emb-ok}]")


def body(user: str, *, system: str = "be brief", **extra: Any) -> dict[str, Any]:
    return {"model": "m", "temperature": 0, "max_tokens": 50,
            "messages": [{"role": "system", "content": system},
                         {"role": "user", "content": user}], **extra}


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_text_and_partition_rules() -> None:
    a = body("hi", tools=TOOLS)
    a["messages"].append({"role": "assistant", "content": [{"type": "text", "text": "yo"}]})
    assert conversation_text(a) == "user: hi\nassistant: yo"
    p = partition_of(a, scope="k", model="m")
    assert p == partition_of({**a, "max_tokens": 9}, scope="k", model="m")
    assert p != partition_of(body("hi"), scope="k", model="m")  # tools differ
    assert p != partition_of(body("hi", system="x", tools=TOOLS), scope="k", model="m")
    assert p != partition_of(a, scope="other", model="m")


async def test_semantic_hit_miss_and_partitions(gateway: Any, upstream: Any,
                                                nats_url: str) -> None:
    key = "gnd_" + secrets.token_urlsafe(16)
    port = free_port()
    auth = {"authorization": f"Bearer {key}"}
    user = f"what is the capital of France? {secrets.token_hex(4)}"

    def chats() -> int:
        return len(upstream.requests_to("/chat/completions"))

    def embeds() -> int:
        return len(upstream.requests_to("/embeddings"))

    hits0 = counter("gandalf_semantic_cache_hits_total")
    async with ingress(nats_url, config(port, upstream, key), port) as url, \
            httpx.AsyncClient(timeout=15) as http:
        post = url + "/v1/chat/completions"
        first = await http.post(post, json=body(user), headers=auth)
        assert first.status_code == 200 and first.headers["x-gandalf-cache"] == "miss"
        # Same conversation, different max_tokens: a different exact key.
        second = await http.post(post, json=body(user, max_tokens=60), headers=auth)
        assert second.status_code == 200, second.text
        assert second.headers["x-gandalf-cache"] == "semantic-hit"
        assert second.content == first.content
        assert chats() == 1 and embeds() == 2
        assert upstream.requests_to("/embeddings")[0].body["model"] == "emb-ok"
        assert counter("gandalf_semantic_cache_hits_total") == hits0 + 1

        other = await http.post(post, json=body(f"something else {user}"), headers=auth)
        assert other.headers["x-gandalf-cache"] == "miss" and chats() == 2
        system = await http.post(post, json=body(user, system="answer in French",
                                                 max_tokens=70), headers=auth)
        assert system.headers["x-gandalf-cache"] == "miss" and chats() == 3
        tools = await http.post(post, json=body(user, tools=TOOLS, max_tokens=80),
                                headers=auth)
        assert tools.headers["x-gandalf-cache"] == "miss" and chats() == 4
        # Not deterministic: neither cache is consulted, no embedding call.
        before = embeds()
        sampled = await http.post(post, json=body(user, temperature=1.0), headers=auth)
        assert "x-gandalf-cache" not in sampled.headers and embeds() == before
        assert chats() == 5


async def test_not_for_routes_without_opt_in(gateway: Any, upstream: Any,
                                             nats_url: str) -> None:
    key = "gnd_" + secrets.token_urlsafe(16)
    port = free_port()
    auth = {"authorization": f"Bearer {key}"}
    user = f"no semantic here {secrets.token_hex(4)}"
    async with ingress(nats_url, config(port, upstream, key, semantic=False), port) as url, \
            httpx.AsyncClient(timeout=15) as http:
        post = url + "/v1/chat/completions"
        first = await http.post(post, json=body(user), headers=auth)
        second = await http.post(post, json=body(user, max_tokens=60), headers=auth)
    assert (first.headers["x-gandalf-cache"], second.headers["x-gandalf-cache"]) == (
        "miss", "miss")
    assert len(upstream.requests_to("/chat/completions")) == 2
    assert upstream.requests_to("/embeddings") == []


async def test_embedding_failure_is_a_miss(gateway: Any, upstream: Any,
                                           nats_url: str) -> None:
    key = "gnd_" + secrets.token_urlsafe(16)
    port = free_port()
    auth = {"authorization": f"Bearer {key}"}
    user = f"embedding broken {secrets.token_hex(4)}"
    misses0 = counter("gandalf_semantic_cache_misses_total")
    text = config(port, upstream, key, semantic_model="all-fail")
    async with ingress(nats_url, text, port) as url, httpx.AsyncClient(timeout=15) as http:
        post = url + "/v1/chat/completions"
        first = await http.post(post, json=body(user), headers=auth)
        second = await http.post(post, json=body(user, max_tokens=60), headers=auth)
    for r in (first, second):
        assert r.status_code == 200, r.text
        assert r.headers["x-gandalf-cache"] == "miss"
    assert len(upstream.requests_to("/chat/completions")) == 2
    assert counter("gandalf_semantic_cache_misses_total") >= misses0 + 2
