"""The Anthropic Messages wire format of the mock upstream, as a mixin of
``MockUpstream``: direct (``/v1/messages``), Vertex AI (``:rawPredict`` /
``:streamRawPredict``) and Bedrock (``/model/{id}/invoke[-with-response-stream]``,
answering streams in the AWS binary event-stream framing).

It rejects what Anthropic rejects (missing ``max_tokens``, a ``system`` role
in ``messages``, consecutive same roles, tools without ``input_schema``,
orphan ``tool_result`` blocks, unknown top-level fields, a ``model`` field or
a wrong ``anthropic_version`` on Vertex/Bedrock, ``stream`` in a Bedrock body)
and checks each hosting's credentials.

Replies: with ``tools`` and a plain user turn last, a ``tool_use`` of the
first tool (``toolu_mock_1``; input built from the schema's required
properties, else ``{"query": "mock"}``); after a ``tool_result``, text about
that result; otherwise ``mock reply to: <last user text>``.

Fault directives are the OpenAI mock's (``fail-N``, ``delay-N``, ``cut-N``,
``hang``, ``words-N``, ...; errors in this format's shape), plus:

``stream-error``    after the first text delta, an ``error`` event (overloaded_error;
                    Bedrock: a ``modelStreamErrorException`` frame) ends the stream
``stream-throttle`` the same with rate_limit_error (Bedrock: ``throttlingException``)
``parallel-tools``  call the first two tools at once
``bad-json``        stream: the event after ``message_start`` is not JSON
``cached``          (any token containing it) usage reports cache_read_input_tokens

``cut-N`` on Bedrock sends N frames and half of the next one, then ends the
response cleanly: a truncated frame, not a dropped connection.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import itertools
import json
import struct
from typing import Any

from aiohttp import web

from mock_data import count_prompt_tokens, mock_reply_words
from mock_faults import _SPLIT_RE, Fault, RequestRecord
from mock_openai import _RECORD_KEY

VERTEX_VERSION = "vertex-2023-10-16"
BEDROCK_VERSION = "bedrock-2023-05-31"
ANTHROPIC_MODELS = ("claude-opus-4-6", "claude-sonnet-4-6", "claude-haiku-4-5")
CACHED_TOKENS = 32
_FIELDS = frozenset({"model", "messages", "max_tokens", "system", "metadata", "stop_sequences",
                     "stream", "temperature", "top_p", "top_k", "tools", "tool_choice",
                     "thinking", "service_tier", "container", "mcp_servers"})
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                429: "rate_limit_error", 529: "overloaded_error"}
_BEDROCK_ERRORS = {400: "ValidationException", 403: "AccessDeniedException",
                   404: "ResourceNotFoundException", 408: "ModelTimeoutException",
                   424: "ModelErrorException", 429: "ThrottlingException",
                   503: "ServiceUnavailableException"}
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def _directives(model: str) -> set[str]:
    return {t for t in _SPLIT_RE.split(model.strip().lower()) if t}


# ------------------------------------------------------------------ validation


def validate_request(body: Any, hosting: str) -> str | None:
    """What Anthropic would answer 400 to, as its message; None when valid."""
    if not isinstance(body, dict):
        return "body: Input should be a valid dictionary"
    allowed = set(_FIELDS)
    if hosting:
        if "model" in body:
            return "model: Extra inputs are not permitted"
        expected = VERTEX_VERSION if hosting == "vertex" else BEDROCK_VERSION
        if body.get("anthropic_version") != expected:
            return f"anthropic_version: Input should be '{expected}'"
        allowed |= {"anthropic_version"} | ({"anthropic_beta"} if hosting == "bedrock" else set())
        if hosting == "bedrock":
            allowed.discard("stream")
    elif not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    for key in body:
        if key not in allowed:
            if hosting == "bedrock":
                return f"Malformed input request: #: extraneous key [{key}] is not permitted"
            return f"{key}: Extra inputs are not permitted"
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Field required (an integer >= 1)"
    temperature = body.get("temperature")
    if temperature is not None and not (isinstance(temperature, int | float)
                                        and 0 <= temperature <= 1):
        return "temperature: Input should be less than or equal to 1"
    stops = body.get("stop_sequences")
    if stops is not None and not (isinstance(stops, list)
                                  and all(isinstance(s, str) for s in stops)):
        return "stop_sequences: Input should be a valid list of strings"
    return (_validate_system(body.get("system")) or _validate_tools(body)
            or _validate_messages(body.get("messages")))


def _validate_system(system: Any) -> str | None:
    if system is None or isinstance(system, str):
        return None
    if isinstance(system, list) and all(isinstance(b, dict) and b.get("type") == "text"
                                        and isinstance(b.get("text"), str) for b in system):
        return None
    return "system: Input should be a string or a list of text blocks"


def _validate_tools(body: dict[str, Any]) -> str | None:
    tools = body.get("tools")
    names: list[str] = []
    if tools is not None:
        if not isinstance(tools, list):
            return "tools: Input should be a valid list"
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                return f"tools.{i}.name: Field required"
            if tool.get("type", "custom") == "custom" and not isinstance(
                    tool.get("input_schema"), dict):
                return f"tools.{i}.custom.input_schema: Field required"
            names.append(tool["name"])
    choice = body.get("tool_choice")
    if choice is None:
        return None
    if not names:
        return "tool_choice: tool_choice may only be specified while providing tools"
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        return "tool_choice: Input tag does not match any of 'auto', 'any', 'tool', 'none'"
    if choice["type"] == "tool" and choice.get("name") not in names:
        return f"tool_choice: tool {choice.get('name')!r} not found in tools"
    return None


def _blocks(content: Any) -> list[Any]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _validate_messages(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    previous: str | None = None
    open_calls: list[str] = []  # tool_use ids of the previous assistant turn
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role == "system":
            return ('Unexpected role "system". The Messages API accepts a top-level `system` '
                    'parameter, not "system" as an input message role.')
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if role == previous:
            return ('messages: roles must alternate between "user" and "assistant", but found '
                    f'multiple "{role}" roles in a row')
        previous = role
        content = message.get("content")
        if not isinstance(content, list | str):
            return f"messages.{i}.content: Input should be a string or a list of blocks"
        if not content and not (role == "assistant" and i == len(messages) - 1):
            return f"messages.{i}: all messages must have non-empty content"
        results: list[str] = []
        calls: list[str] = []
        for j, block in enumerate(_blocks(content)):
            error = _validate_block(block, role, f"messages.{i}.content.{j}")
            if error:
                return error
            if block["type"] == "tool_result":
                if block.get("tool_use_id") not in open_calls:
                    return (f"messages.{i}.content.{j}: unexpected `tool_use_id` found in "
                            f"`tool_result` blocks: {block.get('tool_use_id')}. Each "
                            "`tool_result` block must have a corresponding `tool_use` block "
                            "in the previous message.")
                results.append(block["tool_use_id"])
            elif block["type"] == "tool_use":
                calls.append(block["id"])
        missing = [c for c in open_calls if c not in results]
        if missing:
            return (f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                    f"immediately after: {', '.join(missing)}")
        open_calls = calls
    if open_calls:
        return ("messages: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(open_calls)}")
    return None


def _validate_block(block: Any, role: str, where: str) -> str | None:
    kind = block.get("type") if isinstance(block, dict) else None
    if kind == "text":
        if not isinstance(block.get("text"), str) or not block["text"]:
            return f"{where}.text: text content blocks must be non-empty"
    elif kind in ("image", "document"):
        return _validate_source(block.get("source"), kind, where)
    elif kind == "tool_use":
        if role != "assistant":
            return f"{where}: tool_use blocks are only allowed in assistant messages"
        if not (isinstance(block.get("id"), str) and isinstance(block.get("name"), str)
                and isinstance(block.get("input"), dict)):
            return f"{where}: tool_use needs id, name and an input object"
    elif kind == "tool_result":
        if role != "user":
            return f"{where}: tool_result blocks are only allowed in user messages"
        content = block.get("content")
        if content is not None and not isinstance(content, str):
            for k, inner in enumerate(content if isinstance(content, list) else [None]):
                if not isinstance(inner, dict) or inner.get("type") not in ("text", "image"):
                    return f"{where}.content.{k}: tool_result content must be text or image"
    elif kind not in ("thinking", "redacted_thinking"):
        return f"{where}: Input tag {kind!r} does not match any of the expected block types"
    return None


def _validate_source(source: Any, kind: str, where: str) -> str | None:
    stype = source.get("type") if isinstance(source, dict) else None
    if stype == "base64":
        media = source.get("media_type")
        if kind == "image" and media not in _IMAGE_TYPES:
            return f"{where}.source.media_type: Input should be one of {', '.join(_IMAGE_TYPES)}"
        data = source.get("data")
        try:
            base64.b64decode(data, validate=True)
        except (TypeError, ValueError):
            return f"{where}.source.data: invalid base64 data"
        return None
    if stype == "url" and isinstance(source.get("url"), str) and source["url"].startswith(
            ("https://", "http://")):
        return None
    return f"{where}.source: Input tag {stype!r} does not match 'base64' or 'url'"


# ------------------------------------------------------------------- replies


def _sample(schema: Any) -> Any:
    kind = schema.get("type") if isinstance(schema, dict) else None
    if isinstance(schema, dict) and isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    return {"integer": 1, "number": 1.5, "boolean": True, "array": [],
            "object": _mock_input(schema) if isinstance(schema, dict)
            and schema.get("required") else {}}.get(kind, "mock")


def _mock_input(schema: Any) -> dict[str, Any]:
    """Tool input from the schema's required properties (else ``{"query": "mock"}``)."""
    required = schema.get("required") if isinstance(schema, dict) else None
    if not isinstance(required, list) or not required:
        return {"query": "mock"}
    props = schema.get("properties") or {}
    return {name: _sample(props.get(name)) for name in required}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(_text_of(b.get("content") if b.get("type") == "tool_result"
                                 else b.get("text", "")) for b in content if isinstance(b, dict))
    return ""


