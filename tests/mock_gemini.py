"""The gemini wire format of the mock upstream, as a mixin of ``MockUpstream``.

Google AI: ``GET /v1beta/models`` and ``POST /v1beta/models/{model}:{action}``
with ``x-goog-api-key`` (a wrong key is a 400 ``API_KEY_INVALID``, as Google
answers). Vertex AI: ``POST /v1/projects/{p}/locations/{r}/publishers/google/
models/{model}:{action}`` with a bearer token from the mock's ``/oauth2/token``
(else 401). Actions: ``generateContent``, ``streamGenerateContent`` (SSE with
``alt=sse``, else a streamed JSON array), ``countTokens``, ``embedContent``
and ``batchEmbedContents`` (Google AI), ``predict`` embeddings (Vertex).

Bodies are checked the way Gemini checks them (unknown fields, roles, function
responses that match no declaration, JSON-schema keys Gemini has no field for)
and errors are Gemini's ``{"error": {"code", "message", "status"}}``.

The fault directives of the OpenAI mock apply (the model is the URL's), plus
tokens of this format: ``thinking`` (a thought part and thought tokens),
``blocked`` (the prompt is blocked: no candidates, ``promptFeedback``),
``nofinish`` (a stream that ends cleanly but without a finish reason),
``midstream-error`` (a stream whose second object is an error object) and
``badjson`` (a stream whose second event is not JSON).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from aiohttp import web

from mock_data import DEFAULT_EMBEDDING_DIMENSIONS, count_prompt_tokens, mock_reply_words
from mock_data import mock_embedding as _embedding
from mock_faults import _SPLIT_RE, Fault, RequestRecord
from mock_openai import _RECORD_KEY

#: Models ``GET /v1beta/models`` lists.
GEMINI_MODELS: tuple[str, ...] = (
    "gemini-2.5-pro",
    "gemini-2.5-flash",
    "gemini-2.0-flash",
    "gemini-2.0-flash-lite",
    "gemini-embedding-001",
    "text-embedding-004",
)
#: The mock's largest page: smaller than the list, so clients must follow
#: ``nextPageToken`` (Google's own default page is 50).
GEMINI_PAGE_SIZE = 4
#: ``batchEmbedContents`` refuses more requests than this, as Google does.
GEMINI_BATCH_LIMIT = 100

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_REQUEST_KEYS = frozenset({"contents", "tools", "toolConfig", "safetySettings",
                           "systemInstruction", "generationConfig", "cachedContent", "labels"})
_GENERATION_KEYS = frozenset({
    "temperature", "topP", "topK", "candidateCount", "maxOutputTokens", "stopSequences",
    "presencePenalty", "frequencyPenalty", "seed", "responseMimeType", "responseSchema",
    "responseJsonSchema", "responseLogprobs", "logprobs", "thinkingConfig",
    "responseModalities", "mediaResolution", "speechConfig",
})
#: Fields of Gemini's ``Schema``; anything else is "Unknown name" there.
_SCHEMA_KEYS = frozenset({
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
    "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
    "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum",
    "maximum",
})
_PART_KEYS = frozenset({"text", "inlineData", "fileData", "functionCall", "functionResponse",
                        "thought", "thoughtSignature", "executableCode",
                        "codeExecutionResult"})
_ARG_VALUES: dict[str, Any] = {"string": "mock", "integer": 1, "number": 1.5,
                               "boolean": True, "array": [], "object": {}}


def gemini_error(status: int, message: str, *, reason: str | None = None,
                 retry_after: int | None = None) -> web.Response:
    """Google's error body (``google.rpc.Status``), with ErrorInfo/RetryInfo details."""
    error: dict[str, Any] = {"code": status, "message": message,
                             "status": _STATUS_NAMES.get(status, "UNKNOWN")}
    details: list[dict[str, Any]] = []
    if reason:
        details.append({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason,
                        "domain": "googleapis.com"})
    if retry_after:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": f"{retry_after}s"})
    if details:
        error["details"] = details
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return web.json_response({"error": error}, status=status, headers=headers)


def _bad(message: str) -> web.Response:
    return gemini_error(400, message)


# ------------------------------------------------------------------ validation


