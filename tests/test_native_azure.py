"""Azure-style native API through the pipeline: the official openai SDK's
``AzureOpenAI`` client -> ingress ``/openai/deployments/*`` -> router ->
worker -> the Azure provider's deployment on the mock. Also the ingress
rules shared by every native API (auth headers, errors, failover)."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from gateway_harness import TEST_KEY, UPSTREAM_KEY, VIEWER_KEY

API_VERSION = "2024-10-21"


def azure_client(gw: Any, key: str = TEST_KEY) -> openai.AsyncAzureOpenAI:
    return openai.AsyncAzureOpenAI(azure_endpoint=gw.url, api_key=key, api_version=API_VERSION,
                                   max_retries=0, timeout=15)


def deployments(upstream: Any) -> list[Any]:
    return upstream.requests_to_prefix("/openai/deployments/")


async def test_azure_sdk_chat_through_the_gateway(gateway: Any, upstream: Any) -> None:
    completion = await azure_client(gateway).chat.completions.create(
        model="azure-gpt", messages=[{"role": "user", "content": "hello azure"}])
    assert completion.choices[0].message.content == "mock reply to: hello azure"
    (record,) = deployments(upstream)
    # The alias became the target deployment; the gateway key stayed at the edge.
    assert record.path == "/openai/deployments/dep-4o/chat/completions"
    assert record.query["api-version"] == API_VERSION
    assert record.headers["api-key"] == UPSTREAM_KEY
    assert TEST_KEY not in str(record.headers)
    # Azure takes the deployment from the URL: the body goes out byte for byte.
    assert record.body["model"] == "azure-gpt"


async def test_azure_sdk_stream_is_passed_through(gateway: Any, upstream: Any) -> None:
    stream = await azure_client(gateway).chat.completions.create(
        model="azure-gpt", messages=[{"role": "user", "content": "stream please"}], stream=True,
        stream_options={"include_usage": True})
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
    assert text == "mock reply to: stream please"
    assert usage is not None and usage.completion_tokens > 0


async def test_azure_embeddings(gateway: Any, upstream: Any) -> None:
    result = await azure_client(gateway).embeddings.create(model="azure-gpt", input=["a", "b"])
    assert len(result.data) == 2
    assert deployments(upstream)[0].path == "/openai/deployments/dep-4o/embeddings"


async def test_native_failover_before_the_first_byte(gateway: Any, upstream: Any) -> None:
    completion = await azure_client(gateway).chat.completions.create(
        model="azure-failover", messages=[{"role": "user", "content": "x"}])
    assert completion.choices
    assert [r.path.split("/")[3] for r in deployments(upstream)] == ["fail-503",
                                                                      "dep-after-503"]


async def test_native_client_error_is_the_providers_own_and_not_failed_over(
        gateway: Any, upstream: Any) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await azure_client(gateway).chat.completions.create(
            model="azure-bad", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 400
    assert len(deployments(upstream)) == 1


@pytest.mark.parametrize(("headers", "status"), [
    ({}, 401),
    ({"api-key": "gnd_not_a_key"}, 401),
    ({"api-key": VIEWER_KEY}, 403),
    ({"authorization": f"Bearer {TEST_KEY}", "api-key": "ignored"}, 404),
])
async def test_native_auth_headers(gateway: Any, upstream: Any, headers: dict[str, str],
                                   status: int) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        # An unknown alias: authenticated callers get 404, others 401/403 first.
        r = await http.post("/openai/deployments/no-such-alias/chat/completions",
                            headers=headers, json={"messages": [{"role": "user",
                                                                 "content": "x"}]})
    assert r.status_code == status
    assert r.json()["error"]["message"]
    assert not deployments(upstream)


@pytest.mark.parametrize(("path", "body", "status"), [
    ("/openai/deployments/azure-gpt/chat/completions", b"{not json", 400),
    ("/openai/deployments/azure-gpt/chat/completions", b"[1, 2]", 400),
    ("/openai/deployments/bad%20name/chat/completions", b"{}", 400),
    ("/v1beta/models/azure-gpt:generateContent", b"{}", 400),  # no Gemini target there
])
async def test_native_bad_requests_are_400(gateway: Any, upstream: Any, path: str,
                                           body: bytes, status: int) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.post(path, content=body, headers={"api-key": TEST_KEY,
                                                         "x-goog-api-key": TEST_KEY})
    assert r.status_code == status, r.text
    assert "error" in r.json()
    assert not deployments(upstream)
