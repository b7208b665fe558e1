"""OpenAI chat/embeddings <-> Ollama's native API (``/api/chat``, ``/api/embed``).

Pure functions over decoded JSON; the adapter (``providers/ollama.py``) does
the I/O. Requests the native API cannot express are refused with a clear 400
(:class:`UpstreamFailure`, not retryable) instead of being sent half-translated.

Ollama differs from OpenAI in ways that matter here:

- images are inline base64 strings on the message (no URLs);
- tool-call arguments are JSON objects, not JSON strings, and tool calls have
  no ids: a tool result names the function (``tool_name``) instead;
- sampling parameters live in ``options`` (``max_tokens`` is ``num_predict``);
- ``/api/chat`` streams unless the body says ``"stream": false``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import struct
import time
import urllib.parse
from datetime import datetime
from typing import Any

import msgspec

from gandalf_workers.failure import UpstreamFailure, unsupported

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode

#: OpenAI roles Ollama spells differently (it knows system/user/assistant/tool).
_ROLES = {"developer": "system"}
#: OpenAI sampling fields copied into Ollama ``options`` under the same name.
_SAME_NAME_OPTIONS = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")
#: Ollama ``done_reason`` -> OpenAI ``finish_reason`` (``load``/``unload`` never
#: end a chat that produced output; they fall back to ``stop``).
_FINISH = {"stop": "stop", "length": "length"}


def _bad(message: str) -> UpstreamFailure:
    """A request that cannot be translated: the client's fault, never retried."""
    return UpstreamFailure(message, status=400, type="invalid_request_error",
                           code="invalid_request", retryable=False)


# ------------------------------------------------------------------ requests


def chat_request(payload: dict[str, Any], model: str, *, provider: str = "ollama",
                 stream: bool | None = None) -> dict[str, Any]:
    """An OpenAI chat request -> an Ollama ``/api/chat`` body for ``model``.

    ``stream`` overrides the payload's flag; either way it is sent explicitly
    because Ollama streams by default.
    """
    n = payload.get("n")
    if n is not None and n != 1:
        raise unsupported(provider, "n > 1")
    messages = payload.get("messages")
    if not isinstance(messages, list):
        raise _bad("'messages' must be an array")
    out: dict[str, Any] = {
        "model": model,
        "messages": _messages(messages, provider),
        "stream": bool(payload.get("stream")) if stream is None else stream,
    }
    tools = payload.get("tools")
    # Ollama has no tool_choice; "none" is honoured by not offering the tools.
    if tools and payload.get("tool_choice") != "none":
        out["tools"] = tools  # Ollama takes the OpenAI {type, function} shape
    options = _options(payload)
    if options:
        out["options"] = options
    fmt = _format(payload.get("response_format"))
    if fmt is not None:
        out["format"] = fmt
    return out