def build_reply(body: dict[str, Any], model: str, fault: Fault, directives: set[str],
                message_id: str) -> dict[str, Any]:
    """The Messages response the mock answers ``body`` with."""
    messages = body["messages"]
    last = messages[-1]
    blocks = _blocks(last["content"]) if last["role"] == "user" else []
    results = [b for b in blocks if b.get("type") == "tool_result"]
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {"type": "auto"}
    content: list[dict[str, Any]] = []
    stop_reason, stop_sequence = "end_turn", None
    if last["role"] == "user" and not results and tools and choice["type"] != "none":
        if choice["type"] == "tool":
            called = [t for t in tools if t["name"] == choice["name"]]
        else:
            parallel = "parallel-tools" in directives and not choice.get(
                "disable_parallel_tool_use")
            called = tools[:2] if parallel else tools[:1]
            if choice["type"] == "auto":  # unforced, Claude usually says something first
                content.append({"type": "text", "text": f"mock calling {called[0]['name']}"})
        content += [{"type": "tool_use", "id": f"toolu_mock_{k + 1}", "name": tool["name"],
                     "input": _mock_input(tool.get("input_schema"))}
                    for k, tool in enumerate(called)]
        stop_reason = "tool_use"
        output_tokens = len(json.dumps(content)) // 4 + 1
    else:
        if results:
            words = ["mock", "reply", "to", "tool", "result:",
                     *" ".join(_text_of(r.get("content")) for r in results).split()]
        else:
            words = mock_reply_words(messages, fault.words)
        for stop in body.get("stop_sequences") or []:
            if stop in words:
                words, stop_reason, stop_sequence = words[:words.index(stop)], "stop_sequence", stop
        if len(words) > body["max_tokens"]:
            words, stop_reason = words[:body["max_tokens"]], "max_tokens"
        content.append({"type": "text", "text": " ".join(words)})
        output_tokens = len(words)
    system = body.get("system")
    prompt = count_prompt_tokens([*messages, {"content": _text_of(_blocks(system or ""))}])
    usage = {"input_tokens": prompt, "cache_creation_input_tokens": 0,
             "cache_read_input_tokens": 0, "output_tokens": output_tokens}
    if any("cached" in d for d in directives):
        usage["cache_read_input_tokens"] = CACHED_TOKENS
    return {"id": message_id, "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop_reason, "stop_sequence": stop_sequence,
            "usage": usage}