def _schema_error(schema: Any, where: str) -> str | None:
    if not isinstance(schema, dict):
        return f"Invalid value at '{where}': a schema must be an object"
    for key, value in schema.items():
        if key not in _SCHEMA_KEYS:
            return (f'Invalid JSON payload received. Unknown name "{key}" at '
                    f"'{where}': Cannot find field.")
        if key == "properties":
            if not isinstance(value, dict):
                return f"Invalid value at '{where}.properties'"
            for name, sub in value.items():
                err = _schema_error(sub, f"{where}.properties[{name}].value")
                if err:
                    return err
        elif key == "items":
            err = _schema_error(value, f"{where}.items")
            if err:
                return err
        elif key == "anyOf":
            for i, sub in enumerate(value if isinstance(value, list) else [None]):
                err = _schema_error(sub, f"{where}.any_of[{i}]")
                if err:
                    return err
    if (where.endswith(".parameters") and str(schema.get("type", "")).lower() == "object"
            and not schema.get("properties")):
        return f"* {where}.properties: should be non-empty for OBJECT type"
    return None


def _declared(body: dict[str, Any]) -> list[dict[str, Any]]:
    decls: list[dict[str, Any]] = []
    for tool in body.get("tools") or []:
        if isinstance(tool, dict):
            decls += [d for d in tool.get("functionDeclarations") or [] if isinstance(d, dict)]
    return decls


def _tools_error(body: dict[str, Any]) -> str | None:
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        return "Invalid value at 'tools': must be a list"
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            return f"Invalid value at 'tools[{i}]'"
        for j, decl in enumerate(tool.get("functionDeclarations") or []):
            where = f"tools[{i}].function_declarations[{j}]"
            if not isinstance(decl, dict) or not isinstance(decl.get("name"), str):
                return f"* {where}.name: Required field is not set"
            unknown = set(decl) - {"name", "description", "parameters", "response",
                                   "parametersJsonSchema"}
            if unknown:
                return (f'Invalid JSON payload received. Unknown name "{unknown.pop()}" '
                        f"at '{where}': Cannot find field.")
            if "parameters" in decl:
                err = _schema_error(decl["parameters"], f"{where}.parameters")
                if err:
                    return err
    return None


def _part_error(part: Any, where: str, role: str, declared: set[str]) -> str | None:
    if not isinstance(part, dict) or not part:
        return f"Invalid value at '{where}'"
    unknown = set(part) - _PART_KEYS
    if unknown:
        return f"Invalid JSON payload received. Unknown name \"{unknown.pop()}\" at '{where}'"
    if "text" in part and not isinstance(part["text"], str):
        return f"Invalid value at '{where}.text'"
    call = part.get("functionCall")
    if call is not None and (role != "model" or not isinstance(call, dict)
                             or not isinstance(call.get("args", {}), dict)):
        return f"Invalid value at '{where}.function_call'"
    response = part.get("functionResponse")
    if response is not None:
        if not isinstance(response, dict) or not isinstance(response.get("response"), dict):
            return (f"Invalid value at '{where}.function_response.response' "
                    "(type.googleapis.com/google.protobuf.Struct)")
        if response.get("name") not in declared:
            return (f"* {where}.function_response.name: function response name "
                    f"{response.get('name')!r} does not match any declared function")
    for key in ("inlineData", "fileData"):
        data = part.get(key)
        if data is not None and (not isinstance(data, dict) or not data.get("mimeType")):
            return f"* {where}.{key}.mime_type: Required field is not set"
    return None


def _contents_error(contents: Any, declared: set[str]) -> str | None:
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    for i, content in enumerate(contents):
        if not isinstance(content, dict):
            return f"Invalid value at 'contents[{i}]'"
        role = content.get("role", "user")
        if role not in ("user", "model"):
            return "Please use a valid role: user, model."
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            return (f"* GenerateContentRequest.contents[{i}].parts: "
                    "contents.parts must not be empty.")
        for j, part in enumerate(parts):
            err = _part_error(part, f"contents[{i}].parts[{j}]", role, declared)
            if err:
                return err
    return None


