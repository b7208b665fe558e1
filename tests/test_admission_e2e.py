"""Every public route goes through the admission pipeline: RPM on each route
of the app's route table (a route added without the pipeline fails here),
TPM and budget reservations on native doors (also translated)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from gandalf_common.config import parse_config
from gandalf_ingress.app import create_app
from gandalf_ingress.pipeline import OBSERVERS, ORDER, Ticket
from gateway_harness import TEST_KEY, free_port, gateway_yaml, pipeline

#: Routes without the pipeline, on purpose: probes, metrics, and the admin
#: API (its own authentication and authorization).
#: Probes, metrics, the admin API (its own authentication and the admin
#: service's authorization) and the public API description.
EXCLUDED = {"/healthz", "/readyz", "/metrics", "/admin/v1/{path:path}", "/openapi.json"}

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
MSG = {"max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
GEM = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
AZ = {"api-version": "2024-10-21"}

#: (route path, method) -> the requests that exercise it: (path, query,
#: API family of the key header, JSON body or None).
SAMPLES: dict[tuple[str, str], list[tuple[str, dict[str, str], str, Any]]] = {
    ("/v1/chat/completions", "POST"): [("/v1/chat/completions", {}, "openai", CHAT)],
    ("/v1/embeddings", "POST"): [("/v1/embeddings", {}, "openai",
                                  {"model": "emb", "input": "hi"})],
    ("/v1/models", "GET"): [("/v1/models", {}, "openai", None),
                            ("/v1/models", {}, "anthropic", None)],
    ("/v1/messages", "POST"): [("/v1/messages", {}, "anthropic", {"model": "claude", **MSG}),
                               ("/v1/messages", {}, "anthropic",
                                {"model": "claude-via-openai", **MSG}),
                               ("/v1/messages", {}, "anthropic",
                                {"model": "claude-via-ollama", **MSG})],
    ("/v1/messages/count_tokens", "POST"): [
        ("/v1/messages/count_tokens", {}, "anthropic", {"model": "claude", **MSG})],
    ("/v1beta/models", "GET"): [("/v1beta/models", {}, "gemini", None)],
    ("/v1beta/models/{target:path}", "POST"): [
        ("/v1beta/models/gem:generateContent", {}, "gemini", GEM)],
    ("/openai/deployments/{deployment}/chat/completions", "POST"): [
        ("/openai/deployments/azure-gpt/chat/completions", AZ, "azure", CHAT)],
    ("/openai/deployments/{deployment}/embeddings", "POST"): [
        ("/openai/deployments/azure-gpt/embeddings", AZ, "azure", {"input": "hi"})],
    ("/v1/responses", "POST"): [("/v1/responses", {}, "openai", {"model": "m", "input": "hi"}),
                                ("/v1/responses", {}, "openai",
                                 {"model": "claude", "input": "hi"})],
    # ``{rid}``: a response stored just before each request (see ``_stored``).
    ("/v1/responses/{response_id}", "GET"): [("/v1/responses/{rid}", {}, "openai", None)],
    ("/v1/responses/{response_id}", "DELETE"): [("/v1/responses/{rid}", {}, "openai", None)],
    ("/v1/responses/{response_id}/input_items", "GET"): [
        ("/v1/responses/{rid}/input_items", {}, "openai", None)],
    ("/v1/responses/{response_id}/cancel", "POST"): [
        ("/v1/responses/{rid}/cancel", {}, "openai", None)],
    ("/api/tags", "GET"): [("/api/tags", {}, "ollama", None)],
    ("/api/{action}", "POST"): [
        ("/api/chat", {}, "ollama", {"model": "llama", "stream": False,
                                     "messages": [{"role": "user", "content": "hi"}]}),
        ("/api/generate", {}, "ollama", {"model": "llama", "stream": False, "prompt": "hi"}),
        ("/api/embed", {}, "ollama", {"model": "llama", "input": "hi"})],
}
#: Model listings cost a request and record no usage.
LISTINGS = {"/v1/models", "/v1beta/models", "/api/tags"}
CASES = [(route, sample) for route, samples in SAMPLES.items() for sample in samples]
KEYS = [f"gnd_admission_route_key_{i:02d}" for i in range(len(CASES) + 2)]


def key_headers(family: str, key: str) -> dict[str, str]:
    return {"anthropic": {"x-api-key": key, "anthropic-version": "2023-06-01"},
            "gemini": {"x-goog-api-key": key}, "azure": {"api-key": key},
            }.get(family, {"authorization": f"Bearer {key}"})


def edge_yaml(upstream: str, extra: str) -> tuple[str, str]:
    """The session gateway's providers and routes on a new port, with
    ``extra`` replacing its (absent) rate limits, and one key per case."""
    port = free_port()
    text = gateway_yaml(port, upstream).replace(
        "rate_limits: {default_rpm: 0, default_tpm: 0}", extra)
    text += "".join(f"  - {{name: k{i}, key: {k}, role: member}}\n"
                    for i, k in enumerate(KEYS))
    return text, f"http://127.0.0.1:{port}"


def test_every_public_route_has_a_sample() -> None:
    """A new route must be listed here (and so pass the RPM test) or excluded."""
    cfg, _ = parse_config(edge_yaml("http://127.0.0.1:9/v1", "")[0])
    app = create_app(cfg)
    routes = getattr(app, "app", app).routes
    public = {(r.path, m) for r in routes if r.path not in EXCLUDED
              for m in (r.methods or ()) if m != "HEAD"}
    assert public == set(SAMPLES)


async def _stored(gateway: Any) -> str:
    """A background response stored by the org of the test keys, through
    the session gateway (same bus, same owner bucket; no rate limits)."""
    async with httpx.AsyncClient(timeout=15) as http:
        r = await http.post(gateway.url + "/v1/responses", json={
            "model": "m", "input": "keep", "background": True},
            headers={"authorization": f"Bearer {TEST_KEY}"})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def rate_error_ok(family: str, body: Any) -> bool:
    """The refusal is in the door's own error shape."""
    if family == "anthropic":
        return body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    if family == "gemini":
        return body["error"]["status"] == "RESOURCE_EXHAUSTED"
    if family == "ollama":
        return isinstance(body["error"], str)
    return body["error"]["code"] == "rate_limit_exceeded"


