"""The universal API (openai SDK) on every provider type through the
pipeline, and Gemini's native API: translation both ways, streaming, tools,
embeddings routing, errors."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from gateway_harness import TEST_KEY, UPSTREAM_KEY

WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]
CHAT_ALIASES = ["claude", "claude-bedrock", "claude-vertex", "gem", "gem-vertex", "llama"]


def client(gw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url, api_key=TEST_KEY, max_retries=0,
                              timeout=15)


def calls(upstream: Any) -> list[Any]:
    return [r for r in upstream.requests if r.path != "/oauth2/token"]


@pytest.mark.parametrize("alias", CHAT_ALIASES)
async def test_chat_and_stream(gateway: Any, upstream: Any, alias: str) -> None:
    c = client(gateway)
    whole = await c.chat.completions.create(
        model=alias, messages=[{"role": "system", "content": "one"},
                               {"role": "system", "content": "two"},
                               {"role": "user", "content": "hello provider"}])
    assert whole.choices[0].message.content
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None and whole.usage.prompt_tokens > 0
    assert whole.created > 0
    stream = await c.chat.completions.create(
        model=alias, messages=[{"role": "user", "content": "stream provider"}], stream=True,
        stream_options={"include_usage": True})
    text, usage, finish = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    assert text and finish == "stop"
    assert usage is not None and usage.completion_tokens > 0


@pytest.mark.parametrize("alias", CHAT_ALIASES)
async def test_tool_call_and_result(gateway: Any, upstream: Any, alias: str) -> None:
    c = client(gateway)
    question = {"role": "user", "content": "weather in Paris?"}
    first = await c.chat.completions.create(model=alias, messages=[question], tools=WEATHER)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.id and call.function.name == "get_weather"
    assert "city" in json.loads(call.function.arguments)
    second = await c.chat.completions.create(model=alias, tools=WEATHER, messages=[
        question, choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'}])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content


async def test_streamed_tool_call_has_id_and_name_first(gateway: Any, upstream: Any) -> None:
    stream = await client(gateway).chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "weather?"}], tools=WEATHER,
        stream=True)
    deltas = [c.choices[0].delta.tool_calls async for c in stream
              if c.choices and c.choices[0].delta.tool_calls]
    first = deltas[0][0]
    assert first.id and first.function.name == "get_weather"
    args = "".join(d[0].function.arguments or "" for d in deltas)
    assert "city" in json.loads(args)


async def test_provider_errors_keep_status_and_message(gateway: Any, upstream: Any) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client(gateway).chat.completions.create(
            model="claude", messages=[{"role": "user", "content": "x"}], n=2)
    assert info.value.status_code == 400
    assert not calls(upstream)  # refused by the translation, before any upstream call


async def test_embeddings_skip_a_provider_without_them(gateway: Any, upstream: Any) -> None:
    result = await client(gateway).embeddings.create(model="emb-claude-first",
                                                     input=["a", "b", "c"])
    assert len(result.data) == 3 and result.usage.prompt_tokens > 0
    assert [r.path for r in calls(upstream)] == [
        "/v1beta/models/text-embedding-004:batchEmbedContents"]


async def test_embeddings_on_a_chat_only_route_is_400(gateway: Any, upstream: Any) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client(gateway).embeddings.create(model="claude", input="x")
    assert "unsupported" in str(info.value.body)
    assert not calls(upstream)


async def test_gemini_native_generate_and_stream(gateway: Any, upstream: Any) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "hello native gemini"}]}]}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as http:
        whole = await http.post("/v1beta/models/gem:generateContent", json=body,
                                headers={"x-goog-api-key": TEST_KEY})
        streamed = await http.post(f"/v1beta/models/gem-vertex:streamGenerateContent"
                                   f"?alt=sse&key={TEST_KEY}", json=body)
        listed = await http.get("/v1beta/models", headers={"x-goog-api-key": TEST_KEY})
    assert whole.status_code == 200, whole.text
    assert whole.json()["candidates"][0]["content"]["parts"][0]["text"]
    assert streamed.status_code == 200 and streamed.text.count("data: ") >= 2
    direct, vertex = calls(upstream)
    assert direct.path == "/v1beta/models/gemini-2.0-flash:generateContent"
    assert direct.headers["x-goog-api-key"] == UPSTREAM_KEY
    assert vertex.path == ("/v1/projects/proj/locations/us-central1/publishers/google/models/"
                           "gemini-2.0-flash:streamGenerateContent")
    assert vertex.query == {"alt": "sse"}  # the client's key= never leaves the gateway
    assert vertex.headers["authorization"].startswith("Bearer ya29.")
    assert "models/gem" in {m["name"] for m in listed.json()["models"]}
