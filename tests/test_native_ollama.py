"""Ollama's native API through the pipeline: ``/api/chat`` (NDJSON stream by
default), ``/api/embed``, ``/api/tags``, with alias rewriting and failover."""

from __future__ import annotations

import json
from typing import Any

import httpx

from gateway_harness import LIMITED_KEY, TEST_KEY, UPSTREAM_KEY

AUTH = {"authorization": f"Bearer {TEST_KEY}"}


async def test_api_chat_streams_ndjson_byte_for_byte(gateway: Any, upstream: Any) -> None:
    body = {"model": "llama", "messages": [{"role": "user", "content": "hi ollama"}]}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as http:
        through = await http.post("/api/chat", json=body, headers=AUTH)
        # The same request straight to the mock, as the gateway sends it.
        direct = await http.post(upstream.url + "/api/chat",
                                 json={**body, "model": "llama3.2"},
                                 headers={"authorization": f"Bearer {UPSTREAM_KEY}"})
    assert through.status_code == 200
    assert through.headers["content-type"].startswith("application/x-ndjson")
    assert through.content == direct.content  # the mock is deterministic
    lines = [json.loads(line) for line in through.text.splitlines()]
    assert lines[-1]["done"] is True
    record = upstream.requests_to_prefix("/api/chat")[0]
    assert record.body["model"] == "llama3.2"  # alias rewritten, nothing else
    assert record.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


async def test_api_chat_non_stream_and_embed(gateway: Any, upstream: Any) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as http:
        chat = await http.post("/api/chat", headers=AUTH, json={
            "model": "llama", "stream": False,
            "messages": [{"role": "user", "content": "whole please"}]})
        embed = await http.post("/api/embed", headers=AUTH,
                                json={"model": "llama", "input": ["a", "b"]})
    assert chat.status_code == 200 and chat.json()["done"] is True
    assert "whole please" in chat.json()["message"]["content"]
    assert embed.status_code == 200 and len(embed.json()["embeddings"]) == 2


async def test_api_failover_and_tags_respect_the_allowlist(gateway: Any,
                                                           upstream: Any) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as http:
        chat = await http.post("/api/chat", headers=AUTH, json={
            "model": "llama-failover", "stream": False,
            "messages": [{"role": "user", "content": "x"}]})
        tags = await http.get("/api/tags", headers=AUTH)
        limited = await http.get("/api/tags",
                                 headers={"authorization": f"Bearer {LIMITED_KEY}"})
        refused = await http.post("/api/chat", json={"model": "llama", "messages": []},
                                  headers={"authorization": f"Bearer {LIMITED_KEY}"})
    assert chat.status_code == 200
    assert [r.body["model"] for r in upstream.requests_to_prefix("/api/chat")] == [
        "fail-503", "llama-after-503"]
    assert "llama" in {m["name"] for m in tags.json()["models"]}
    assert {m["name"] for m in limited.json()["models"]} <= {"m", "failover-500",
                                                             "failover-429"}
    # Ollama-shaped error for Ollama clients.
    assert refused.status_code == 403 and isinstance(refused.json()["error"], str)


async def test_unknown_ollama_action_is_404(gateway: Any, upstream: Any) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as http:
        r = await http.post("/api/pull", headers=AUTH, json={"model": "llama"})
    assert r.status_code == 404
    assert not upstream.requests
