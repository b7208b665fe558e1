"""OpenAI chat/embeddings <-> Gemini ``generateContent`` and embeddings.

Pure functions (no I/O). A request the client got wrong raises
:class:`TranslationError`, which the adapter turns into a 400.

The original gateway lost most of the conversation on the way to Gemini
(assistant tool calls, function names of tool results, images, several system
messages) and answered tool calls with ``finish_reason: stop`` and ids equal
to the function name. Everything here keeps the conversation whole.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import time
import uuid
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

import msgspec

_json_encode = msgspec.json.encode
_json_decode = msgspec.json.decode


class TranslationError(ValueError):
    """The OpenAI request cannot be expressed in Gemini terms (a client error)."""

    def __init__(self, message: str, *, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# ===================================================================== request

#: Schema fields Gemini's ``Schema`` message knows; any other key (``$schema``,
#: ``additionalProperties``, ``strict``, ``examples``, ...) makes it answer
#: 400 "Unknown name". A whitelist, because the list of rejected keys is open.
_SCHEMA_KEYS = frozenset({
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
    "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
    "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum",
    "maximum",
})
#: String formats Gemini accepts; others (``uri``, ``email``) are refused with a 400.
_FORMATS = frozenset({"enum", "date-time", "int32", "int64", "float", "double"})
#: Guard against recursive ``$ref`` schemas, which Gemini cannot express anyway.
_MAX_SCHEMA_DEPTH = 32

_TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
_IMAGE_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg",
                "webp": "image/webp", "gif": "image/gif", "heic": "image/heic",
                "heif": "image/heif", "pdf": "application/pdf"}


def chat_request(payload: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat request -> a ``generateContent`` body (the model is in the URL)."""
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise TranslationError("'messages' must be a non-empty array")
    system, contents = _contents(messages)
    if not contents:
        # Gemini refuses an empty ``contents``; a system prompt alone is no turn.
        raise TranslationError("at least one user or assistant message is required")
    body: dict[str, Any] = {"contents": contents}
    if system:
        # Several system/developer messages all count (the original kept the last).
        body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    declarations = _function_declarations(payload.get("tools"))
    if declarations:
        body["tools"] = [{"functionDeclarations": declarations}]
        tool_config = _tool_config(payload.get("tool_choice"))
        if tool_config is not None:
            body["toolConfig"] = {"functionCallingConfig": tool_config}
    config = _generation_config(payload)
    if config:
        body["generationConfig"] = config
    return body


def _contents(messages: list[Any]) -> tuple[list[str], list[dict[str, Any]]]:
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    #: tool_call_id -> function name, from earlier assistant turns: Gemini pairs
    #: a functionResponse with its call by the function's name.
    call_names: dict[str, str] = {}
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise TranslationError(f"messages[{i}] must be an object")
        role = msg.get("role")
        if role in ("system", "developer"):
            text = _plain_text(msg.get("content"), i)
            if text:
                system.append(text)
            continue
        if role == "user":
            turn, parts = "user", _user_parts(msg.get("content"), i)
        elif role == "assistant":
            turn, parts = "model", _assistant_parts(msg, i, call_names)
        elif role in ("tool", "function"):
            turn, parts = "user", [_function_response(msg, i, call_names)]
        else:
            raise TranslationError(f"messages[{i}].role {role!r} is not supported")
        if not parts:
            continue  # Gemini refuses a turn without parts (e.g. content "")
        if contents and contents[-1]["role"] == turn:
            # Gemini wants alternating turns: tool results, or two user
            # messages in a row, share one turn.
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": turn, "parts": parts})
    return system, contents