def stream_events(message: dict[str, Any], directives: set[str]) -> list[dict[str, Any]]:
    """The events Anthropic streams for ``message`` (with the error directives)."""
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {**message["usage"], "output_tokens": 1}}
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
    error = ("rate_limit_error" if "stream-throttle" in directives else
             "overloaded_error" if "stream-error" in directives else None)
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            events.append({"type": "content_block_start", "index": index,
                           "content_block": {"type": "text", "text": ""}})
            if index == 0:
                events.append({"type": "ping"})
            for k, word in enumerate(block["text"].split(" ")):
                events.append({"type": "content_block_delta", "index": index, "delta": {
                    "type": "text_delta", "text": word if k == 0 else " " + word}})
                if error:
                    message_text = "Overloaded" if error == "overloaded_error" else "Rate limited"
                    return [*events, {"type": "error", "error": {"type": error,
                                                                 "message": message_text}}]
        else:
            events.append({"type": "content_block_start", "index": index, "content_block": {
                "type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}})
            raw = json.dumps(block["input"])
            cuts = [0, len(raw) // 3, 2 * len(raw) // 3, len(raw)]
            pieces = [""] + [raw[a:b] for a, b in itertools.pairwise(cuts)]
            events += [{"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": piece}}
                       for piece in pieces]
        events.append({"type": "content_block_stop", "index": index})
    events.append({"type": "message_delta", "delta": {
        "stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]},
        "usage": {"output_tokens": message["usage"]["output_tokens"]}})
    events.append({"type": "message_stop"})
    return events


# ------------------------------------------------------------ AWS event stream


def eventstream_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message: prelude (lengths + CRC), string headers,
    payload, CRC32 of everything before it."""
    encoded = b"".join(
        len(name).to_bytes(1, "big") + name + b"\x07" + len(value).to_bytes(2, "big") + value
        for name, value in ((k.encode(), v.encode()) for k, v in headers.items()))
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack(">I", binascii.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", binascii.crc32(message))


def bedrock_event_frame(event: dict[str, Any]) -> bytes:
    data = base64.b64encode(json.dumps(event).encode()).decode()
    payload = json.dumps({"bytes": data, "p": "abcdefghijkl"}).encode()  # Bedrock pads too
    return eventstream_frame({":event-type": "chunk", ":content-type": "application/json",
                              ":message-type": "event"}, payload)


def bedrock_exception_frame(name: str, message: str) -> bytes:
    return eventstream_frame({":exception-type": name, ":content-type": "application/json",
                              ":message-type": "exception"},
                             json.dumps({"message": message}).encode())


# -------------------------------------------------------------------- routes


class AnthropicRoutes:
    def _add_anthropic_routes(self, app: web.Application) -> None:
        """Register this format's routes on the mock's app."""
        for prefix in ("", "/anthropic"):  # /anthropic/v1: beside the OpenAI /v1/models
            app.router.add_post(prefix + "/v1/messages", self._anthropic_messages)
            app.router.add_post(prefix + "/v1/messages/count_tokens", self._anthropic_count)
        app.router.add_get("/anthropic/v1/models", self._anthropic_models)
        app.router.add_post(
            "/v1/projects/{project}/locations/{region}/publishers/anthropic/models/{tail}",
            self._anthropic_vertex)
        app.router.add_post("/model/{model_id:.+}/invoke", self._bedrock_invoke)
        app.router.add_post("/model/{model_id:.+}/invoke-with-response-stream",
                            self._bedrock_invoke)

    # ------------------------------------------------------------- errors

    @staticmethod
    def _anthropic_error(status: int, message: str, *, hosting: str = "",
                         retry_after: int | None = None) -> web.Response:
        headers = {"Retry-After": str(retry_after)} if retry_after else {}
        if hosting == "bedrock":
            name = _BEDROCK_ERRORS.get(status, "InternalServerException")
            headers["x-amzn-ErrorType"] = f"{name}:http://internal.amazon.com/coral/com.amazon.bedrock/"
            return web.json_response({"message": message}, status=status, headers=headers)
        etype = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return web.json_response({"type": "error", "error": {"type": etype, "message": message}},
                                 status=status, headers=headers)

    # ----------------------------------------------------------- handlers

    def _direct_auth(self, record: RequestRecord) -> web.Response | None:
        api_key: str | None = self.api_key  # type: ignore[attr-defined]
        if api_key is not None and record.headers.get("x-api-key") != api_key:
            return self._anthropic_error(401, "invalid x-api-key")
        if not record.headers.get("anthropic-version"):
            return self._anthropic_error(400, "anthropic-version: header is required")
        return None

    async def _anthropic_messages(self, request: web.Request) -> web.StreamResponse:
        record: RequestRecord = request[_RECORD_KEY]
        denied = self._direct_auth(record)
        if denied is not None:
            return denied
        body = record.body
        model = body.get("model") if isinstance(body, dict) else None
        stream = isinstance(body, dict) and body.get("stream") is True
        return await self._anthropic_serve(request, "", str(model or ""), stream)

    async def _anthropic_count(self, request: web.Request) -> web.StreamResponse:
        record: RequestRecord = request[_RECORD_KEY]
        denied = self._direct_auth(record)
        if denied is not None:
            return denied
        body = record.body
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return self._anthropic_error(400, "model: Field required")
        error = _validate_messages(body.get("messages"))
        if error:
            return self._anthropic_error(400, error)
        record.model = body["model"]
        return web.json_response({"input_tokens": count_prompt_tokens(body["messages"])})

    async def _anthropic_models(self, request: web.Request) -> web.StreamResponse:
        denied = self._direct_auth(request[_RECORD_KEY])
        if denied is not None:
            return denied
        data = [{"type": "model", "id": m, "display_name": m, "created_at": "2026-01-01T00:00:00Z"}
                for m in ANTHROPIC_MODELS]
        return web.json_response({"data": data, "has_more": False, "first_id": data[0]["id"],
                                  "last_id": data[-1]["id"]})

    async def _anthropic_vertex(self, request: web.Request) -> web.StreamResponse:
        record: RequestRecord = request[_RECORD_KEY]
        if not self._check_bearer(record.headers):  # type: ignore[attr-defined]
            return web.json_response({"error": {
                "code": 401, "status": "UNAUTHENTICATED",
                "message": "Request had invalid authentication credentials."}}, status=401)
        model, _, action = request.match_info["tail"].rpartition(":")
        if action not in ("rawPredict", "streamRawPredict") or not model:
            return web.json_response({"error": {"code": 404, "status": "NOT_FOUND",
                                                "message": f"unknown method {action}"}},
                                     status=404)
        stream = action == "streamRawPredict"
        body = record.body
        if isinstance(body, dict) and bool(body.get("stream")) != stream:
            return self._anthropic_error(400, f"{action} needs stream="
                                              f"{'true' if stream else 'false'} in the body")
        return await self._anthropic_serve(request, "vertex", model, stream)

    async def _bedrock_invoke(self, request: web.Request) -> web.StreamResponse:
        record: RequestRecord = request[_RECORD_KEY]
        denied = self._check_sigv4(request, record.raw_body,  # type: ignore[attr-defined]
                                   service="bedrock")
        if denied is not None:
            return web.json_response({"message": denied}, status=403, headers={
                "x-amzn-ErrorType": "InvalidSignatureException:http://internal.amazon.com/"})
        stream = request.path.endswith("/invoke-with-response-stream")
        return await self._anthropic_serve(request, "bedrock", request.match_info["model_id"],
                                           stream)

    async def _anthropic_serve(self, request: web.Request, hosting: str, model: str,
                               stream: bool) -> web.StreamResponse:
        record: RequestRecord = request[_RECORD_KEY]
        record.model, record.stream = model, stream
        error = validate_request(record.body, hosting)
        if error:
            return self._anthropic_error(400, error, hosting=hosting)
        fault: Fault = self._take_fault(model)  # type: ignore[attr-defined]
        record.fault = fault
        # Delay and hang as the OpenAI mock does; the error in this format's shape.
        await self._apply_pre_response_faults(  # type: ignore[attr-defined]
            request, dataclasses.replace(fault, status=None))
        if fault.status is not None:
            return self._anthropic_error(fault.status, f"mock upstream error {fault.status}",
                                         hosting=hosting, retry_after=fault.retry_after)
        directives = _directives(model)
        message = build_reply(record.body, model, fault, directives,
                              f"msg_mock_{next(self._ids)}")  # type: ignore[attr-defined]
        if not stream:
            if fault.cut is not None:
                return await self._send_cut_body(  # type: ignore[attr-defined]
                    request, 200, message)
            return web.json_response(message)
        events = stream_events(message, directives)
        if hosting == "bedrock":
            return await self._bedrock_stream(request, fault, events, directives)
        frames = [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events]
        if "bad-json" in directives:
            frames.insert(1, b"event: content_block_delta\ndata: {oops\n\n")
        return await self._send_stream(request, fault, frames, "text/event-stream; charset=utf-8")

    async def _bedrock_stream(self, request: web.Request, fault: Fault,
                              events: list[dict[str, Any]], directives: set[str]
                              ) -> web.StreamResponse:
        frames = [bedrock_event_frame(e) for e in events if e["type"] != "error"]
        if "bad-json" in directives:
            frames.insert(1, eventstream_frame(
                {":event-type": "chunk", ":message-type": "event"},
                json.dumps({"bytes": base64.b64encode(b"{oops").decode()}).encode()))
        if events[-1]["type"] == "error":
            name = ("throttlingException" if "stream-throttle" in directives
                    else "modelStreamErrorException")
            frames.append(bedrock_exception_frame(name, events[-1]["error"]["message"]))
        tail = b""
        if fault.cut is not None and fault.cut < len(frames):
            tail = frames[fault.cut][: len(frames[fault.cut]) // 2]
            frames = frames[: fault.cut]
            fault = dataclasses.replace(fault, cut=None)
        return await self._send_stream(request, fault, frames,
                                       "application/vnd.amazon.eventstream", tail=tail)

    async def _send_stream(self, request: web.Request, fault: Fault, frames: list[bytes],
                           content_type: str, *, tail: bytes = b"") -> web.StreamResponse:
        """Write ``frames`` (``cut-N``: abort after N), then ``tail``, then end."""
        resp = web.StreamResponse(status=200, headers={"Content-Type": content_type,
                                                       "Cache-Control": "no-cache",
                                                       "request-id": "req_mock"})
        return await self._write_stream(  # type: ignore[attr-defined]
            request, fault, resp, frames, tail=tail)
