"""OpenAI's Responses API in the mock upstream (a mixin of ``MockUpstream``):
``POST /v1/responses`` (JSON and the typed SSE event stream), stored
responses for ``GET``/``DELETE``, ``/input_items`` and ``/cancel``, and
``previous_response_id``. Azure's ``/openai/responses`` serves the same.

The model answers as the chat mock does: ``mock reply to: <last user text>``;
it calls the first function tool when tools are offered and the input ends
with a user message; after a ``function_call_output`` it says ``tool said:
<output>``; with ``text.format`` json_schema it answers a JSON object with
every required property set to ``"mock"``. A model name containing
``reasoning`` reports 5 reasoning tokens; one containing ``cached`` reports
half its input as cached.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from mock_faults import RequestRecord
from mock_openai import _RECORD_KEY


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class ResponsesRoutes:
    """Endpoint handlers; they use the fault and record helpers of MockUpstream."""

    def _add_responses_routes(self, app: web.Application) -> None:
        self._stored: dict[str, dict[str, Any]] = {}
        for prefix in ("/v1", "/openai"):
            app.router.add_post(prefix + "/responses", self._responses_create)
            app.router.add_get(prefix + "/responses/{rid}", self._responses_get)
            app.router.add_delete(prefix + "/responses/{rid}", self._responses_delete)
            app.router.add_get(prefix + "/responses/{rid}/input_items", self._responses_items)
            app.router.add_post(prefix + "/responses/{rid}/cancel", self._responses_cancel)

    def _responses_denied(self, request: web.Request) -> web.Response | None:
        if request.path.startswith("/openai/"):
            return self._azure_denied(request)  # type: ignore[attr-defined,no-any-return]
        return None  # /v1 paths: the middleware checks the bearer key

    def _missing(self, rid: str) -> web.Response:
        return self._json_error(404, f"Response with id '{rid}' not found.",  # type: ignore[attr-defined,no-any-return]
                                "invalid_request_error", None)

    # ------------------------------------------------------------------ create

    def _input_items(self, value: Any) -> list[dict[str, Any]]:
        if isinstance(value, str):
            value = [{"type": "message", "role": "user",
                      "content": [{"type": "input_text", "text": value}]}]
        items = []
        for item in value:
            item = dict(item)
            item.setdefault("type", "message")
            item.setdefault("id", f"msg_in_{next(self._ids)}")  # type: ignore[attr-defined]
            items.append(item)
        return items

    async def _responses_create(self, request: web.Request) -> web.StreamResponse:
        denied = self._responses_denied(request)
        if denied is not None:
            return denied
        record: RequestRecord = request[_RECORD_KEY]
        body = record.body
        if not isinstance(body, dict):
            return self._bad_request("We could not parse the JSON body of your request.")  # type: ignore[attr-defined,no-any-return]
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return self._bad_request("Missing required parameter: 'model'.", "model")  # type: ignore[attr-defined,no-any-return]
        if not isinstance(body.get("input"), str | list) or not body["input"]:
            return self._bad_request("Missing required parameter: 'input'.", "input")  # type: ignore[attr-defined,no-any-return]
        history: list[dict[str, Any]] = []
        previous = body.get("previous_response_id")
        if previous is not None:
            stored = self._stored.get(previous)
            if stored is None:
                return self._json_error(  # type: ignore[attr-defined,no-any-return]
                    400, f"Previous response with id '{previous}' not found.",
                    "invalid_request_error", "previous_response_not_found")
            history = stored["input"] + stored["response"]["output"]
        stream = bool(body.get("stream"))
        record.model, record.stream = model, stream
        fault = self._take_fault(model)  # type: ignore[attr-defined]
        record.fault = fault
        error = await self._apply_pre_response_faults(request, fault)  # type: ignore[attr-defined]
        if error is not None:
            return error  # type: ignore[no-any-return]
        items = self._input_items(body["input"])
        response = self._answer(body, model, history + items)
        if body.get("store", True):
            self._stored[response["id"]] = {"response": response, "input": history + items,
                                            "background": bool(body.get("background"))}
        if stream:
            return await self._responses_stream(request, fault, response)
        return web.json_response(response)

    def _answer(self, body: dict[str, Any], model: str,
                items: list[dict[str, Any]]) -> dict[str, Any]:
        n = next(self._ids)  # type: ignore[attr-defined]
        last = items[-1]
        tools = [t for t in body.get("tools") or [] if t.get("type") == "function"]
        fmt = (body.get("text") or {}).get("format") or {}
        output: list[dict[str, Any]] = []
        words: list[str] = []
        if last.get("type") == "function_call_output":
            words = ["tool", "said:", *_text(last.get("output")).split()]
        elif tools and last.get("role") == "user" and body.get("tool_choice") != "none":
            required = (tools[0].get("parameters") or {}).get("required") or []
            output.append({"type": "function_call", "id": f"fc_mock_{n}",
                           "call_id": f"call_mock_{n}", "name": tools[0]["name"],
                           "arguments": json.dumps({k: "mock" for k in required}),
                           "status": "completed"})
        elif fmt.get("type") == "json_schema":
            required = (fmt.get("schema") or {}).get("required") or []
            words = [json.dumps({k: "mock" for k in required})]
        else:
            user = [i for i in items if i.get("role") == "user"]
            words = ["mock", "reply", "to:", *_text(user[-1].get("content")).split()] \
                if user else ["mock", "reply"]
        if words:
            output.append({"type": "message", "id": f"msg_mock_{n}", "status": "completed",
                           "role": "assistant", "content": [
                               {"type": "output_text", "text": " ".join(words),
                                "annotations": []}]})
        prompt = sum(len(_text(i.get("content") or i.get("output"))) for i in items) // 4 + 1
        reasoning = 5 if "reasoning" in model else 0
        completion = len(words) + reasoning
        return {
            "id": f"resp_mock_{n}", "object": "response", "created_at": int(time.time()),
            "status": "completed", "error": None, "incomplete_details": None,
            "instructions": body.get("instructions"), "model": model, "output": output,
            "parallel_tool_calls": True, "previous_response_id": body.get("previous_response_id"),
            "store": body.get("store", True), "temperature": body.get("temperature", 1.0),
            "text": body.get("text") or {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
            "top_p": body.get("top_p", 1.0), "truncation": "disabled",
            "metadata": body.get("metadata") or {},
            "usage": {"input_tokens": prompt,
                      "input_tokens_details": {"cached_tokens":
                                               prompt // 2 if "cached" in model else 0},
                      "output_tokens": completion,
                      "output_tokens_details": {"reasoning_tokens": reasoning},
                      "total_tokens": prompt + completion}}

    async def _responses_stream(self, request: web.Request, fault: Any,
                                response: dict[str, Any]) -> web.StreamResponse:
        events: list[dict[str, Any]] = []

        def emit(kind: str, **fields: Any) -> None:
            events.append({"type": kind, "sequence_number": len(events), **fields})

        shell = {**response, "status": "in_progress", "output": [], "usage": None}
        emit("response.created", response=shell)
        emit("response.in_progress", response=shell)
        for index, item in enumerate(response["output"]):
            if item["type"] == "message":
                text = item["content"][0]["text"]
                emit("response.output_item.added", output_index=index,
                     item={**item, "status": "in_progress", "content": []})
                part = {"type": "output_text", "text": "", "annotations": []}
                emit("response.content_part.added", item_id=item["id"], output_index=index,
                     content_index=0, part=part)
                for i, word in enumerate(text.split(" ")):
                    emit("response.output_text.delta", item_id=item["id"],
                         output_index=index, content_index=0,
                         delta=word if i == 0 else " " + word, logprobs=[])
                emit("response.output_text.done", item_id=item["id"], output_index=index,
                     content_index=0, text=text, logprobs=[])
                emit("response.content_part.done", item_id=item["id"], output_index=index,
                     content_index=0, part=item["content"][0])
            else:
                args = item["arguments"]
                emit("response.output_item.added", output_index=index,
                     item={**item, "status": "in_progress", "arguments": ""})
                half = len(args) // 2
                for piece in (args[:half], args[half:]):
                    emit("response.function_call_arguments.delta", item_id=item["id"],
                         output_index=index, delta=piece)
                emit("response.function_call_arguments.done", item_id=item["id"],
                     output_index=index, arguments=args)
            emit("response.output_item.done", output_index=index, item=item)
        emit("response.completed", response=response)
        resp = web.StreamResponse(status=200, headers={
            "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"})
        return await self._write_stream(  # type: ignore[attr-defined,no-any-return]
            request, fault, resp,
            [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events])

    # ------------------------------------------------------------ stored ones

    async def _responses_get(self, request: web.Request) -> web.StreamResponse:
        rid = request.match_info["rid"]
        stored = self._stored.get(rid)
        denied = self._responses_denied(request)
        if denied is not None:
            return denied
        return web.json_response(stored["response"]) if stored else self._missing(rid)

    async def _responses_delete(self, request: web.Request) -> web.StreamResponse:
        rid = request.match_info["rid"]
        denied = self._responses_denied(request)
        if denied is not None:
            return denied
        if self._stored.pop(rid, None) is None:
            return self._missing(rid)
        return web.json_response({"id": rid, "object": "response.deleted", "deleted": True})

    async def _responses_items(self, request: web.Request) -> web.StreamResponse:
        rid = request.match_info["rid"]
        denied = self._responses_denied(request)
        if denied is not None:
            return denied
        stored = self._stored.get(rid)
        if stored is None:
            return self._missing(rid)
        items = list(reversed(stored["input"])) if request.query.get("order", "desc") == \
            "desc" else list(stored["input"])
        return web.json_response({"object": "list", "data": items,
                                  "first_id": items[0]["id"] if items else None,
                                  "last_id": items[-1]["id"] if items else None,
                                  "has_more": False})

    async def _responses_cancel(self, request: web.Request) -> web.StreamResponse:
        rid = request.match_info["rid"]
        denied = self._responses_denied(request)
        if denied is not None:
            return denied
        stored = self._stored.get(rid)
        if stored is None:
            return self._missing(rid)
        if stored["background"]:
            stored["response"]["status"] = "cancelled"
            return web.json_response(stored["response"])
        return self._bad_request(  # type: ignore[attr-defined,no-any-return]
            "Only responses created with background=true can be cancelled.")