def _plain_text(content: Any, i: int) -> str:
    """Text of a system/tool message: a string or text parts only."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            else:
                raise TranslationError(f"messages[{i}].content may only hold text parts")
        return "\n".join(texts)
    raise TranslationError(f"messages[{i}].content must be a string or an array of parts")


def _user_parts(content: Any, i: int) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise TranslationError(f"messages[{i}].content must be a string or an array of parts")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise TranslationError(f"{where}.text must be a string")
            if text:
                parts.append({"text": text})
        elif kind == "image_url":
            parts.append(_image_part(part.get("image_url"), where))
        elif kind == "input_audio":
            parts.append(_audio_part(part.get("input_audio"), where))
        elif kind == "file":
            parts.append(_file_part(part.get("file"), where))
        else:
            raise TranslationError(f"{where}: part type {kind!r} is not supported by Gemini")
    return parts


def _image_part(image: Any, where: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise TranslationError(f"{where}.image_url.url must be a non-empty string")
    if url.startswith("data:"):
        return _data_url_part(url, where)
    if url.startswith(("http://", "https://", "gs://")):
        path = urlsplit(url).path
        ext = path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
        # Gemini needs a MIME type for a URI; most image URLs name their type.
        mime = _IMAGE_TYPES.get(ext, "image/jpeg")
        return {"fileData": {"mimeType": mime, "fileUri": url}}
    raise TranslationError(f"{where}.image_url.url must be a data: or http(s) URL")


def _data_url_part(url: str, where: str) -> dict[str, Any]:
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise TranslationError(f"{where}: malformed data: URL")
    fields = header.split(";")
    mime = fields[0] or "text/plain"
    if "base64" in fields[1:]:
        data = payload
    else:  # a percent-encoded data URL: Gemini wants base64
        data = base64.b64encode(unquote_to_bytes(payload)).decode("ascii")
    return {"inlineData": {"mimeType": mime, "data": data}}


def _audio_part(audio: Any, where: str) -> dict[str, Any]:
    if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
        raise TranslationError(f"{where}.input_audio must have base64 'data'")
    fmt = str(audio.get("format") or "wav")
    return {"inlineData": {"mimeType": f"audio/{fmt}", "data": audio["data"]}}


def _file_part(file: Any, where: str) -> dict[str, Any]:
    data = file.get("file_data") if isinstance(file, dict) else None
    if isinstance(data, str) and data.startswith("data:"):
        return _data_url_part(data, where)
    # OpenAI file ids point into OpenAI's own storage: nothing Gemini can read.
    raise TranslationError(f"{where}: only inline file_data (a data: URL) is supported",
                           code="unsupported")


def _assistant_parts(msg: dict[str, Any], i: int,
                     call_names: dict[str, str]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    content = msg.get("content")
    if isinstance(content, list):  # text and refusal parts; a refusal is no model text
        content = "\n".join(str(p.get("text", "")) for p in content
                            if isinstance(p, dict) and p.get("type") == "text")
    elif content is not None and not isinstance(content, str):
        raise TranslationError(f"messages[{i}].content must be a string or an array of parts")
    if content:
        parts.append({"text": content})
    calls = msg.get("tool_calls")
    legacy = msg.get("function_call")
    if not calls and isinstance(legacy, dict):
        calls = [{"id": "", "function": legacy}]
    for j, call in enumerate(calls or []):
        fn = call.get("function") if isinstance(call, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or not name:
            raise TranslationError(f"messages[{i}].tool_calls[{j}].function.name is required")
        call_id = call.get("id")
        if isinstance(call_id, str) and call_id:
            call_names[call_id] = name
        parts.append({"functionCall": {"name": name, "args": _call_args(fn.get("arguments"))}})
    return parts


def _call_args(raw: Any) -> dict[str, Any]:
    """Gemini's ``args`` is an object; OpenAI's ``arguments`` a JSON string."""
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str) or not raw.strip():
        return {}
    try:
        value = _json_decode(raw)
    except msgspec.DecodeError:
        value = None
    # A model can have produced arguments that are not an object; rejecting
    # the whole conversation for it would strand the client, so keep the text.
    return value if isinstance(value, dict) else {"arguments": raw}


def _function_response(msg: dict[str, Any], i: int,
                       call_names: dict[str, str]) -> dict[str, Any]:
    call_id = msg.get("tool_call_id")
    name = call_names.get(call_id) if isinstance(call_id, str) else None
    name = name or msg.get("name")  # legacy ``function`` messages carry the name
    if not isinstance(name, str) or not name:
        raise TranslationError(f"messages[{i}]: tool_call_id {call_id!r} does not match a "
                               "tool call of an earlier assistant message")
    text = _plain_text(msg.get("content"), i)
    try:
        value = _json_decode(text) if text.lstrip().startswith("{") else None
    except msgspec.DecodeError:
        value = None
    response = value if isinstance(value, dict) else {"content": text}
    return {"functionResponse": {"name": name, "response": response}}


def _function_declarations(tools: Any) -> list[dict[str, Any]]:
    if not tools:
        return []
    if not isinstance(tools, list):
        raise TranslationError("'tools' must be an array")
    declarations: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise TranslationError(f"tools[{i}]: only function tools are supported by Gemini",
                                   code="unsupported")
        fn = tool.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise TranslationError(f"tools[{i}].function.name is required")
        decl: dict[str, Any] = {"name": fn["name"]}
        if isinstance(fn.get("description"), str) and fn["description"]:
            decl["description"] = fn["description"]
        params = fn.get("parameters")
        if isinstance(params, dict):
            cleaned = clean_schema(params)
            # Gemini rejects an OBJECT with no properties: a function without
            # arguments simply has no ``parameters``.
            if cleaned.get("properties") or cleaned.get("type") not in (None, "object"):
                decl["parameters"] = cleaned
        declarations.append(decl)
    return declarations


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, str) and choice in _TOOL_MODES:
        return {"mode": _TOOL_MODES[choice]}
    if isinstance(choice, dict) and choice.get("type") == "function":
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if isinstance(name, str) and name:
            return {"mode": "ANY", "allowedFunctionNames": [name]}
    raise TranslationError("'tool_choice' must be auto, none, required or a named function")


def clean_schema(schema: Any) -> dict[str, Any]:
    """A JSON schema reduced to what Gemini's ``Schema`` accepts, recursively:
    local ``$ref``s inlined, ``type: [x, "null"]`` and ``anyOf`` with null
    turned into ``nullable``, ``oneOf`` read as ``anyOf``, other keys dropped."""
    if not isinstance(schema, dict):
        return {}
    defs: dict[str, Any] = {}
    for key in ("definitions", "$defs"):
        if isinstance(schema.get(key), dict):
            defs.update(schema[key])
    return _clean(schema, defs, 0)


def _clean(node: Any, defs: dict[str, Any], depth: int) -> dict[str, Any]:
    if not isinstance(node, dict) or depth > _MAX_SCHEMA_DEPTH:
        return {}
    ref = node.get("$ref")
    if isinstance(ref, str):
        target = defs.get(ref.rsplit("/", 1)[-1]) if ref.startswith("#/") else None
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        node = {**target, **siblings} if isinstance(target, dict) else siblings
    out: dict[str, Any] = {}
    any_of: list[dict[str, Any]] | None = None
    for key, value in node.items():
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: _clean(sub, defs, depth + 1) for name, sub in value.items()}
        elif key == "items":
            out[key] = _clean(value[0] if isinstance(value, list) and value else value,
                              defs, depth + 1)
        elif key in ("anyOf", "oneOf") and isinstance(value, list):
            any_of = [_clean(s, defs, depth + 1) for s in value]
        elif key == "type" and isinstance(value, list):
            _merge_type_list(out, [t for t in value if isinstance(t, str)])
        elif key == "type" and value == "null":
            out["nullable"] = True
        elif key == "const" and isinstance(value, str):
            out.setdefault("enum", [value])
        elif key == "format":
            if value in _FORMATS:
                out[key] = value
        elif key in _SCHEMA_KEYS:
            out[key] = value
    if any_of is not None:
        _merge_any_of(out, any_of)
    required = out.get("required")
    if isinstance(required, list) and isinstance(out.get("properties"), dict):
        # Gemini refuses a required name that is no property.
        out["required"] = [r for r in required if r in out["properties"]]
    return out


def _merge_type_list(out: dict[str, Any], types: list[str]) -> None:
    real = [t for t in types if t != "null"]
    if len(real) < len(types):
        out["nullable"] = True
    if len(real) == 1:
        out["type"] = real[0]
    elif real:
        out["anyOf"] = [{"type": t} for t in real]


def _merge_any_of(out: dict[str, Any], options: list[dict[str, Any]]) -> None:
    """``anyOf``/``oneOf`` (Gemini has no oneOf; anyOf is the closest): a null
    member becomes ``nullable`` (pydantic's ``Optional[X]``), and a single
    remaining member is merged in, the outer keys winning."""
    real = [o for o in options if o != {"nullable": True}]
    if len(real) < len(options):
        out["nullable"] = True
    if not real or any(not o for o in real):
        return  # an unconstrained member: the union allows anything
    if len(real) == 1:
        for key, value in real[0].items():
            out.setdefault(key, value)
    else:
        out["anyOf"] = real


def _generation_config(payload: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    max_tokens = payload.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = payload.get("max_tokens")
    stop = payload.get("stop")
    for key, value in (("temperature", payload.get("temperature")),
                       ("topP", payload.get("top_p")),
                       ("maxOutputTokens", max_tokens),
                       ("stopSequences", [stop] if isinstance(stop, str) else stop),
                       ("candidateCount", payload.get("n")),
                       ("seed", payload.get("seed")),
                       ("presencePenalty", payload.get("presence_penalty")),
                       ("frequencyPenalty", payload.get("frequency_penalty"))):
        if value is not None:
            config[key] = value
    fmt = payload.get("response_format")
    if fmt is None:
        return config
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
    if kind == "json_schema":
        spec = fmt.get("json_schema")  # type: ignore[union-attr]
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if isinstance(schema, dict):
            config["responseSchema"] = clean_schema(schema)
    elif kind not in ("text", "json_object"):
        raise TranslationError(f"response_format type {kind!r} is not supported")
    return config


# ==================================================================== response

#: Gemini finish reasons that mean the answer was withheld or cut by a filter.
_FILTERED = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
                       "IMAGE_SAFETY"})


def finish_reason(reason: Any, has_calls: bool) -> str:
    """Gemini ``finishReason`` -> OpenAI. Gemini says STOP after function
    calls too; OpenAI clients only run tools on ``tool_calls``."""
    if reason == "MAX_TOKENS":
        return "length"
    if reason in _FILTERED:
        return "content_filter"
    return "tool_calls" if has_calls else "stop"


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def tool_call_id(seed: str, choice: int, index: int, name: str, args: Any) -> str:
    """A stable id for one function call: Gemini gives none (the original used
    the function name, which collides when a function is called twice).
    Hashing the response id and position makes it unique within a response
    and identical when the same response is translated again."""
    digest = hashlib.sha256(_json_encode([seed, choice, index, name, args])).hexdigest()
    return f"call_{digest[:24]}"


def _int(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return 0


def openai_usage(meta: Any) -> dict[str, Any] | None:
    """``usageMetadata`` -> an OpenAI ``usage`` object (None if absent).

    Thinking tokens are billed as output, as OpenAI's reasoning tokens are;
    tool-use prompt tokens (e.g. search results) are input."""
    if not isinstance(meta, dict):
        return None
    prompt = _int(meta.get("promptTokenCount")) + _int(meta.get("toolUsePromptTokenCount"))
    thoughts = _int(meta.get("thoughtsTokenCount"))
    completion = _int(meta.get("candidatesTokenCount")) + thoughts
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": _int(meta.get("totalTokenCount")) or prompt + completion,
        "prompt_tokens_details": {"cached_tokens": _int(meta.get("cachedContentTokenCount"))},
        "completion_tokens_details": {"reasoning_tokens": thoughts},
    }


def _response_id(data: dict[str, Any]) -> str:
    rid = data.get("responseId")
    return rid if isinstance(rid, str) else ""


def _parts(candidate: dict[str, Any]) -> list[dict[str, Any]]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def _tool_call(seed: str, choice: int, index: int, call: dict[str, Any]) -> dict[str, Any]:
    name = str(call.get("name", ""))
    args = call.get("args")
    args = args if isinstance(args, dict) else {}
    return {"id": tool_call_id(seed, choice, index, name, args), "type": "function",
            "function": {"name": name, "arguments": _json_encode(args).decode()}}


def _blocked(data: dict[str, Any]) -> bool:
    feedback = data.get("promptFeedback")
    return isinstance(feedback, dict) and bool(feedback.get("blockReason"))


def chat_response(data: dict[str, Any], model: str, *, completion_id: str | None = None,
                  created: int | None = None) -> dict[str, Any]:
    """A ``generateContent`` response -> an OpenAI ``chat.completion``."""
    seed = _response_id(data)
    choices: list[dict[str, Any]] = []
    candidates = data.get("candidates")
    for pos, cand in enumerate(candidates if isinstance(candidates, list) else []):
        if not isinstance(cand, dict):
            continue
        index = _int(cand.get("index", pos))
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for part in _parts(cand):
            if part.get("thought"):
                continue  # the model's reasoning summary is not its answer
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
            if isinstance(part.get("functionCall"), dict):
                calls.append(_tool_call(seed, index, len(calls), part["functionCall"]))
        text = "".join(texts)
        message: dict[str, Any] = {"role": "assistant",
                                   "content": text if text or not calls else None}
        if calls:
            message["tool_calls"] = calls
        choices.append({"index": index, "message": message, "logprobs": None,
                        "finish_reason": finish_reason(cand.get("finishReason"), bool(calls))})
    if not choices:
        # No candidate: the prompt itself was blocked (promptFeedback.blockReason).
        choices.append({"index": 0, "message": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": "content_filter" if _blocked(data) else "stop"})
    out: dict[str, Any] = {
        "id": completion_id or (f"chatcmpl-{seed}" if seed else new_completion_id()),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": choices,
    }
    usage = openai_usage(data.get("usageMetadata"))
    if usage is not None:
        out["usage"] = usage
    return out


class StreamTranslator:
    """Gemini ``streamGenerateContent?alt=sse`` objects -> OpenAI chunk dicts.

    Feed each decoded ``data:`` object; ``finished`` says whether a finish
    reason arrived (a stream without one was cut: Gemini has no ``[DONE]``).
    ``usageMetadata`` is cumulative, so only the last one counts; it becomes
    one usage-only chunk (``usage_chunk``) after the stream ended.
    """

    def __init__(self, model: str, *, completion_id: str | None = None,
                 created: int | None = None) -> None:
        self.model = model
        self.created = int(time.time()) if created is None else created
        self._id = completion_id
        self._seed: str | None = None
        self._started: set[int] = set()
        self._calls: dict[int, int] = {}
        self._finished: set[int] = set()
        self.usage: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        if self._id is None:
            self._id = f"chatcmpl-{self._seed}" if self._seed else new_completion_id()
        return self._id

    @property
    def finished(self) -> bool:
        return bool(self._finished)

    def _chunk(self, index: int, delta: dict[str, Any],
               finish: str | None = None) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model,
                "choices": [{"index": index, "delta": delta, "logprobs": None,
                             "finish_reason": finish}]}

    def _start(self, index: int) -> list[dict[str, Any]]:
        if index in self._started:
            return []
        self._started.add(index)
        return [self._chunk(index, {"role": "assistant", "content": ""})]

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The OpenAI chunks for one Gemini stream object."""
        if self._seed is None:
            self._seed = _response_id(event)
        usage = openai_usage(event.get("usageMetadata"))
        if usage is not None:
            self.usage = usage
        out: list[dict[str, Any]] = []
        candidates = event.get("candidates")
        if not isinstance(candidates, list) or not candidates:
            if _blocked(event) and 0 not in self._finished:
                out += self._start(0)
                out.append(self._chunk(0, {}, "content_filter"))
                self._finished.add(0)
            return out
        for pos, cand in enumerate(candidates):
            if isinstance(cand, dict):
                out += self._candidate(_int(cand.get("index", pos)), cand)
        return out

    def _candidate(self, index: int, cand: dict[str, Any]) -> list[dict[str, Any]]:
        out = self._start(index)
        for part in _parts(cand):
            if part.get("thought"):
                continue
            text = part.get("text")
            if isinstance(text, str) and text:
                out.append(self._chunk(index, {"content": text}))
            call = part.get("functionCall")
            if isinstance(call, dict):
                # Gemini sends a whole call at once: one delta with id, name
                # and all the arguments.
                k = self._calls.get(index, 0)
                self._calls[index] = k + 1
                tool = {"index": k, **_tool_call(self._seed or "", index, k, call)}
                out.append(self._chunk(index, {"tool_calls": [tool]}))
        reason = cand.get("finishReason")
        if reason and index not in self._finished:
            self._finished.add(index)
            out.append(self._chunk(index, {}, finish_reason(reason, index in self._calls)))
        return out

    def usage_chunk(self) -> dict[str, Any] | None:
        """The final usage-only chunk (``choices: []``), None without usage."""
        if self.usage is None:
            return None
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [], "usage": self.usage}


