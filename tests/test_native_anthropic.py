"""``/v1/messages`` on Anthropic targets through the pipeline, with the
official anthropic SDK: direct (passed through byte for byte), Bedrock
(binary event stream re-framed as SSE) and Vertex, plus failover across
hostings and from Anthropic to an OpenAI target (translated)."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx

from gateway_harness import TEST_KEY, UPSTREAM_KEY

TOOLS = [{"name": "lookup", "description": "Look something up",
          "input_schema": {"type": "object", "properties": {"query": {"type": "string"}},
                           "required": ["query"]}}]


def claude(gw: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gw.url, api_key=TEST_KEY, max_retries=0,
                                    timeout=15)


def calls(upstream: Any) -> list[Any]:
    return [r for r in upstream.requests if r.path != "/oauth2/token"]


async def test_direct_passthrough(gateway: Any, upstream: Any) -> None:
    message = await claude(gateway).messages.create(
        model="claude", max_tokens=50, messages=[{"role": "user", "content": "hi there"}],
        extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"})
    assert message.content[0].text and message.usage.output_tokens > 0
    (record,) = calls(upstream)
    assert record.path == "/v1/messages"
    assert record.body["model"] == "claude-sonnet-4-5"
    assert record.headers["x-api-key"] == UPSTREAM_KEY
    assert record.headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert TEST_KEY not in str(record.headers)


async def test_direct_stream_is_byte_for_byte(gateway: Any, upstream: Any) -> None:
    body = {"model": "claude", "max_tokens": 50, "stream": True,
            "messages": [{"role": "user", "content": "stream it"}]}
    async with httpx.AsyncClient(timeout=15) as http:
        through = await http.post(gateway.url + "/v1/messages", json=body,
                                  headers={"x-api-key": TEST_KEY})
        direct = await http.post(upstream.url + "/v1/messages",
                                 json={**body, "model": "claude-sonnet-4-5"},
                                 headers={"x-api-key": UPSTREAM_KEY,
                                          "anthropic-version": "2023-06-01"})
    assert through.status_code == 200
    assert through.headers["content-type"].startswith("text/event-stream")

    def without_ids(text: str) -> str:  # the mock numbers its messages
        import re
        return re.sub(r'"msg_[A-Za-z0-9_]+"', '"msg"', text)

    assert without_ids(through.text) == without_ids(direct.text)


async def test_bedrock_stream_and_tools_with_the_sdk(gateway: Any, upstream: Any) -> None:
    client = claude(gateway)
    async with client.messages.stream(
            model="claude-bedrock", max_tokens=50,
            messages=[{"role": "user", "content": "from bedrock"}]) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text and final.usage.output_tokens > 0
    used = await client.messages.create(model="claude-bedrock", max_tokens=50, tools=TOOLS,
                                        messages=[{"role": "user", "content": "look up"}])
    assert used.stop_reason == "tool_use"
    paths = [r.path for r in calls(upstream)]
    model_id = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
    assert paths == [f"/model/{model_id}/invoke-with-response-stream",
                     f"/model/{model_id}/invoke"]
    for record in calls(upstream):
        assert record.headers["authorization"].startswith("AWS4-HMAC-SHA256 ")
        assert "model" not in record.body


async def test_vertex_stream(gateway: Any, upstream: Any) -> None:
    async with claude(gateway).messages.stream(
            model="claude-vertex", max_tokens=50,
            messages=[{"role": "user", "content": "from vertex"}]) as stream:
        final = await stream.get_final_message()
    assert final.content[0].type == "text"
    (record,) = calls(upstream)
    assert record.path == ("/v1/projects/proj/locations/us-east5/publishers/anthropic/models/"
                           "claude-sonnet-4-5:streamRawPredict")
    assert record.body["anthropic_version"] == "vertex-2023-10-16"


async def test_failover_across_hostings_and_types(gateway: Any, upstream: Any) -> None:
    client = claude(gateway)
    first = await client.messages.create(model="claude-failover", max_tokens=50,
                                         messages=[{"role": "user", "content": "x"}])
    assert first.content[0].text
    second = await client.messages.create(model="claude-then-gpt", max_tokens=50,
                                          messages=[{"role": "user", "content": "gpt please"}])
    assert second.content[0].text.endswith("gpt please")
    paths = [r.path for r in calls(upstream)]
    assert paths[0] == "/v1/messages" and paths[1].startswith("/model/claude-after-529")
    assert paths[2:] == ["/v1/messages", "/v1/chat/completions"]


async def test_count_tokens_and_models_list(gateway: Any, upstream: Any) -> None:
    client = claude(gateway)
    counted = await client.messages.count_tokens(
        model="claude", messages=[{"role": "user", "content": "count these tokens"}])
    assert counted.input_tokens > 0
    page = await client.models.list()
    assert "claude" in [m.id for m in page.data]
