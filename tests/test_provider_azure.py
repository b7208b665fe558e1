"""Azure OpenAI through the OpenAI adapter: deployment URLs, api-version,
the ``api-key`` header, Entra ID client-credentials tokens, and the native
deployments API, against the mock upstream."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from gandalf_common.config import ProviderConfig, parse_config
from gandalf_common.contract import KIND_AZURE, NativeCall
from gandalf_workers.providers.base import UpstreamFailure
from gandalf_workers.providers.registry import build_provider
from gateway_harness import UPSTREAM_KEY
from mock_cloud import MOCK_ENTRA_CLIENT

CHAT = {"model": "x", "messages": [{"role": "user", "content": "hello there"}]}


def azure(upstream: Any, extra: str = "", *, key: bool = True) -> ProviderConfig:
    text = (f"providers:\n  - name: az\n    type: openai\n    hosting: azure\n"
            f"    base_url: {upstream.url}\n    timeout_ms: 5000\n"
            + (f"    api_key: {UPSTREAM_KEY}\n" if key else "") + extra)
    cfg, _ = parse_config(text, env={})
    return cfg.providers[0]


async def test_chat_goes_to_the_deployment_with_api_version_and_api_key(upstream: Any) -> None:
    provider = build_provider(azure(upstream, "    model_map: {gpt-4o: prod-gpt4o}\n"))
    try:
        result = await provider.complete("chat", {**CHAT, "model": "gpt-4o"}, ttfb_timeout=5)
    finally:
        await provider.aclose()
    record = upstream.requests[-1]
    assert record.path == "/openai/deployments/prod-gpt4o/chat/completions"
    assert record.query == {"api-version": "2024-10-21"}
    assert record.headers["api-key"] == UPSTREAM_KEY
    assert "authorization" not in record.headers
    body = msgspec.json.decode(result.body)
    assert body["object"] == "chat.completion" and result.usage is not None
    assert result.usage.total_tokens > 0


async def test_stream_and_embeddings(upstream: Any) -> None:
    provider = build_provider(azure(upstream))
    try:
        items = [item async for item in provider.stream(
            {**CHAT, "model": "dep", "stream": True, "stream_options": {"include_usage": True}},
            ttfb_timeout=5)]
        embedded = await provider.complete("embed", {"model": "emb-dep", "input": ["a", "b"]},
                                           ttfb_timeout=5)
    finally:
        await provider.aclose()
    assert items[-1].usage is not None and items[-1].usage_only
    text = "".join(msgspec.json.decode(i.data)["choices"][0]["delta"].get("content") or ""
                   for i in items if i.data and not i.usage_only)
    assert text.strip()
    assert [r.path for r in upstream.requests] == [
        "/openai/deployments/dep/chat/completions", "/openai/deployments/emb-dep/embeddings"]
    assert len(msgspec.json.decode(embedded.body)["data"]) == 2


async def test_wrong_api_version_is_the_upstreams_404(upstream: Any) -> None:
    provider = build_provider(azure(upstream, "    api_version: 1999-01-01\n"))
    try:
        with pytest.raises(UpstreamFailure) as info:
            await provider.complete("chat", {**CHAT, "model": "dep"}, ttfb_timeout=5)
    finally:
        await provider.aclose()
    assert info.value.status == 404 and not info.value.retryable


async def test_entra_id_token_is_fetched_once_and_sent_as_bearer(upstream: Any) -> None:
    client_id, secret = MOCK_ENTRA_CLIENT
    extra = (f"    auth: {{type: azure_entra, tenant_id: contoso, client_id: {client_id},\n"
             f"           client_secret: {secret}, authority_host: '{upstream.url}'}}\n")
    upstream.token_requests.clear()
    provider = build_provider(azure(upstream, extra, key=False))
    try:
        for _ in range(3):
            await provider.complete("chat", {**CHAT, "model": "dep"}, ttfb_timeout=5)
    finally:
        await provider.aclose()
    entra = [t for t in upstream.token_requests if t["kind"] == "entra"]
    assert len(entra) == 1  # cached until shortly before expiry
    assert entra[0]["tenant"] == "contoso"
    assert entra[0]["scope"] == "https://cognitiveservices.azure.com/.default"
    chats = upstream.requests_to_prefix("/openai/deployments/")
    assert len(chats) == 3
    for record in chats:
        assert record.headers["authorization"].startswith("Bearer entra.")
        assert "api-key" not in record.headers


async def test_entra_refusal_is_an_auth_failure_without_the_secret(upstream: Any) -> None:
    extra = (f"    auth: {{type: azure_entra, tenant_id: t, client_id: mock-client-id,\n"
             f"           client_secret: wrong-secret-value, authority_host: '{upstream.url}'}}\n")
    provider = build_provider(azure(upstream, extra, key=False))
    try:
        with pytest.raises(UpstreamFailure) as info:
            await provider.complete("chat", {**CHAT, "model": "dep"}, ttfb_timeout=5)
    finally:
        await provider.aclose()
    assert info.value.code == "upstream_auth_error" and info.value.status == 502
    assert "wrong-secret-value" not in info.value.message
    assert not upstream.requests_to_prefix("/openai/deployments/")


async def test_native_deployment_call_is_forwarded_with_usage(upstream: Any) -> None:
    provider = build_provider(azure(upstream))
    body = msgspec.json.encode({**CHAT, "model": "alias", "stream": True,
                                "stream_options": {"include_usage": True}, "seed": 7})
    try:
        resp = await provider.native(NativeCall(kind=KIND_AZURE, action="chat/completions"),
                                     body, "dep", stream=True, ttfb_timeout=5)
        data = b"".join([chunk async for chunk in resp.body])
        await resp.close()
    finally:
        await provider.aclose()
    record = upstream.requests[-1]
    assert record.path == "/openai/deployments/dep/chat/completions"
    assert record.raw_body == body  # byte for byte: Azure takes the deployment from the URL
    assert resp.status == 200 and data.endswith(b"data: [DONE]\n\n")
    assert resp.usage is not None and resp.usage.completion_tokens > 0