def _messages(messages: list[Any], provider: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    # Tool results carry the function's name in Ollama, not the call id.
    names: dict[str, str] = {}
    for message in messages:
        if not isinstance(message, dict):
            raise _bad("each message must be an object")
        role = message.get("role")
        role = _ROLES.get(role, role) if isinstance(role, str) else role
        text, images = _content(message.get("content"), provider)
        item: dict[str, Any] = {"role": role, "content": text}
        if images:
            item["images"] = images
        if role == "assistant" and message.get("tool_calls"):
            item["tool_calls"] = _tool_calls_out(message["tool_calls"], names)
        elif role == "tool":
            call_id = message.get("tool_call_id")
            name = names.get(call_id, "") if isinstance(call_id, str) else ""
            name = name or message.get("name") or ""
            if name:
                item["tool_name"] = name
        out.append(item)
    return out


def _content(content: Any, provider: str) -> tuple[str, list[str]]:
    """OpenAI ``content`` -> (text, base64 images)."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise _bad("message content must be a string or an array of parts")
    texts: list[str] = []
    images: list[str] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            images.append(_image(part.get("image_url"), provider))
        else:
            raise unsupported(provider, f"content part type {kind!r}")
    # Ollama has one text per message; a newline keeps separate parts apart.
    return "\n".join(texts), images


def _image(value: Any, provider: str) -> str:
    """An OpenAI ``image_url`` -> the bare base64 Ollama wants."""
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise _bad("image_url must have a url")
    if not url.startswith("data:"):
        raise unsupported(provider, "an image by URL (Ollama only takes inline data: URLs)")
    header, sep, data = url.partition(",")
    if not sep:
        raise _bad("malformed data: URL in image_url")
    if not header.endswith(";base64"):
        # A percent-encoded data URL (rare, but legal): re-encode as base64.
        return base64.b64encode(urllib.parse.unquote_to_bytes(data)).decode()
    data = "".join(data.split())  # line-wrapped base64 is still base64
    try:
        base64.b64decode(data, validate=True)
    except binascii.Error as exc:
        raise _bad("image data: URL is not valid base64") from exc
    return data


def _tool_calls_out(calls: Any, names: dict[str, str]) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise _bad("tool_calls must be an array")
    out: list[dict[str, Any]] = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _bad("each tool call needs a function with a name")
        name = function["name"]
        if isinstance(call.get("id"), str):
            names[call["id"]] = name
        out.append({"function": {"name": name,
                                 "arguments": _arguments_in(function.get("arguments"))}})
    return out


def _arguments_in(arguments: Any) -> dict[str, Any]:
    """OpenAI's JSON-string arguments -> the object Ollama expects."""
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    if not isinstance(arguments, str):
        raise _bad("tool call arguments must be a JSON string")
    try:
        value = _json_decode(arguments)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise _bad("tool call arguments are not valid JSON") from exc
    if not isinstance(value, dict):
        raise _bad("tool call arguments must be a JSON object")
    return value


def _options(payload: dict[str, Any]) -> dict[str, Any]:
    options = {k: payload[k] for k in _SAME_NAME_OPTIONS if payload.get(k) is not None}
    stop = payload.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list) and stop:
        options["stop"] = stop
    limit = payload.get("max_completion_tokens")
    if limit is None:
        limit = payload.get("max_tokens")
    if limit is not None:
        options["num_predict"] = limit
    return options


def _format(response_format: Any) -> str | dict[str, Any] | None:
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise _bad("response_format json_schema needs a schema object")
        return schema
    raise _bad(f"unknown response_format type {kind!r}")


# ----------------------------------------------------------------- responses


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def tool_call_id(index: int, name: str, arguments: str) -> str:
    """A stable id for a tool call (Ollama sends none): the same call gets the
    same id in a stream and in a whole response."""
    digest = hashlib.sha256(f"{index}\x00{name}\x00{arguments}".encode()).hexdigest()
    return "call_" + digest[:24]


def created_of(data: dict[str, Any], now: float | None = None) -> int:
    """Unix time of an Ollama object's ``created_at`` (RFC 3339), else now."""
    value = data.get("created_at")
    if isinstance(value, str):
        try:
            return int(datetime.fromisoformat(value).timestamp())
        except ValueError:
            pass
    return int(time.time() if now is None else now)


def usage_of(data: dict[str, Any]) -> dict[str, int]:
    """OpenAI usage from Ollama's counters (absent when nothing was evaluated)."""
    prompt = _count(data.get("prompt_eval_count"))
    completion = _count(data.get("eval_count"))
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def finish_reason(done_reason: Any, tool_calls: bool) -> str:
    if tool_calls:
        return "tool_calls"
    return _FINISH.get(done_reason, "stop") if isinstance(done_reason, str) else "stop"


def _tool_call_out(index: int, call: Any) -> dict[str, Any]:
    """One Ollama tool call -> OpenAI's, arguments as a JSON string."""
    function = call.get("function") if isinstance(call, dict) else None
    function = function if isinstance(function, dict) else {}
    raw_name = function.get("name")
    name = raw_name if isinstance(raw_name, str) else ""
    arguments = function.get("arguments")
    text = arguments if isinstance(arguments, str) else _json_encode(
        arguments if arguments is not None else {}).decode()
    return {"id": tool_call_id(index, name, text), "type": "function",
            "function": {"name": name, "arguments": text}}


def _message_of(data: dict[str, Any]) -> dict[str, Any]:
    message = data.get("message")
    return message if isinstance(message, dict) else {}