async def test_every_public_route_enforces_rpm(gateway: Any, upstream: Any,
                                               nats_url: str) -> None:
    yaml_text, url = edge_yaml(upstream.base_url,
                               "rate_limits: {default_rpm: 2, default_tpm: 0}")
    async with pipeline(nats_url, yaml_text, backend=False), \
            httpx.AsyncClient(base_url=url, timeout=15) as http:
        failures = []
        for i, ((route, method), (path, query, family, body)) in enumerate(CASES):
            statuses, refusals = [], []
            for _ in range(5):
                target = path.replace("{rid}", await _stored(gateway)) \
                    if "{rid}" in path else path
                r = await http.request(method, target, params=query, json=body,
                                       headers=key_headers(family, KEYS[i]))
                statuses.append(r.status_code)
                if r.status_code == 429:
                    refusals.append(r)
            ok = sorted(statuses) == [200, 200, 429, 429, 429] and all(
                r.headers.get("retry-after", "").isdigit()
                and r.headers.get("x-ratelimit-limit-requests") == "2"
                and r.headers.get("x-ratelimit-remaining-requests") == "0"
                and rate_error_ok(family, r.json()) for r in refusals)
            if not ok:
                failures.append((method, route, path, body and body.get("model"), statuses,
                                 refusals[0].text if refusals else ""))
        assert not failures


