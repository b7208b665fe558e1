"""Rate limits and the response cache on real HTTP, NATS and Redis: extra
ingresses (in-process and as separate processes) in front of the session's
test router and workers."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from gandalf_common.bus import connect
from gandalf_common.contract import CACHE_PURGE, CachePurge, encode
from gandalf_ingress.ratelimit import lease
from gateway_harness import UPSTREAM_KEY, free_port, pipeline


def ingress_yaml(port: int, upstream: str, key: str, extra: str = "") -> str:
    # The router and workers are the session gateway's (same subjects, same
    # provider names); only the edge is new.
    return f"""
server:
  addr: "127.0.0.1:{port}"
  write_timeout: 20s
providers:
  - name: primary
    type: openai
    base_url: {upstream}
    api_key: {UPSTREAM_KEY}
routes:
  - model_alias: m
    targets: [{{provider: primary, model: ok}}]
keys:
  - {{name: limited, key: {key}, role: member}}
{extra}
"""


def ingress(nats_url: str, yaml_text: str, _port: int) -> Any:
    """An extra edge in front of the session gateway's router and workers."""
    return pipeline(nats_url, yaml_text, backend=False)


def chat(key: str, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hello"}], **extra}


async def test_two_ingress_processes_share_one_rpm_through_redis(
        gateway: Any, upstream: Any, nats_url: str, redis_url: str, tmp_path: Path) -> None:
    key = "gnd_" + secrets.token_urlsafe(16)  # fresh buckets in the shared Redis
    ports = [free_port(), free_port()]
    procs = []
    for port in ports:
        config = tmp_path / f"ingress-{port}.yaml"
        config.write_text(ingress_yaml(port, upstream.base_url, key, f"""
redis: {{url: "{redis_url}"}}
rate_limits: {{default_rpm: 10, default_tpm: 0, backend: redis}}
cache: {{enabled: false}}
"""))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "gandalf_app.cli", "ingress", "--config", str(config),
             "--log-level", "warning"], env=dict(os.environ, GANDALF_NATS_URL=nats_url)))
    try:
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        async with httpx.AsyncClient(timeout=15) as http:
            for url in urls:
                for _ in range(300):
                    try:
                        if (await http.get(url + "/healthz")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.05)
            auth = {"authorization": f"Bearer {key}"}
            results = await asyncio.gather(*(
                http.post(urls[i % 2] + "/v1/chat/completions", json=chat(key), headers=auth)
                for i in range(30)))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
    statuses = sorted(r.status_code for r in results)
    assert statuses.count(200) == 10 and statuses.count(429) == 20, statuses
    refused = next(r for r in results if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    ok = next(r for r in results if r.status_code == 200)
    assert ok.headers["x-ratelimit-limit-requests"] == "10"


@pytest.mark.parametrize(("policy", "expected"), [("local", 200), ("closed", 503)])
async def test_redis_unreachable_follows_the_policy(gateway: Any, upstream: Any,
                                                    nats_url: str, policy: str,
                                                    expected: int) -> None:
    key = "gnd_" + secrets.token_urlsafe(16)
    port = free_port()
    dead = f"redis://127.0.0.1:{free_port()}/0"
    text = ingress_yaml(port, upstream.base_url, key, f"""
redis: {{url: "{dead}"}}
rate_limits: {{default_rpm: 100, backend: redis, on_redis_failure: {policy}}}
cache: {{enabled: false}}
""")
    async with ingress(nats_url, text, port) as url, httpx.AsyncClient(timeout=15) as http:
        r = await http.post(url + "/v1/chat/completions", json=chat(key),
                            headers={"authorization": f"Bearer {key}"})
    assert r.status_code == expected, r.text


async def test_tpm_headers_and_refusal(gateway: Any, upstream: Any, nats_url: str) -> None:
    key = "gnd_" + secrets.token_urlsafe(16)
    port = free_port()
    text = ingress_yaml(port, upstream.base_url, key, """
rate_limits: {default_rpm: 0, default_tpm: 60}
cache: {enabled: false}
""")
    auth = {"authorization": f"Bearer {key}"}
    async with ingress(nats_url, text, port) as url, httpx.AsyncClient(timeout=15) as http:
        first = await http.post(url + "/v1/chat/completions", headers=auth,
                                json=chat(key, max_tokens=30))
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit-tokens"] == "60"
        # The estimate was settled with the real usage, so room is left; a large
        # estimate (capped at the capacity) then finds the bucket short.
        second = await http.post(url + "/v1/chat/completions", headers=auth,
                                 json=chat(key, max_tokens=5000))
    assert second.status_code == 429
    assert "x-ratelimit-remaining-tokens" in second.headers


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_cache_hit_miss_no_cache_purge_and_stream(
        gateway: Any, upstream: Any, nats_url: str, redis_url: str, backend: str) -> None:
    key = "gnd_" + secrets.token_urlsafe(16)
    port = free_port()
    text = ingress_yaml(port, upstream.base_url, key, f"""
redis: {{url: "{redis_url}"}}
rate_limits: {{default_rpm: 0, default_tpm: 0}}
cache: {{enabled: true, backend: {backend}, default_ttl: 60s}}
""")
    auth = {"authorization": f"Bearer {key}"}
    body = chat(key, temperature=0, messages=[{"role": "user",
                                              "content": f"cache me {secrets.token_hex(4)}"}])

    def calls() -> int:
        return len(upstream.requests_to("/chat/completions"))

    async with ingress(nats_url, text, port) as url, httpx.AsyncClient(timeout=15) as http:
        post = url + "/v1/chat/completions"
        miss = await http.post(post, json=body, headers=auth)
        hit = await http.post(post, json=body, headers=auth)
        assert (miss.headers["x-gandalf-cache"], hit.headers["x-gandalf-cache"]) == (
            "miss", "hit")
        assert hit.content == miss.content and calls() == 1
        forced = await http.post(post, json=body, headers={**auth,
                                                           "cache-control": "no-cache"})
        assert forced.headers["x-gandalf-cache"] == "miss" and calls() == 2
        streamed = await http.post(post, json={**body, "stream": True}, headers=auth)
        assert streamed.headers["x-gandalf-cache"] == "hit" and calls() == 2
        assert "data: [DONE]" in streamed.text
        nc = await connect(nats_url, "purge-test")
        await nc.publish(CACHE_PURGE, encode(CachePurge(model="m")))
        await nc.flush()
        await nc.close()
        await asyncio.sleep(0.2)
        after = await http.post(post, json=body, headers=auth)
        assert after.headers["x-gandalf-cache"] == "miss" and calls() == 3
        sampled = await http.post(post, json=chat(key, temperature=1.0), headers=auth)
        assert "x-gandalf-cache" not in sampled.headers  # not deterministic: never cached


async def test_redis_killed_mid_test_follows_the_policy(
        gateway: Any, upstream: Any, nats_url: str, tmp_path: Path) -> None:
    """A Redis of the test's own, killed while two ingresses use it: `local`
    keeps serving from a per-process limiter, `closed` answers 503 once its
    lease (tokens already taken from Redis) is spent."""
    import shutil

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    rport = free_port()
    server = subprocess.Popen([binary, "--port", str(rport), "--save", "", "--appendonly",
                               "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{rport}/0"
    key = "gnd_" + secrets.token_urlsafe(16)
    auth = {"authorization": f"Bearer {key}"}
    ports = {"local": free_port(), "closed": free_port()}
    try:
        for _ in range(100):  # wait for it to listen
            try:
                _r, w = await asyncio.open_connection("127.0.0.1", rport)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        texts = {policy: ingress_yaml(port, upstream.base_url, key, f"""
redis: {{url: "{url}"}}
rate_limits: {{default_rpm: 1000, backend: redis, on_redis_failure: {policy}}}
cache: {{enabled: false}}
""") for policy, port in ports.items()}
        async with ingress(nats_url, texts["local"], ports["local"]) as local, \
                ingress(nats_url, texts["closed"], ports["closed"]) as closed, \
                httpx.AsyncClient(timeout=15) as http:
            for base in (local, closed):
                r = await http.post(base + "/v1/chat/completions", json=chat(key), headers=auth)
                assert r.status_code == 200, r.text
            server.kill()
            server.wait(5)
            r_local = await http.post(local + "/v1/chat/completions", json=chat(key),
                                      headers=auth)
            # What the closed ingress had leased from Redis before it died (at most one
            # lease) is still admitted; then it refuses.
            for _ in range(lease.MAX_REQUESTS + 1):
                r_closed = await http.post(closed + "/v1/chat/completions", json=chat(key),
                                           headers=auth)
                if r_closed.status_code != 200:
                    break
        assert r_local.status_code == 200
        assert r_closed.status_code == 503
        assert r_closed.json()["error"]["code"] == "rate_limiter_unavailable"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(5)