def _generate_error(body: Any) -> str | None:
    """What Gemini would answer 400 for, or None."""
    if not isinstance(body, dict):
        return "Invalid JSON payload received."
    unknown = set(body) - _REQUEST_KEYS
    if unknown:
        return f'Invalid JSON payload received. Unknown name "{unknown.pop()}": Cannot find field.'
    err = _tools_error(body)
    if err:
        return err
    declared = {d["name"] for d in _declared(body)}
    err = _contents_error(body.get("contents"), declared)
    if err:
        return err
    system = body.get("systemInstruction")
    if system is not None and (not isinstance(system, dict)
                               or not isinstance(system.get("parts"), list)):
        return "Invalid value at 'system_instruction'"
    config = body.get("generationConfig")
    if config is not None:
        if not isinstance(config, dict):
            return "Invalid value at 'generation_config'"
        unknown = set(config) - _GENERATION_KEYS
        if unknown:
            return (f'Invalid JSON payload received. Unknown name "{unknown.pop()}" at '
                    "'generation_config': Cannot find field.")
        if "responseSchema" in config:
            err = _schema_error(config["responseSchema"], "generation_config.response_schema")
            if err:
                return err
    mode = ((body.get("toolConfig") or {}).get("functionCallingConfig") or {}).get("mode")
    if mode not in (None, "AUTO", "ANY", "NONE", "VALIDATED"):
        return "Invalid value at 'tool_config.function_calling_config.mode'"
    return None


# ----------------------------------------------------------------- the answer


def _part_text(part: dict[str, Any]) -> str:
    if isinstance(part.get("text"), str) and not part.get("thought"):
        return part["text"]
    response = part.get("functionResponse")
    if isinstance(response, dict):
        result = json.dumps(response.get("response"), sort_keys=True, separators=(",", ":"))
        return f"{response.get('name')}={result}"
    return ""


def _as_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation in OpenAI terms, for the mock's shared reply helpers."""
    messages: list[dict[str, Any]] = []
    system = body.get("systemInstruction")
    if isinstance(system, dict):
        text = " ".join(_part_text(p) for p in system.get("parts") or [] if isinstance(p, dict))
        messages.append({"role": "system", "content": text})
    for content in body["contents"]:
        text = " ".join(t for t in (_part_text(p) for p in content["parts"]) if t)
        role = "assistant" if content.get("role") == "model" else "user"
        messages.append({"role": role, "content": text})
    return messages


def _function_call(body: dict[str, Any]) -> dict[str, Any] | None:
    """The call to answer with: tools declared, calls allowed, and no tool
    result in the last user turn yet (after one, the model answers text)."""
    decls = _declared(body)
    config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    if not decls or config.get("mode") == "NONE":
        return None
    last = body["contents"][-1]
    if last.get("role", "user") != "user" or any(
            "functionResponse" in p for p in last["parts"]):
        return None
    allowed = config.get("allowedFunctionNames") or [d["name"] for d in decls]
    decl = next(d for d in decls if d["name"] == allowed[0])
    params = decl.get("parameters") or {}
    props = params.get("properties") or {}
    args = {name: _ARG_VALUES.get(str(props.get(name, {}).get("type", "string")).lower(), "mock")
            for name in params.get("required") or []}
    return {"name": decl["name"], "args": args}