def chat_response(data: dict[str, Any], *, model: str = "", id: str | None = None,
                  now: float | None = None) -> dict[str, Any]:
    """An Ollama ``/api/chat`` answer (``stream: false``) -> a chat.completion."""
    message = _message_of(data)
    raw_calls = message.get("tool_calls")
    calls = ([_tool_call_out(i, c) for i, c in enumerate(raw_calls)]
             if isinstance(raw_calls, list) else [])
    content = message.get("content") if isinstance(message.get("content"), str) else ""
    # OpenAI sends null content next to tool calls when there is no text.
    out_message: dict[str, Any] = {"role": "assistant",
                                   "content": content if content or not calls else None}
    thinking = message.get("thinking")
    if isinstance(thinking, str) and thinking:
        # Reasoning models: the de-facto OpenAI-compatible field (vLLM, DeepSeek).
        out_message["reasoning_content"] = thinking
    if calls:
        out_message["tool_calls"] = calls
    return {
        "id": id or completion_id(),
        "object": "chat.completion",
        "created": created_of(data, now),
        "model": data.get("model") or model,
        "choices": [{"index": 0, "message": out_message, "logprobs": None,
                     "finish_reason": finish_reason(data.get("done_reason"), bool(calls))}],
        "usage": usage_of(data),
    }


class ChatStream:
    """Ollama ``/api/chat`` stream objects -> OpenAI chat.completion.chunk dicts.

    ``feed`` takes one decoded NDJSON object and returns the chunks it makes:
    a role chunk first, then content / tool-call deltas, and for the final
    object (``done: true``) a finish chunk plus a usage-only chunk
    (``choices: []``). ``done`` tells whether the final object was seen.
    """

    def __init__(self, model: str, *, id: str | None = None,
                 created: int | None = None) -> None:
        self.id = id or completion_id()
        self.model = model
        self.created = created
        self.done = False
        self.usage: dict[str, int] | None = None
        self._started = False
        self._tool_calls = 0

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None,
                             "finish_reason": finish}]}

    def feed(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        if not self._started:
            self._started = True
            if self.created is None:
                self.created = created_of(data)
            self.model = data.get("model") or self.model
            chunks.append(self._chunk({"role": "assistant", "content": ""}))
        message = _message_of(data)
        thinking = message.get("thinking")
        if isinstance(thinking, str) and thinking:
            chunks.append(self._chunk({"reasoning_content": thinking}))
        content = message.get("content")
        if isinstance(content, str) and content:
            chunks.append(self._chunk({"content": content}))
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                # Ollama sends each call whole, so one delta carries all of it.
                out = _tool_call_out(self._tool_calls, call)
                chunks.append(self._chunk({"tool_calls": [{"index": self._tool_calls, **out}]}))
                self._tool_calls += 1
        if data.get("done") is True:
            self.done = True
            self.usage = usage_of(data)
            chunks.append(self._chunk({}, finish_reason(data.get("done_reason"),
                                                        self._tool_calls > 0)))
            chunks.append({"id": self.id, "object": "chat.completion.chunk",
                           "created": self.created, "model": self.model, "choices": [],
                           "usage": self.usage})
        return chunks


# ---------------------------------------------------------------- embeddings


def embed_request(payload: dict[str, Any], model: str, *,
                  provider: str = "ollama") -> dict[str, Any]:
    """An OpenAI embeddings request -> an Ollama ``/api/embed`` body."""
    value = payload.get("input")
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        inputs: str | list[str] = value
    elif isinstance(value, str):
        inputs = value
    elif isinstance(value, list) and value:
        # Token-id arrays: Ollama embeds text only.
        raise unsupported(provider, "embedding input as token arrays")
    else:
        raise _bad("'input' must be a string or a non-empty array of strings")
    if payload.get("encoding_format") not in (None, "float", "base64"):
        raise _bad("'encoding_format' must be 'float' or 'base64'")
    out: dict[str, Any] = {"model": model, "input": inputs}
    if payload.get("dimensions") is not None:
        out["dimensions"] = payload["dimensions"]
    if isinstance(payload.get("truncate"), bool):
        out["truncate"] = payload["truncate"]  # an Ollama extension some clients send
    return out


def embed_response(data: dict[str, Any], *, model: str = "",
                   encoding_format: str | None = None) -> dict[str, Any]:
    """An Ollama ``/api/embed`` answer -> an OpenAI embeddings list."""
    vectors = data.get("embeddings")
    if not isinstance(vectors, list):
        raise UpstreamFailure("upstream embeddings answer has no 'embeddings'",
                              code="upstream_invalid_response")
    items = [{"object": "embedding", "index": i,
              "embedding": _b64_floats(v) if encoding_format == "base64" else v}
             for i, v in enumerate(vectors)]
    prompt = _count(data.get("prompt_eval_count"))
    return {"object": "list", "data": items, "model": data.get("model") or model,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}


def _b64_floats(vector: list[float]) -> str:
    """Little-endian float32, base64: what OpenAI sends for ``encoding_format: base64``."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
