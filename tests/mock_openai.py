"""The OpenAI wire format of the mock upstream: /v1/models, /v1/chat/completions
(JSON and SSE) and /v1/embeddings, as a mixin of ``MockUpstream``."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
from typing import Any

from aiohttp import web

from mock_data import (
    _CREATED,
    DEFAULT_EMBEDDING_DIMENSIONS,
    MOCK_MODELS,
    count_prompt_tokens,
    mock_embedding,
    mock_reply_words,
    mock_tool_call,
    mock_tool_result_words,
)
from mock_faults import Fault, RequestRecord

_RECORD_KEY: web.RequestKey[RequestRecord] = web.RequestKey("mock_record", RequestRecord)
_CLOSED_KEY: web.RequestKey[asyncio.Event] = web.RequestKey("mock_closed", asyncio.Event)


class OpenAIRoutes:
    """Endpoint handlers; they use the fault and record helpers of MockUpstream."""



    async def _list_models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": _CREATED, "owned_by": "mock"}
                    for m in MOCK_MODELS
                ],
            }
        )

    async def _get_model(self, request: web.Request) -> web.Response:
        model_id = request.match_info["model_id"]
        return web.json_response(
            {"id": model_id, "object": "model", "created": _CREATED, "owned_by": "mock"}
        )

    async def _chat_completions(self, request: web.Request,
                                deployment: str = "") -> web.StreamResponse:
        record: RequestRecord = request[_RECORD_KEY]
        body = record.body
        if not isinstance(body, dict):
            return self._bad_request("We could not parse the JSON body of your request.")
        # Azure takes the model (deployment) from the URL, not the body.
        model = deployment or body.get("model")
        messages = body.get("messages")
        if not isinstance(model, str) or not model:
            return self._bad_request("you must provide a model parameter", "model")
        if not isinstance(messages, list) or not messages:
            return self._bad_request("'messages' must be a non-empty array", "messages")
        stream = bool(body.get("stream"))
        record.model, record.stream = model, stream
        fault = self._take_fault(model)
        record.fault = fault
        error = await self._apply_pre_response_faults(request, fault)
        if error is not None:
            return error

        words = mock_tool_result_words(messages) or mock_reply_words(messages, fault.words)
        tool_call = mock_tool_call(body, next(self._ids))
        finish_reason = "tool_calls" if tool_call else "stop"
        if tool_call:
            words = []
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(max_tokens, int) and 0 < max_tokens < len(words):
            words, finish_reason = words[:max_tokens], "length"
        prompt_tokens = count_prompt_tokens(messages)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words),
        }
        if "cached" in model:  # prompt caching, reported as OpenAI does
            usage["prompt_tokens_details"] = {"cached_tokens": prompt_tokens // 2}
        completion_id = f"chatcmpl-mock-{next(self._ids)}"
        created = int(time.time())
        if stream:
            stream_options = body.get("stream_options")
            include_usage = isinstance(stream_options, dict) and bool(
                stream_options.get("include_usage")
            )
            return await self._stream_chat(
                request,
                fault,
                completion_id,
                created,
                model,
                words,
                finish_reason,
                usage if include_usage else None,
                tool_call,
            )
        payload = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": " ".join(words) if not tool_call else None,
                        "refusal": None,
                        **({"tool_calls": [{"id": tool_call["id"], "type": "function",
                                            "function": {"name": tool_call["name"],
                                                         "arguments": tool_call["arguments"]}}]}
                           if tool_call else {}),
                    },
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage,
        }
        if fault.cut is not None:
            return await self._send_cut_body(request, 200, payload)
        return web.json_response(payload)

    async def _stream_chat(
        self,
        request: web.Request,
        fault: Fault,
        completion_id: str,
        created: int,
        model: str,
        words: list[str],
        finish_reason: str,
        usage: dict[str, int] | None,
        tool_call: dict[str, Any] | None = None,
    ) -> web.StreamResponse:
        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            c: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_mock",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if usage is not None:
                c["usage"] = None
            return c

        events: list[str] = [json.dumps(chunk({"role": "assistant", "content": ""}, None))]
        events += [
            json.dumps(chunk({"content": w if i == 0 else " " + w}, None))
            for i, w in enumerate(words)
        ]
        if tool_call:
            # As OpenAI streams calls: id and name first, then argument fragments.
            args = tool_call["arguments"]
            half = len(args) // 2
            first = {"index": 0, "id": tool_call["id"], "type": "function",
                     "function": {"name": tool_call["name"], "arguments": ""}}
            events.append(json.dumps(chunk({"tool_calls": [first]}, None)))
            for part in (args[:half], args[half:]):
                events.append(json.dumps(chunk(
                    {"tool_calls": [{"index": 0, "function": {"arguments": part}}]}, None)))
        events.append(json.dumps(chunk({}, finish_reason)))
        if usage is not None:
            usage_chunk = chunk({}, None)
            usage_chunk["choices"] = []
            usage_chunk["usage"] = usage
            events.append(json.dumps(usage_chunk))
        events.append("[DONE]")

        resp = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            },
        )
        return await self._write_stream(
            request, fault, resp, [f"data: {event}\n\n".encode() for event in events])

    async def _embeddings(self, request: web.Request,
                          deployment: str = "") -> web.StreamResponse:
        record: RequestRecord = request[_RECORD_KEY]
        body = record.body
        if not isinstance(body, dict):
            return self._bad_request("We could not parse the JSON body of your request.")
        # Azure takes the model (deployment) from the URL, not the body.
        model = deployment or body.get("model")
        if not isinstance(model, str) or not model:
            return self._bad_request("you must provide a model parameter", "model")
        inputs = _normalize_embedding_input(body.get("input"))
        if inputs is None:
            return self._bad_request(
                "'input' must be a string, an array of strings, or token arrays", "input"
            )
        dims = body.get("dimensions", DEFAULT_EMBEDDING_DIMENSIONS)
        if dims is None:
            dims = DEFAULT_EMBEDDING_DIMENSIONS
        if not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= 65536:
            return self._bad_request("'dimensions' must be a positive integer", "dimensions")
        encoding_format = body.get("encoding_format") or "float"
        if encoding_format not in ("float", "base64"):
            return self._bad_request(
                "'encoding_format' must be 'float' or 'base64'", "encoding_format"
            )
        record.model = model
        fault = self._take_fault(model)
        record.fault = fault
        error = await self._apply_pre_response_faults(request, fault)
        if error is not None:
            return error

        data: list[dict[str, Any]] = []
        prompt_tokens = 0
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                text = item
                prompt_tokens += len(text) // 4 + 1
            else:
                text = " ".join(str(t) for t in item)
                prompt_tokens += len(item)
            vector = mock_embedding(text, dims)
            embedding: list[float] | str = (
                base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
                if encoding_format == "base64"
                else vector
            )
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        payload = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
        if fault.cut is not None:
            return await self._send_cut_body(request, 200, payload)
        return web.json_response(payload)


def _normalize_embedding_input(value: Any) -> list[str | list[int]] | None:
    """str | list[str] | list[int] | list[list[int]] -> list of items, None if invalid."""

    def is_tokens(v: Any) -> bool:
        return (
            isinstance(v, list)
            and bool(v)
            and all(isinstance(t, int) and not isinstance(t, bool) for t in v)
        )

    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        return None
    if is_tokens(value):
        return [value]
    items: list[str | list[int]] = []
    for v in value:
        if isinstance(v, str) or is_tokens(v):
            items.append(v)
        else:
            return None
    return items