@dataclasses.dataclass
class _Answer:
    """One generateContent answer, sent whole or as stream events."""

    response_id: str
    model: str
    prompt_tokens: int
    words: list[str]
    finish: str
    call: dict[str, Any] | None
    thinking: bool
    blocked: bool
    candidates: int = 1
    no_finish: bool = False
    midstream_error: bool = False
    bad_json: bool = False

    def usage(self, output: int) -> dict[str, Any]:
        usage = {"promptTokenCount": self.prompt_tokens, "candidatesTokenCount": output,
                 "totalTokenCount": self.prompt_tokens + output + (3 if self.thinking else 0),
                 "promptTokensDetails": [{"modality": "TEXT",
                                          "tokenCount": self.prompt_tokens}]}
        if self.thinking:
            usage["thoughtsTokenCount"] = 3
        return usage

    def event(self, parts: list[dict[str, Any]], output: int,
              finish: str | None) -> dict[str, Any]:
        candidates = []
        for i in range(self.candidates):
            cand: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": i}
            if finish:
                cand["finishReason"] = finish
            candidates.append(cand)
        return {"candidates": candidates, "usageMetadata": self.usage(output),
                "modelVersion": self.model, "responseId": self.response_id}

    def whole(self) -> dict[str, Any]:
        if self.blocked:
            return {"promptFeedback": {"blockReason": "SAFETY"},
                    "usageMetadata": self.usage(0), "modelVersion": self.model,
                    "responseId": self.response_id}
        parts: list[dict[str, Any]] = []
        if self.thinking:
            parts.append({"text": "thinking it over", "thought": True})
        if self.call is not None:
            return self.event([*parts, {"functionCall": self.call}], 5, self.finish)
        parts.append({"text": " ".join(self.words)})
        return self.event(parts, len(self.words), self.finish)

    def events(self) -> list[dict[str, Any]]:
        """Stream objects: text split over events (two words each, every other
        event as two parts), cumulative usage on each, the finish on the last."""
        if self.blocked or self.call is not None:
            return [self.whole()]
        texts = [w if i == 0 else " " + w for i, w in enumerate(self.words)] or [""]
        groups = [texts[i:i + 2] for i in range(0, len(texts), 2)]
        events: list[dict[str, Any]] = []
        if self.thinking:
            events.append(self.event([{"text": "thinking it over", "thought": True}], 0, None))
        done = 0
        for k, group in enumerate(groups):
            parts = ([{"text": t} for t in group] if k % 2 == 1 and len(group) == 2
                     else [{"text": "".join(group)}])
            done += sum(1 for t in group if t)
            last = k == len(groups) - 1 and not self.no_finish
            events.append(self.event(parts, done, self.finish if last else None))
        if self.midstream_error:
            events[1:] = [{"error": {"code": 503, "message": "The model is overloaded.",
                                     "status": "UNAVAILABLE"}}]
        return events


# ---------------------------------------------------------------------- routes


