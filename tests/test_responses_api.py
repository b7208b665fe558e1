"""The Responses API through the gateway, with the official openai SDK as the
client: forwarded natively to OpenAI-type targets (stored responses bound to
their org and instance), translated to chat for Anthropic and Gemini ones
(JSON and the Responses event stream)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from gateway_harness import OTHER_ORG_KEY, TEST_KEY, UPSTREAM_KEY

TOOLS = [{"type": "function", "name": "lookup", "description": "Look something up",
          "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                         "required": ["query"]}}]
SCHEMA = {"type": "json_schema", "name": "answer", "strict": True,
          "schema": {"type": "object", "properties": {"city": {"type": "string"}},
                     "required": ["city"], "additionalProperties": False}}
#: Alias -> the upstream path its target's request goes to.
TARGETS = {"m": "/v1/responses", "claude": "/v1/messages",
           "gem": "/v1beta/models/gemini-2.0-flash:generateContent"}


def client(gw: Any, key: str = TEST_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=15)


def calls(upstream: Any) -> list[Any]:
    return [r for r in upstream.requests if r.path != "/oauth2/token"]


@pytest.mark.parametrize("alias", [*TARGETS, "llama"])
async def test_plain(gateway: Any, upstream: Any, alias: str) -> None:
    response = await client(gateway).responses.create(
        model=alias, input="hello there", instructions="be brief", max_output_tokens=64)
    assert response.status == "completed"
    assert response.output_text.endswith("hello there")
    assert response.usage is not None and response.usage.input_tokens > 0
    assert response.usage.output_tokens > 0
    (record,) = calls(upstream)
    if alias == "m":  # forwarded: the body unchanged but for the model
        assert record.path == "/v1/responses"
        assert record.body == {"model": "ok", "input": "hello there",
                               "instructions": "be brief", "max_output_tokens": 64}
        assert record.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    elif alias == "llama":
        assert record.path == "/api/chat"
    else:
        assert record.path.startswith(TARGETS[alias].rsplit(":", 1)[0])
    assert TEST_KEY not in str(record.headers)


@pytest.mark.parametrize("alias", [*TARGETS, "llama"])
async def test_streaming(gateway: Any, upstream: Any, alias: str) -> None:
    events = []
    async with client(gateway).responses.stream(model=alias, input="stream this") as stream:
        async for event in stream:
            events.append(event.type)
        final = await stream.get_final_response()
    assert events[:2] == ["response.created", "response.in_progress"]
    assert events[-1] == "response.completed"
    for kind in ("response.output_item.added", "response.content_part.added",
                 "response.output_text.delta", "response.output_text.done",
                 "response.output_item.done"):
        assert kind in events, (kind, events)
    assert final.output_text.endswith("stream this")
    assert final.usage is not None and final.usage.output_tokens > 0


@pytest.mark.parametrize("alias", list(TARGETS))
async def test_tool_round_trip(gateway: Any, upstream: Any, alias: str) -> None:
    api = client(gateway)
    first = await api.responses.create(model=alias, input="look up the weather",
                                       tools=TOOLS)  # type: ignore[arg-type]
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "lookup" and json.loads(call.arguments)["query"]
    second = await api.responses.create(model=alias, tools=TOOLS, input=[  # type: ignore[arg-type]
        {"role": "user", "content": "look up the weather"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name,
         "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny 21C"}])
    assert "sunny 21C" in second.output_text, second.output_text


@pytest.mark.parametrize("alias", list(TARGETS))
async def test_tool_call_streamed(gateway: Any, upstream: Any, alias: str) -> None:
    async with client(gateway).responses.stream(
            model=alias, input="look up the weather", tools=TOOLS) as stream:  # type: ignore[arg-type]
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    assert "response.function_call_arguments.done" in kinds
    (call,) = [item for item in final.output if item.type == "function_call"]
    assert call.name == "lookup" and json.loads(call.arguments)["query"]


@pytest.mark.parametrize("alias", list(TARGETS))
async def test_json_schema_format(gateway: Any, upstream: Any, alias: str) -> None:
    response = await client(gateway).responses.create(
        model=alias, input="which city?", text={"format": SCHEMA})  # type: ignore[typeddict-item]
    (record,) = calls(upstream)
    if alias == "m":
        assert record.body["text"] == {"format": SCHEMA}
        assert json.loads(response.output_text) == {"city": "mock"}
    elif alias == "claude":  # Anthropic: a forced tool stands in for the schema
        assert record.body["tools"][0]["input_schema"]["required"] == ["city"]
    else:
        config = record.body["generationConfig"]
        assert config["responseMimeType"] == "application/json"
    assert response.status == "completed"


@pytest.mark.parametrize("alias", ["claude", "gem"])
async def test_unsupported_field_is_a_400_naming_it(gateway: Any, upstream: Any,
                                                    alias: str) -> None:
    api = client(gateway)
    with pytest.raises(openai.BadRequestError) as info:
        await api.responses.create(model=alias, input="hi", include=["reasoning.encrypted_content"])
    assert "include" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        await api.responses.create(model=alias, input="hi",
                                   tools=[{"type": "web_search"}])  # type: ignore[list-item]
    assert "tools[0].type" in info.value.message
    assert calls(upstream) == []


async def test_bounds_and_bad_input(gateway: Any, upstream: Any) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=15,
                                 headers={"authorization": f"Bearer {TEST_KEY}"}) as http:
        many = [{"role": "user", "content": "x"}] * 2049
        r = await http.post("/v1/responses", json={"model": "m", "input": many})
        assert r.status_code == 400 and r.json()["error"]["param"] == "input"
        r = await http.post("/v1/responses", json={"model": "m"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "input"
        r = await http.post("/v1/responses", content=b"{not json")
        assert r.status_code == 400
        r = await http.get("/v1/responses/bad%20id")
        assert r.status_code == 400
    assert calls(upstream) == []


async def test_retrieve_items_delete_and_other_org(gateway: Any, upstream: Any) -> None:
    api = client(gateway)
    created = await api.responses.create(model="m", input="remember me")
    got = await api.responses.retrieve(created.id)
    assert got.id == created.id and got.output_text == created.output_text
    items = await api.responses.input_items.list(created.id)
    assert [item.type for item in items.data] == ["message"]
    # Another org: as if the response did not exist.
    with pytest.raises(openai.NotFoundError):
        await client(gateway, OTHER_ORG_KEY).responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        await client(gateway, OTHER_ORG_KEY).responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        await client(gateway, OTHER_ORG_KEY).responses.create(
            model="m", input="continue", previous_response_id=created.id)
    # The same org continues the conversation on the instance that stored it.
    follow = await api.responses.create(model="m", input="and then?",
                                        previous_response_id=created.id)
    assert follow.output_text.endswith("and then?")
    await api.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        await api.responses.retrieve(created.id)
    paths = [(r.method, r.path) for r in calls(upstream)]
    assert ("GET", f"/v1/responses/{created.id}") in paths
    assert ("DELETE", f"/v1/responses/{created.id}") in paths
    # The other org's attempts never reached the upstream.
    assert len([p for p in paths if p[1] == f"/v1/responses/{created.id}"]) == 2


async def test_previous_response_id_on_a_translated_target(gateway: Any,
                                                           upstream: Any) -> None:
    """Translated targets keep no conversations: a clear 400."""
    api = client(gateway)
    created = await api.responses.create(model="m", input="first")
    with pytest.raises(openai.BadRequestError) as info:
        await api.responses.create(model="claude", input="next",
                                   previous_response_id=created.id)
    assert "previous_response_id" in info.value.message


async def test_azure_target_is_forwarded(gateway: Any, upstream: Any) -> None:
    api = client(gateway)
    response = await api.responses.create(model="azure-gpt", input="from azure")
    assert response.output_text.endswith("from azure")
    got = await api.responses.retrieve(response.id)
    assert got.id == response.id
    first, second = calls(upstream)
    assert first.path == "/openai/responses" and first.query["api-version"]
    assert first.headers["api-key"] == UPSTREAM_KEY
    assert second.method == "GET" and second.path == f"/openai/responses/{response.id}"


async def test_failover_before_the_first_byte_binds_the_response_there(
        gateway: Any, upstream: Any) -> None:
    """primary answers 500, secondary creates the response: the owner record
    names secondary, and a conversation on a route without it is refused."""
    import msgspec

    from gandalf_common.contract import RESPONSES_BUCKET, ResponseOwner

    api = client(gateway)
    created = await api.responses.create(model="failover-500", input="who made me")
    assert created.output_text.endswith("who made me")
    assert [r.status for r in calls(upstream)] == [500, 200]
    kv = await gateway.nc.jetstream().key_value(RESPONSES_BUCKET)
    owner = msgspec.json.decode((await kv.get(created.id)).value, type=ResponseOwner)
    assert (owner.provider, owner.model, owner.org_id) == ("secondary", "failover-500",
                                                           "default")
    got = await api.responses.retrieve(created.id)
    assert got.id == created.id
    with pytest.raises(openai.BadRequestError):  # "m" is served by primary only
        await api.responses.create(model="m", input="next", previous_response_id=created.id)
    with pytest.raises(openai.BadRequestError):
        await api.responses.create(model="azure-gpt", input="next",
                                   previous_response_id=created.id)
