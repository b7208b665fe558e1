"""The ollama wire format of the mock upstream, as a mixin of ``MockUpstream``.

Ollama's native API: ``POST /api/chat`` and ``POST /api/generate`` (NDJSON
streams unless the body says ``"stream": false``), ``POST /api/embed`` and
``GET /api/tags``. Errors are Ollama-shaped: ``{"error": "..."}``.

Ollama has no auth of its own; a reverse proxy in front may. So a request
without ``Authorization`` is accepted, and one with it must carry
``Bearer <api_key>``.

The fault directives in the model name are the OpenAI mock's (``fail-404``,
``delay-200``, ``cut-2``, ``hang``, ``words-5``...; ``cut-N`` sends N NDJSON
objects then aborts), plus two for streams of these routes only:

``error-line``    after the first object, send ``{"error": "..."}`` and end
``garbage-line``  after the first object, send a line that is not JSON and end
``no-final``      leave out the final (``done: true``) object, then end cleanly

Answers are deterministic for a given request (``created_at`` and the
durations are fixed), so a test can compare relayed bytes with a second,
direct request.

Chat behaviour: with ``tools`` declared and no tool result in the last turn
the reply is one call of the first tool (all of it in one object, arguments
as an object, as Ollama sends it); after a tool message the reply is text
that quotes the tool result.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from mock_data import (
    _CREATED,
    DEFAULT_EMBEDDING_DIMENSIONS,
    count_prompt_tokens,
    mock_embedding,
    mock_reply_words,
)
from mock_faults import _SPLIT_RE, Fault, RequestRecord
from mock_openai import _RECORD_KEY

#: What ``GET /api/tags`` lists.
OLLAMA_MODELS: tuple[str, ...] = ("llama3.2:latest", "qwen2.5:7b", "nomic-embed-text:latest")
#: Fixed, in Ollama's format (RFC 3339 with nanoseconds), for byte-stable answers.
CREATED_AT = datetime.fromtimestamp(_CREATED, UTC).strftime("%Y-%m-%dT%H:%M:%S.123456789Z")
NDJSON = "application/x-ndjson"
_ROLES = frozenset({"system", "user", "assistant", "tool"})
_LOAD_NS = 1_000_000


def _dumps(value: Any) -> str:
    """Compact JSON, as Ollama (Go) writes it."""
    return json.dumps(value, separators=(",", ":"))


def ollama_error(status: int, message: str,
                 headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers,
                             dumps=_dumps)


def _stream_directives(model: str) -> set[str]:
    return {t for t in _SPLIT_RE.split(model.strip().lower())
            if t in ("error-line", "garbage-line", "no-final")}


def _is_b64(value: Any) -> bool:
    if not isinstance(value, str) or not value:
        return False
    try:
        base64.b64decode(value, validate=True)
    except binascii.Error:
        return False
    return True


def _check_message(m: Any) -> str | None:
    """Why an ``/api/chat`` message would be refused by Ollama, or None."""
    if not isinstance(m, dict):
        return "each message must be an object"
    if m.get("role") not in _ROLES:
        return f"invalid role {m.get('role')!r}"
    content = m.get("content")
    if m["role"] == "tool" and not isinstance(content, str):
        return "tool message content must be a string"
    if content is not None and not isinstance(content, str):
        return "json: cannot unmarshal array into Go struct field Message.messages.content"
    images = m.get("images")
    if images is not None and (not isinstance(images, list)
                               or not all(_is_b64(i) for i in images)):
        return "illegal base64 data in images"
    calls = m.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            return "tool_calls must be an array"
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                return "tool call without a function name"
            if not isinstance(fn.get("arguments"), dict):
                return "tool call arguments must be an object"
    if "tool_name" in m and not isinstance(m["tool_name"], str):
        return "tool_name must be a string"
    return None


def _check_common(body: dict[str, Any]) -> str | None:
    if "options" in body and not isinstance(body["options"], dict):
        return "options must be an object"
    fmt = body.get("format")
    if fmt not in (None, "", "json") and not isinstance(fmt, dict):
        return f"invalid format {fmt!r}"
    return None


def _mock_arguments(tool: Any) -> dict[str, Any]:
    """Arguments for a call of ``tool``: a plain value per declared property."""
    fn = tool.get("function") if isinstance(tool, dict) else None
    params = fn.get("parameters") if isinstance(fn, dict) else None
    props = params.get("properties") if isinstance(params, dict) else None
    if not isinstance(props, dict):
        return {}
    samples = {"string": "mock", "integer": 1, "number": 1.5, "boolean": True,
               "array": [], "object": {}}
    return {name: samples.get(spec.get("type") if isinstance(spec, dict) else None)
            for name, spec in props.items()}


def _num_predict(body: dict[str, Any]) -> int | None:
    options = body.get("options") or {}
    value = options.get("num_predict")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _final(model: str, done_reason: str, prompt: int, completion: int,
           **fields: Any) -> dict[str, Any]:
    """The closing object: reason, counters and (fixed) durations."""
    prompt_ns, eval_ns = prompt * 1_000_000, completion * 10_000_000
    return {"model": model, "created_at": CREATED_AT, **fields, "done": True,
            "done_reason": done_reason, "total_duration": _LOAD_NS + prompt_ns + eval_ns,
            "load_duration": _LOAD_NS, "prompt_eval_count": prompt,
            "prompt_eval_duration": prompt_ns, "eval_count": completion,
            "eval_duration": eval_ns}


class OllamaRoutes:
    """Endpoint handlers; they use the fault and record helpers of MockUpstream."""

    api_key: str | None

    def _add_ollama_routes(self, app: web.Application) -> None:
        """Register this format's routes on the mock's app."""
        app.router.add_post("/api/chat", self._ollama_chat)
        app.router.add_post("/api/generate", self._ollama_generate)
        app.router.add_post("/api/embed", self._ollama_embed)
        app.router.add_get("/api/tags", self._ollama_tags)

    # ---------------------------------------------------------------- helpers

    def _ollama_denied(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization")
        if header is not None and self.api_key is not None and (
                header != f"Bearer {self.api_key}"):
            return ollama_error(401, "unauthorized")
        return None

    async def _ollama_begin(self, request: web.Request, *, stream_default: bool,
                            check: Callable[[dict[str, Any]], str | None]
                            ) -> tuple[dict[str, Any], Fault] | web.Response:
        """Auth, body checks, record, then the pre-response faults (Ollama-shaped)."""
        denied = self._ollama_denied(request)
        if denied is not None:
            return denied
        record: RequestRecord = request[_RECORD_KEY]
        body = record.body
        if not isinstance(body, dict):
            return ollama_error(400, "invalid JSON body")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return ollama_error(400, "model is required")
        stream = body.get("stream", stream_default)
        if not isinstance(stream, bool):
            return ollama_error(400, "stream must be a boolean")
        problem = _check_common(body) or check(body)
        if problem is not None:
            return ollama_error(400, problem)
        record.model, record.stream = model, stream
        fault = self._take_fault(model)
        record.fault = fault
        # Delays and hangs as the OpenAI routes; the error body is Ollama's own.
        await self._apply_pre_response_faults(request, dataclasses.replace(fault, status=None))
        if fault.status is not None:
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after else None
            message = (f'model "{model}" not found, try pulling it first'
                       if fault.status == 404 else f"mock upstream error {fault.status}")
            return ollama_error(fault.status, message, headers)
        return body, fault

    async def _ollama_send(self, request: web.Request, fault: Fault, objects: list[Any],
                           *, stream: bool, model: str) -> web.StreamResponse:
        """Stream: one object per line (``cut-N`` aborts after N). Else the
        last object (the final one) alone, as JSON."""
        if not stream:
            if fault.cut is not None:
                return await self._send_cut_body(request, 200, objects[-1])
            return web.json_response(objects[-1], dumps=_dumps)
        lines = [(_dumps(o) + "\n").encode() for o in objects]
        directives = _stream_directives(model)
        if "error-line" in directives:
            lines[1:] = [b'{"error":"mock runner crashed"}\n']
        elif "garbage-line" in directives:
            lines[1:] = [b"this is not json\n"]
        elif "no-final" in directives:
            lines.pop()
        resp = web.StreamResponse(status=200, headers={"Content-Type": NDJSON})
        return await self._write_stream(request, fault, resp, lines)

    # ----------------------------------------------------------------- routes

    async def _ollama_chat(self, request: web.Request) -> web.StreamResponse:
        def check(body: dict[str, Any]) -> str | None:
            messages = body.get("messages")
            if not isinstance(messages, list):
                return "messages must be an array"
            tools = body.get("tools")
            if tools is not None and not isinstance(tools, list):
                return "tools must be an array"
            return next(filter(None, map(_check_message, messages)), None)

        begun = await self._ollama_begin(request, stream_default=True, check=check)
        if isinstance(begun, web.StreamResponse):
            return begun
        body, fault = begun
        model, messages = body["model"], body["messages"]
        stream = body.get("stream", True)
        last = messages[-1] if messages else {}
        prompt = count_prompt_tokens(messages)
        tools = body.get("tools") or []

        def chunk(message: dict[str, Any]) -> dict[str, Any]:
            return {"model": model, "created_at": CREATED_AT,
                    "message": {"role": "assistant", **message}, "done": False}

        if tools and last.get("role") != "tool":
            fn = tools[0].get("function") if isinstance(tools[0], dict) else None
            name = fn.get("name", "") if isinstance(fn, dict) else ""
            call = {"function": {"name": name, "arguments": _mock_arguments(tools[0])}}
            message = {"content": "", "tool_calls": [call]}
            final = _final(model, "stop", prompt, 10,
                           message={"role": "assistant",
                                    **({"content": ""} if stream else message)})
            return await self._ollama_send(request, fault, [chunk(message), final],
                                           stream=stream, model=model)

        if last.get("role") == "tool":
            # Quote the tool result: proves it reached the model intact.
            source = [{"role": "user", "content": f"tool result {last.get('content', '')}"}]
        else:
            source = messages
        words = mock_reply_words(source, fault.words)
        done_reason = "stop"
        limit = _num_predict(body)
        if limit is not None and 0 < limit < len(words):
            words, done_reason = words[:limit], "length"
        objects = [chunk({"content": w if i == 0 else " " + w}) for i, w in enumerate(words)]
        objects.append(_final(model, done_reason, prompt, len(words),
                              message={"role": "assistant",
                                       "content": "" if stream else " ".join(words)}))
        return await self._ollama_send(request, fault, objects, stream=stream, model=model)

    async def _ollama_generate(self, request: web.Request) -> web.StreamResponse:
        def check(body: dict[str, Any]) -> str | None:
            if not isinstance(body.get("prompt", ""), str):
                return "prompt must be a string"
            images = body.get("images")
            if images is not None and (not isinstance(images, list)
                                       or not all(_is_b64(i) for i in images)):
                return "illegal base64 data in images"
            return None

        begun = await self._ollama_begin(request, stream_default=True, check=check)
        if isinstance(begun, web.StreamResponse):
            return begun
        body, fault = begun
        model, prompt_text = body["model"], body.get("prompt", "")
        stream = body.get("stream", True)
        words = mock_reply_words([{"role": "user", "content": prompt_text}], fault.words)
        done_reason = "stop"
        limit = _num_predict(body)
        if limit is not None and 0 < limit < len(words):
            words, done_reason = words[:limit], "length"
        prompt = len(prompt_text) // 4 + 1
        objects: list[Any] = [
            {"model": model, "created_at": CREATED_AT, "response": w if i == 0 else " " + w,
             "done": False} for i, w in enumerate(words)]
        objects.append(_final(model, done_reason, prompt, len(words),
                              response="" if stream else " ".join(words),
                              context=[1, 2, 3]))
        return await self._ollama_send(request, fault, objects, stream=stream, model=model)

    async def _ollama_embed(self, request: web.Request) -> web.StreamResponse:
        def check(body: dict[str, Any]) -> str | None:
            inputs = body.get("input")
            if isinstance(inputs, str):
                inputs = [inputs]
            if not isinstance(inputs, list) or not inputs or not all(
                    isinstance(i, str) for i in inputs):
                return "input must be a string or a non-empty array of strings"
            dims = body.get("dimensions")
            if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool)
                                     or dims < 1):
                return "dimensions must be a positive integer"
            if "truncate" in body and not isinstance(body["truncate"], bool):
                return "truncate must be a boolean"
            return None

        begun = await self._ollama_begin(request, stream_default=False, check=check)
        if isinstance(begun, web.StreamResponse):
            return begun
        body, fault = begun
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dims = body.get("dimensions") or DEFAULT_EMBEDDING_DIMENSIONS
        prompt = sum(len(text) // 4 + 1 for text in inputs)
        payload = {"model": body["model"],
                   "embeddings": [mock_embedding(text, dims) for text in inputs],
                   "total_duration": _LOAD_NS + prompt * 1_000_000,
                   "load_duration": _LOAD_NS, "prompt_eval_count": prompt}
        return await self._ollama_send(request, fault, [payload], stream=False,
                                       model=body["model"])

    async def _ollama_tags(self, request: web.Request) -> web.Response:
        denied = self._ollama_denied(request)
        if denied is not None:
            return denied
        return web.json_response({"models": [
            {"name": name, "model": name, "modified_at": CREATED_AT, "size": 2_019_393_189,
             "digest": hashlib.sha256(name.encode()).hexdigest(),
             "details": {"format": "gguf", "family": "llama", "parameter_size": "3.2B",
                         "quantization_level": "Q4_K_M"}}
            for name in OLLAMA_MODELS]}, dumps=_dumps)