# ================================================================== embeddings

#: ``batchEmbedContents`` takes at most this many requests per call.
BATCH_EMBED_LIMIT = 100


def embedding_inputs(payload: dict[str, Any]) -> list[str]:
    """The texts of an OpenAI embeddings request (a string or a list of them)."""
    value = payload.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    if isinstance(value, list) and value and all(
            isinstance(v, int | list) and not isinstance(v, bool) for v in value):
        raise TranslationError("token-array input is not supported by Gemini embeddings",
                               code="unsupported")
    raise TranslationError("'input' must be a non-empty string or array of strings")


def _dimensions(payload: dict[str, Any]) -> int | None:
    dims = payload.get("dimensions")
    if dims is None:
        return None
    if not isinstance(dims, int) or isinstance(dims, bool) or dims < 1:
        raise TranslationError("'dimensions' must be a positive integer")
    return dims


def encoding_format(payload: dict[str, Any]) -> str:
    fmt = payload.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise TranslationError("'encoding_format' must be 'float' or 'base64'")
    return str(fmt)


def batch_embed_request(payload: dict[str, Any], inputs: list[str],
                        model: str) -> dict[str, Any]:
    """``:batchEmbedContents`` body (Google AI) for ``inputs``."""
    dims = _dimensions(payload)
    requests: list[dict[str, Any]] = []
    for text in inputs:
        req: dict[str, Any] = {"model": f"models/{model}", "content": {"parts": [{"text": text}]}}
        if dims is not None:
            req["outputDimensionality"] = dims
        requests.append(req)
    return {"requests": requests}


