"""The OpenAI adapter's own accounting, against the mock upstream."""

from __future__ import annotations

from typing import Any

from gandalf_common.config import ProviderConfig
from gandalf_workers.providers.registry import build_provider
from gateway_harness import UPSTREAM_KEY

CHAT = {"messages": [{"role": "user", "content": "one two three four five six"}]}


async def test_cached_prompt_tokens_are_counted(upstream: Any) -> None:
    provider = build_provider(ProviderConfig(name="o", type="openai", base_url=upstream.base_url,
                                             api_key=UPSTREAM_KEY, timeout_ms=5000))
    try:
        whole = await provider.complete("chat", {**CHAT, "model": "gpt-cached"}, ttfb_timeout=5)
        items = [i async for i in provider.stream(
            {**CHAT, "model": "gpt-cached", "stream": True,
             "stream_options": {"include_usage": True}}, ttfb_timeout=5)]
    finally:
        await provider.aclose()
    assert whole.usage is not None and whole.usage.prompt_tokens > 1
    assert whole.usage.cached_tokens == whole.usage.prompt_tokens // 2
    final = [i.usage for i in items if i.usage is not None]
    assert final and final[-1].cached_tokens == whole.usage.cached_tokens


async def test_refused_connection_is_unreachable_not_a_timeout() -> None:
    from gandalf_workers.providers.base import UpstreamFailure
    from gateway_harness import free_port

    provider = build_provider(ProviderConfig(
        name="o", type="openai", base_url=f"http://127.0.0.1:{free_port()}/v1",
        timeout_ms=5000))
    try:
        try:
            await provider.complete("chat", {**CHAT, "model": "m"}, ttfb_timeout=5)
        except UpstreamFailure as exc:
            failure = exc
    finally:
        await provider.aclose()
    assert failure.status == 502 and failure.code == "upstream_unreachable"
    assert failure.retryable
