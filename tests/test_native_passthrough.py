"""Native passthrough forwards the client's body unchanged: byte for byte
where the API carries the model in the URL (Azure, Gemini)."""

from __future__ import annotations

from typing import Any

import httpx

from gateway_harness import TEST_KEY

#: Odd spacing, key order and number spelling: any re-encoding would show.
AZURE_BODY = (b'{ "messages" : [ {"content":"hi \\u00e9", "role":"user"} ],'
              b'"temperature":1.0e0,  "model":"azure-gpt", "x_extra": {"b":1,"a":2} }')
GEMINI_BODY = (b'{"contents":[ {"role":"user","parts":[{"text":"hi \\u00e9"}]} ],\n'
               b' "generationConfig": {"temperature": 1.0e0, "maxOutputTokens": 16}}')


async def test_azure_body_reaches_the_upstream_byte_for_byte(gateway: Any,
                                                             upstream: Any) -> None:
    async with httpx.AsyncClient(timeout=15) as http:
        r = await http.post(
            gateway.url + "/openai/deployments/azure-gpt/chat/completions",
            params={"api-version": "2024-10-21"}, content=AZURE_BODY,
            headers={"api-key": TEST_KEY, "content-type": "application/json"})
    assert r.status_code == 200, r.text
    (record,) = upstream.requests_to_prefix("/openai/deployments/")
    assert record.path == "/openai/deployments/dep-4o/chat/completions"
    assert record.raw_body == AZURE_BODY


async def test_gemini_body_reaches_the_upstream_byte_for_byte(gateway: Any,
                                                              upstream: Any) -> None:
    async with httpx.AsyncClient(timeout=15) as http:
        r = await http.post(gateway.url + "/v1beta/models/gem:generateContent",
                            content=GEMINI_BODY,
                            headers={"x-goog-api-key": TEST_KEY,
                                     "content-type": "application/json"})
    assert r.status_code == 200, r.text
    (record,) = [q for q in upstream.requests if ":generateContent" in q.path]
    assert record.path.endswith("/models/gemini-2.0-flash:generateContent")
    assert record.raw_body == GEMINI_BODY