async def test_tpm_on_a_translated_native_door(gateway: Any, upstream: Any,
                                               nats_url: str) -> None:
    """/v1/messages onto an OpenAI target: a max_tokens above the TPM limit
    takes the whole bucket (capped) while it runs; the next is refused."""
    yaml_text, url = edge_yaml(upstream.base_url,
                               "rate_limits: {default_rpm: 0, default_tpm: 1000}")
    headers = key_headers("anthropic", KEYS[0])
    async with pipeline(nats_url, yaml_text, backend=False), \
            httpx.AsyncClient(base_url=url, timeout=15) as http:
        slow = asyncio.create_task(http.post("/v1/messages", headers=headers, json={
            "model": "slow-start", "max_tokens": 50_000,
            "messages": [{"role": "user", "content": "hi"}]}))
        await asyncio.sleep(0.4)  # admitted; the upstream answers after 1.2 s
        r = await http.post("/v1/messages", headers=headers, json={"model": "claude", **MSG})
        assert r.status_code == 429, r.text
        assert r.json()["error"]["type"] == "rate_limit_error"
        assert r.headers["x-ratelimit-limit-tokens"] == "1000"
        assert int(r.headers["x-ratelimit-remaining-tokens"]) < 50  # refilling slowly
        assert int(r.headers["retry-after"]) >= 1
        assert (await slow).status_code == 200
        # Settled with the real (small) usage: tokens are back.
        r = await http.post("/v1/messages", headers=headers, json={"model": "claude", **MSG})
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("family", ["anthropic", "ollama"])
async def test_native_tpm_refusal_when_the_bucket_is_short(
        gateway: Any, upstream: Any, nats_url: str, family: str) -> None:
    """The door's estimate reads its API's own max-tokens field."""
    yaml_text, url = edge_yaml(upstream.base_url,
                               "rate_limits: {default_rpm: 0, default_tpm: 1000}")
    headers = key_headers(family, KEYS[1])
    msgs = [{"role": "user", "content": "hi"}]
    if family == "anthropic":
        path, body = "/v1/messages", {"model": "claude", "max_tokens": 600, "messages": msgs}
    else:
        path, body = "/api/chat", {"model": "llama", "stream": False, "messages": msgs,
                                   "options": {"num_predict": 600}}
    async with pipeline(nats_url, yaml_text, backend=False), \
            httpx.AsyncClient(base_url=url, timeout=15) as http:
        # Two at once: 600 + 600 estimated tokens do not fit in 1000.
        results = await asyncio.gather(*(http.post(path, headers=headers, json=body)
                                         for _ in range(2)))
        assert sorted(r.status_code for r in results) == [200, 429]


async def test_every_public_route_takes_the_steps_in_order(gateway: Any, upstream: Any,
                                                           nats_url: str) -> None:
    """Each request of every route walks the admission steps in the one order
    (``pipeline.ORDER``), authenticates, is admitted by the limits, is
    recorded exactly once (model listings: never), and finishes."""
    yaml_text, url = edge_yaml(upstream.base_url,
                               "rate_limits: {default_rpm: 1000, default_tpm: 0}")
    seen: list[Ticket] = []
    OBSERVERS.append(seen.append)
    try:
        async with pipeline(nats_url, yaml_text, backend=False), \
                httpx.AsyncClient(base_url=url, timeout=15) as http:
            wrong = []
            for i, ((route, method), (path, query, family, body)) in enumerate(CASES):
                target = path.replace("{rid}", await _stored(gateway)) \
                    if "{rid}" in path else path
                before = len(seen)
                r = await http.request(method, target, params=query, json=body,
                                       headers=key_headers(family, KEYS[i]))
                for _ in range(200):  # the bookkeeping after the answer's end
                    if len(seen) > before:
                        break
                    await asyncio.sleep(0.01)
                steps = seen[-1].steps if len(seen) > before else []
                ranks = [ORDER.index(s) for s in steps if s in ORDER]
                ok = (r.status_code == 200 and steps[:1] == ["authenticate"]
                      and "admit" in steps
                      and steps.count("record") == (0 if route in LISTINGS else 1)
                      and steps[-1] == "settled" and len(ranks) == len(steps)
                      and ranks == sorted(ranks))
                if not ok:
                    wrong.append((method, route, r.status_code, steps))
    finally:
        OBSERVERS.remove(seen.append)
    assert not wrong
