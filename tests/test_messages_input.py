"""Anthropic Messages as an input format: the official ``anthropic`` SDK
against ``/v1/messages`` on routes whose targets are not Anthropic (an
OpenAI-compatible server, Ollama): Messages -> OpenAI -> target and back."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import pytest

from gateway_harness import TEST_KEY, VIEWER_KEY

TOOLS = [{"name": "lookup", "description": "Look something up",
          "input_schema": {"type": "object", "properties": {"query": {"type": "string"}},
                           "required": ["query"]}}]
ALIASES = ["claude-via-openai", "claude-via-ollama"]


def claude(gw: Any, key: str = TEST_KEY) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0, timeout=15)


def upstream_calls(upstream: Any) -> list[Any]:
    return [r for r in upstream.requests if r.path in ("/v1/chat/completions", "/api/chat")]


@pytest.mark.parametrize("alias", ALIASES)
async def test_messages_create(gateway: Any, upstream: Any, alias: str) -> None:
    message = await claude(gateway).messages.create(
        model=alias, max_tokens=100, system="be brief",
        messages=[{"role": "user", "content": "hello claude"}])
    assert message.model == alias and message.stop_reason == "end_turn"
    assert message.content[0].type == "text"
    assert message.content[0].text.endswith("hello claude")
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    (call,) = upstream_calls(upstream)
    assert call.body["messages"][0] == {"role": "system", "content": "be brief"}


@pytest.mark.parametrize("alias", ALIASES)
async def test_messages_stream(gateway: Any, upstream: Any, alias: str) -> None:
    async with claude(gateway).messages.stream(
            model=alias, max_tokens=100,
            messages=[{"role": "user", "content": "stream to me"}]) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text.endswith("stream to me")
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0


@pytest.mark.parametrize("alias", ALIASES)
async def test_tool_use_round_trip(gateway: Any, upstream: Any, alias: str) -> None:
    client = claude(gateway)
    question = {"role": "user", "content": "what is the weather"}
    first = await client.messages.create(model=alias, max_tokens=100, tools=TOOLS,
                                         messages=[question])
    assert first.stop_reason == "tool_use"
    (use,) = [b for b in first.content if b.type == "tool_use"]
    assert use.name == "lookup" and use.input == {"query": "mock"}
    second = await client.messages.create(
        model=alias, max_tokens=100, tools=TOOLS,
        messages=[question, {"role": "assistant", "content": first.to_param()["content"]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                "content": "sunny and warm"}]}])
    assert second.stop_reason == "end_turn"
    assert second.content[0].text.endswith("sunny and warm")
    # The target saw OpenAI-style tool history.
    sent = upstream_calls(upstream)[-1].body["messages"]
    assert sent[-1]["role"] == "tool"


async def test_tool_use_streamed(gateway: Any, upstream: Any) -> None:
    async with claude(gateway).messages.stream(
            model="claude-via-openai", max_tokens=100, tools=TOOLS,
            messages=[{"role": "user", "content": "use the tool"}]) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    (use,) = [b for b in final.content if b.type == "tool_use"]
    assert use.input == {"query": "mock"} and use.id


async def test_errors_are_anthropic_shaped(gateway: Any, upstream: Any) -> None:
    with pytest.raises(anthropic.PermissionDeniedError):
        await claude(gateway, VIEWER_KEY).messages.create(
            model="claude-via-openai", max_tokens=10, messages=[{"role": "user",
                                                                 "content": "x"}])
    with pytest.raises(anthropic.NotFoundError):
        await claude(gateway).messages.create(
            model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.post("/v1/messages", headers={"x-api-key": TEST_KEY}, json={
            "model": "claude-via-openai", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400
    assert r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in r.json()["error"]["message"]
    assert not upstream_calls(upstream)