def batch_embed_vectors(data: Any) -> list[list[float]]:
    """The vectors of a ``batchEmbedContents`` response."""
    items = data.get("embeddings") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ValueError("no 'embeddings' in the response")
    return [_values(item) for item in items]


def vertex_embed_request(payload: dict[str, Any], inputs: list[str]) -> dict[str, Any]:
    """Vertex ``:predict`` body for text embedding models."""
    dims = _dimensions(payload)
    body: dict[str, Any] = {"instances": [{"content": text} for text in inputs]}
    if dims is not None:
        body["parameters"] = {"outputDimensionality": dims}
    return body


def vertex_embed_vectors(data: Any) -> tuple[list[list[float]], int]:
    """The vectors and the summed token count of a Vertex ``:predict`` response."""
    predictions = data.get("predictions") if isinstance(data, dict) else None
    if not isinstance(predictions, list):
        raise ValueError("no 'predictions' in the response")
    vectors: list[list[float]] = []
    tokens = 0
    for item in predictions:
        emb = item.get("embeddings") if isinstance(item, dict) else None
        vectors.append(_values(emb))
        stats = emb.get("statistics") if isinstance(emb, dict) else None
        if isinstance(stats, dict):
            tokens += _int(stats.get("token_count"))
    return vectors, tokens


def _values(item: Any) -> list[float]:
    values = item.get("values") if isinstance(item, dict) else None
    if not isinstance(values, list):
        raise ValueError("an embedding without 'values'")
    return values


def estimate_tokens(inputs: list[str]) -> int:
    """Gemini's batch embedding API reports no token counts; ~4 characters a
    token is the usual estimate, and accounting needs some number."""
    return sum(math.ceil(len(text) / 4) for text in inputs)


def embeddings_response(vectors: list[list[float]], model: str, prompt_tokens: int,
                        fmt: str = "float") -> dict[str, Any]:
    """OpenAI's embeddings list; ``base64`` packs little-endian float32 like OpenAI."""
    data: list[dict[str, Any]] = []
    for index, vector in enumerate(vectors):
        embedding: list[float] | str = vector
        if fmt == "base64":
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
