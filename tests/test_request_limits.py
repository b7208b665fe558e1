"""Client trees over the gateway's bounds are 400s through the whole
pipeline, and the gateway keeps answering: exponential ``$ref`` schemas on
a Gemini route, and (at the ingress) numbers out of range, nesting too deep
and proxy fields that would redirect the upstream call."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from gateway_harness import TEST_KEY

CHAT = "/v1/chat/completions"
AUTH = {"authorization": f"Bearer {TEST_KEY}"}
#: 129 bytes that would expand to ~2^33 nodes if inlined to depth 32.
SELF_REF = json.loads('{"$defs":{"a":{"type":"object","properties":{"x":{"$ref":"#/$defs/a"},'
                      '"y":{"$ref":"#/$defs/a"}}}},"$ref":"#/$defs/a","type":"object"}')


def _chat(model: str = "gem", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def _calls(upstream: Any) -> list[Any]:
    return [r for r in upstream.requests if r.path != "/oauth2/token"]


async def _post(gateway: Any, body: dict[str, Any] | bytes) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as http:
        return await http.post(CHAT, content=content,
                               headers={**AUTH, "content-type": "application/json"})


def _error(resp: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error: dict[str, Any] = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    return error


@pytest.mark.parametrize("alias", ["gem", "gem-vertex"])
@pytest.mark.parametrize("where", ["tools", "response_format"])
async def test_recursive_schema_is_400_on_gemini(gateway: Any, upstream: Any, alias: str,
                                                where: str) -> None:
    extra = {"tools": [{"type": "function", "function": {"name": "f", "parameters": SELF_REF}}]} \
        if where == "tools" else \
        {"response_format": {"type": "json_schema", "json_schema": {"name": "r",
                                                                     "schema": SELF_REF}}}
    started = time.monotonic()
    error = _error(await _post(gateway, _chat(alias, **extra)))
    assert time.monotonic() - started < 5
    assert error["code"] == "schema_recursive" and "recursive" in error["message"]
    assert _calls(upstream) == []
    ok = await _post(gateway, _chat(alias))
    assert ok.status_code == 200, ok.text


async def test_wide_schema_is_400_too_large(gateway: Any, upstream: Any) -> None:
    defs = {f"L{i}": {"type": "object", "properties": {
        f"p{j}": {"$ref": f"#/$defs/L{i + 1}"} for j in range(10)}} for i in range(6)}
    defs["L6"] = {"type": "string"}
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "$defs": defs, "$ref": "#/$defs/L0"}}}
    error = _error(await _post(gateway, _chat(tools=[tool])))
    assert error["code"] == "schema_too_large" and "10000" in error["message"]
    assert _calls(upstream) == []