class GeminiRoutes:
    api_key: str | None

    def _add_gemini_routes(self, app: web.Application) -> None:
        """Register this format's routes on the mock's app."""
        # aiohttp cannot route ``{model}:{action}`` inside one segment.
        app.router.add_get("/v1beta/models", self._gemini_list_models)
        app.router.add_post("/v1beta/models/{tail}", self._gemini_direct)
        app.router.add_post(
            "/v1/projects/{project}/locations/{location}/publishers/google/models/{tail}",
            self._gemini_vertex)

    def _gemini_key_error(self, request: web.Request) -> web.Response | None:
        record: RequestRecord = request[_RECORD_KEY]
        if self.api_key is not None and record.headers.get("x-goog-api-key") != self.api_key:
            return gemini_error(400, "API key not valid. Please pass a valid API key.",
                                reason="API_KEY_INVALID")
        return None

    async def _gemini_list_models(self, request: web.Request) -> web.Response:
        error = self._gemini_key_error(request)
        if error is not None:
            return error
        try:
            size = min(int(request.query.get("pageSize", "50")), GEMINI_PAGE_SIZE)
            start = int(request.query.get("pageToken") or 0)
        except ValueError:
            return _bad("Invalid pageSize or pageToken")
        names = GEMINI_MODELS[start:start + size]
        body: dict[str, Any] = {"models": [
            {"name": f"models/{m}", "displayName": m,
             "supportedGenerationMethods": (["embedContent"] if "embedding" in m
                                            else ["generateContent", "countTokens"])}
            for m in names]}
        if start + size < len(GEMINI_MODELS):
            body["nextPageToken"] = str(start + size)
        return web.json_response(body)

    async def _gemini_direct(self, request: web.Request) -> web.StreamResponse:
        error = self._gemini_key_error(request)
        if error is not None:
            return error
        return await self._gemini_dispatch(request, vertex=False)

    async def _gemini_vertex(self, request: web.Request) -> web.StreamResponse:
        record: RequestRecord = request[_RECORD_KEY]
        if not self._check_bearer(record.headers):  # type: ignore[attr-defined]
            return gemini_error(401, "Request had invalid authentication credentials. "
                                "Expected OAuth 2 access token, login cookie or other valid "
                                "authentication credential.",
                                reason="ACCESS_TOKEN_TYPE_UNSUPPORTED")
        return await self._gemini_dispatch(request, vertex=True)

    async def _gemini_dispatch(self, request: web.Request, *, vertex: bool) -> web.StreamResponse:
        record: RequestRecord = request[_RECORD_KEY]
        model, sep, action = request.match_info["tail"].rpartition(":")
        handlers = {"generateContent": self._gemini_generate,
                    "streamGenerateContent": self._gemini_generate,
                    "countTokens": self._gemini_count_tokens}
        if vertex:
            handlers["predict"] = self._gemini_predict
        else:
            handlers["embedContent"] = self._gemini_embed_content
            handlers["batchEmbedContents"] = self._gemini_batch_embed
        handler = handlers.get(action) if sep and model else None
        if handler is None:
            return gemini_error(404, f"Method not found: {action or request.path}.")
        record.model = model
        record.stream = action == "streamGenerateContent"
        return await handler(request, model, action)

    async def _gemini_faults(self, request: web.Request, model: str
                             ) -> tuple[Fault, web.Response | None]:
        """The request's fault; a Gemini-shaped error when it says to fail."""
        record: RequestRecord = request[_RECORD_KEY]
        fault: Fault = self._take_fault(model)  # type: ignore[attr-defined]
        record.fault = fault
        # Delays and hangs from the shared helper; the error body is Gemini's.
        await self._apply_pre_response_faults(  # type: ignore[attr-defined]
            request, dataclasses.replace(fault, status=None))
        if fault.status is not None:
            return fault, gemini_error(fault.status, f"mock upstream error {fault.status}",
                                       retry_after=fault.retry_after)
        return fault, None

    async def _gemini_generate(self, request: web.Request, model: str,
                               action: str) -> web.StreamResponse:
        record: RequestRecord = request[_RECORD_KEY]
        body = record.body
        err = _generate_error(body)
        if err:
            return _bad(err)
        fault, error = await self._gemini_faults(request, model)
        if error is not None:
            return error
        answer = self._gemini_answer(body, model, fault)
        if action == "generateContent":
            return await self._gemini_json(request, fault, answer.whole())
        sse = request.query.get("alt") == "sse"
        return await self._gemini_stream(request, fault, answer.events(), sse=sse,
                                         bad_json=answer.bad_json)

    def _gemini_answer(self, body: dict[str, Any], model: str, fault: Fault) -> _Answer:
        tokens = set(_SPLIT_RE.split(model.lower()))
        messages = _as_messages(body)
        config = body.get("generationConfig") or {}
        words = mock_reply_words(messages, fault.words)
        finish = "STOP"
        limit = config.get("maxOutputTokens")
        if isinstance(limit, int) and 0 < limit < len(words):
            words, finish = words[:limit], "MAX_TOKENS"
        return _Answer(response_id=f"mock-{next(self._ids)}",  # type: ignore[attr-defined]
                       model=model, prompt_tokens=count_prompt_tokens(messages), words=words,
                       finish=finish, call=_function_call(body), thinking="thinking" in tokens,
                       blocked="blocked" in tokens, no_finish="nofinish" in tokens,
                       midstream_error="midstream-error" in tokens,
                       bad_json="badjson" in tokens,
                       candidates=max(1, int(config.get("candidateCount") or 1)))

    async def _gemini_json(self, request: web.Request, fault: Fault,
                           payload: dict[str, Any]) -> web.StreamResponse:
        """A whole JSON answer; ``cut-N`` sends half of it, then aborts."""
        if fault.cut is not None:
            return await self._send_cut_body(request, 200, payload)  # type: ignore[attr-defined]
        return web.json_response(payload)

    async def _gemini_stream(self, request: web.Request, fault: Fault,
                             events: list[dict[str, Any]], *, sse: bool,
                             bad_json: bool = False) -> web.StreamResponse:
        """SSE (``data: {...}`` + CRLF CRLF, as Google sends it; no [DONE],
        the stream ends at EOF) or, without ``alt=sse``, one JSON array."""
        content_type = "text/event-stream" if sse else "application/json"
        resp = web.StreamResponse(status=200, headers={"Content-Type": content_type})
        pieces: list[bytes] = []
        for i, event in enumerate(events):
            text = "{not json" if bad_json and i == 1 else json.dumps(event)
            data = f"data: {text}\r\n\r\n" if sse else ("[" if i == 0 else ",\r\n") + text
            pieces.append(data.encode())
        return await self._write_stream(  # type: ignore[attr-defined]
            request, fault, resp, pieces, tail=b"" if sse else b"]")

    async def _gemini_count_tokens(self, request: web.Request, model: str,
                                   action: str) -> web.StreamResponse:
        body = request[_RECORD_KEY].body
        if isinstance(body, dict) and isinstance(body.get("generateContentRequest"), dict):
            body = body["generateContentRequest"]
        err = _generate_error(body)
        if err:
            return _bad(err)
        _fault, error = await self._gemini_faults(request, model)
        if error is not None:
            return error
        return web.json_response({"totalTokens": count_prompt_tokens(_as_messages(body))})

    async def _gemini_embed_content(self, request: web.Request, model: str,
                                    action: str) -> web.StreamResponse:
        body = request[_RECORD_KEY].body
        text, err = _embed_text(body, "EmbedContentRequest")
        if err:
            return _bad(err)
        fault, error = await self._gemini_faults(request, model)
        if error is not None:
            return error
        dims = body.get("outputDimensionality") or DEFAULT_EMBEDDING_DIMENSIONS
        payload = {"embedding": {"values": _embedding(text, dims)}}
        return await self._gemini_json(request, fault, payload)

    async def _gemini_batch_embed(self, request: web.Request, model: str,
                                  action: str) -> web.StreamResponse:
        body = request[_RECORD_KEY].body
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            return _bad("* BatchEmbedContentsRequest.requests: requests is not specified")
        if len(requests) > GEMINI_BATCH_LIMIT:
            return _bad("* BatchEmbedContentsRequest.requests: at most "
                        f"{GEMINI_BATCH_LIMIT} requests can be in one batch")
        values: list[dict[str, Any]] = []
        for i, req in enumerate(requests):
            text, err = _embed_text(req, f"BatchEmbedContentsRequest.requests[{i}]")
            if err:
                return _bad(err)
            if req.get("model") != f"models/{model}":
                return _bad(f"* BatchEmbedContentsRequest.requests[{i}].model: the model "
                            f"must be models/{model}, as in the URL")
            dims = req.get("outputDimensionality") or DEFAULT_EMBEDDING_DIMENSIONS
            values.append({"values": _embedding(text, dims)})
        fault, error = await self._gemini_faults(request, model)
        if error is not None:
            return error
        return await self._gemini_json(request, fault, {"embeddings": values})

    async def _gemini_predict(self, request: web.Request, model: str,
                              action: str) -> web.StreamResponse:
        """Vertex text embeddings: ``instances[].content`` -> ``predictions``."""
        body = request[_RECORD_KEY].body
        instances = body.get("instances") if isinstance(body, dict) else None
        if not isinstance(instances, list) or not instances or not all(
                isinstance(i, dict) and isinstance(i.get("content"), str) for i in instances):
            return _bad("instances must be a non-empty list of {content: string}")
        if model.startswith("gemini-embedding") and len(instances) > 1:
            # Vertex's gemini-embedding-001 takes one text per request.
            return _bad(f"Model {model} supports only one instance per request")
        params = body.get("parameters") or {}
        if set(params) - {"outputDimensionality", "autoTruncate"}:
            return _bad("Unknown name in parameters")
        fault, error = await self._gemini_faults(request, model)
        if error is not None:
            return error
        dims = params.get("outputDimensionality") or DEFAULT_EMBEDDING_DIMENSIONS
        predictions = [{"embeddings": {"values": _embedding(i["content"], dims),
                                       "statistics": {"token_count": len(i["content"]) // 4 + 1,
                                                      "truncated": False}}}
                       for i in instances]
        chars = sum(len(i["content"]) for i in instances)
        return await self._gemini_json(request, fault, {
            "predictions": predictions, "metadata": {"billableCharacterCount": chars}})


def _embed_text(req: Any, where: str) -> tuple[str, str | None]:
    content = req.get("content") if isinstance(req, dict) else None
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list) or not parts or not all(
            isinstance(p, dict) and isinstance(p.get("text"), str) for p in parts):
        return "", f"* {where}.content: content must have text parts"
    return " ".join(p["text"] for p in parts), None
