"""OpenAI chat completions <-> Anthropic Messages, as pure functions.

Request: :func:`to_anthropic_request` (raises :class:`TranslationError` for
what Anthropic cannot express, e.g. tool-call arguments that are not JSON).
Response: :func:`from_anthropic_response`. The streaming side lives in
:mod:`.anthropic_stream`.

``response_format: json_schema`` has no Anthropic equivalent, so it becomes a
forced tool whose input schema is the client's schema; on the way back the
input of that tool is the message content. :func:`json_schema_tool` names
that tool so both directions agree.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from gandalf_common.contract import Usage

#: Default ``max_tokens``: Anthropic requires one, OpenAI does not.
DEFAULT_MAX_TOKENS = 4096
_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}
_JSON_OBJECT_INSTRUCTION = ("Respond only with a single valid JSON object. Do not add any "
                            "text before or after it, and do not wrap it in a code block.")
_FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                   "tool_use": "tool_calls", "refusal": "content_filter",
                   "pause_turn": "stop", "model_context_window_exceeded": "length"}
_SYSTEM_ROLES = ("system", "developer")
_json_decode = msgspec.json.Decoder().decode
_json_encode = msgspec.json.Encoder().encode


class TranslationError(ValueError):
    """The OpenAI request cannot be expressed as an Anthropic request (a 400)."""


# ------------------------------------------------------------------ request


def json_schema_tool(payload: dict[str, Any]) -> str | None:
    """The tool standing in for ``response_format: json_schema``, if any."""
    fmt = payload.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    spec = fmt.get("json_schema")
    name = spec.get("name") if isinstance(spec, dict) else None
    return name if isinstance(name, str) and name else "json_response"


def to_anthropic_request(payload: dict[str, Any], *, model: str | None = None
                         ) -> dict[str, Any]:
    """An OpenAI chat request as an Anthropic Messages request body.

    ``model`` (the upstream id) replaces the payload's; hosting-specific
    fields (``anthropic_version``, dropping ``model``) are the adapter's job.
    """
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise TranslationError("messages must be a non-empty array")
    n = payload.get("n")
    if isinstance(n, int) and n > 1:
        raise TranslationError("n > 1 is not supported by Anthropic models")
    system, turns = _messages(messages)
    out: dict[str, Any] = {"model": model if model is not None else payload.get("model"),
                           "messages": turns, "max_tokens": _max_tokens(payload)}
    for key in ("temperature", "top_p"):
        if payload.get(key) is not None:
            out[key] = payload[key]
    stop = payload.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stop_sequences"] = stop
    if isinstance(payload.get("user"), str) and payload["user"]:
        out["metadata"] = {"user_id": payload["user"]}
    if payload.get("stream"):
        out["stream"] = True
    tools = [_tool(t) for t in payload.get("tools") or []]
    choice = _tool_choice(payload.get("tool_choice"), payload.get("parallel_tool_calls"))
    fmt = payload.get("response_format")
    fmt_type = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt_type == "json_schema":
        tools, choice = _with_json_tool(payload, tools, choice)
    elif fmt_type == "json_object":
        system.append(_JSON_OBJECT_INSTRUCTION)
    if system:
        out["system"] = "\n\n".join(system)
    if tools:  # a tool_choice without tools means nothing to Anthropic
        out["tools"] = tools
        if choice is not None:
            out["tool_choice"] = choice
    return out


def _max_tokens(payload: dict[str, Any]) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value = payload.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return DEFAULT_MAX_TOKENS


def _messages(messages: list[Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """System texts (all of them, in order) and the user/assistant turns,
    consecutive same-role messages merged as Anthropic requires."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise TranslationError(f"messages[{i}] must be an object")
        role = message.get("role")
        if role in _SYSTEM_ROLES:
            text = _text_only(message.get("content"), f"messages[{i}]")
            if text:
                system.append(text)
            continue
        if role == "user":
            blocks = _user_blocks(message.get("content"), f"messages[{i}]")
            anthropic_role = "user"
        elif role == "assistant":
            blocks = _assistant_blocks(message, f"messages[{i}]")
            anthropic_role = "assistant"
        elif role == "tool":
            blocks = [_tool_result(message, f"messages[{i}]")]
            anthropic_role = "user"
        else:
            raise TranslationError(f"messages[{i}]: unsupported role {role!r}")
        if not blocks:
            continue  # Anthropic rejects empty turns; an empty message says nothing
        if turns and turns[-1]["role"] == anthropic_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": anthropic_role, "content": blocks})
    for turn in turns:
        turn["content"] = _finish_content(turn["content"])
    return system, turns


def _finish_content(blocks: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    # Tool results must open a user turn (Anthropic rejects text before them).
    results = [b for b in blocks if b["type"] == "tool_result"]
    if results:
        blocks = results + [b for b in blocks if b["type"] != "tool_result"]
    if len(blocks) == 1 and blocks[0]["type"] == "text":
        return str(blocks[0]["text"])
    return blocks


def _parts(content: Any, where: str) -> list[Any]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return content
    raise TranslationError(f"{where}.content must be a string or an array of parts")


def _text_only(content: Any, where: str) -> str:
    texts: list[str] = []
    for part in _parts(content, where):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise TranslationError(f"{where}: only text parts are allowed here")
        texts.append(str(part.get("text") or ""))
    return "\n".join(t for t in texts if t)


def _text_block(part: dict[str, Any]) -> list[dict[str, Any]]:
    text = part.get("text")
    # Anthropic rejects empty text blocks.
    return [{"type": "text", "text": text}] if isinstance(text, str) and text else []


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(_parts(content, where)):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks += _text_block(part)
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url"), f"{where}.content[{j}]"))
        elif kind == "file":
            blocks.append(_document(part.get("file"), f"{where}.content[{j}]"))
        else:
            raise TranslationError(f"{where}.content[{j}]: part type {kind!r} is not "
                                   "supported by Anthropic models")
    return blocks


def _data_url(url: str, where: str) -> tuple[str, str]:
    """``data:<media type>;base64,<data>`` -> (media type, data)."""
    head, sep, data = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise TranslationError(f"{where}: data URLs must be base64 encoded")
    return head[5:-7] or "application/octet-stream", data


def _image(spec: Any, where: str) -> dict[str, Any]:
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str) or not url:
        raise TranslationError(f"{where}: image_url.url is required")
    if url.startswith("data:"):
        media_type, data = _data_url(url, where)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type,
                                            "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise TranslationError(f"{where}: image_url.url must be a data: or http(s) URL")


def _document(spec: Any, where: str) -> dict[str, Any]:
    """An OpenAI ``file`` part with inline data (a PDF) as a document block."""
    data = spec.get("file_data") if isinstance(spec, dict) else None
    if not isinstance(data, str) or not data.startswith("data:"):
        raise TranslationError(f"{where}: only inline file_data (a data: URL) is supported")
    media_type, b64 = _data_url(data, where)
    return {"type": "document", "source": {"type": "base64", "media_type": media_type,
                                           "data": b64}}


def _assistant_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for part in _parts(message.get("content"), where):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks += _text_block(part)
        elif kind == "refusal":
            blocks += _text_block({"text": part.get("refusal")})
        else:
            raise TranslationError(f"{where}: assistant part type {kind!r} is not supported")
    for j, call in enumerate(message.get("tool_calls") or []):
        blocks.append(_tool_use(call, f"{where}.tool_calls[{j}]"))
    return blocks


def _tool_use(call: Any, where: str) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise TranslationError(f"{where}: function.name is required")
    call_id = call.get("id")
    if not isinstance(call_id, str) or not call_id:
        raise TranslationError(f"{where}: id is required")
    arguments = fn.get("arguments")
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        data: Any = {}
    elif isinstance(arguments, str):
        try:
            data = _json_decode(arguments)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise TranslationError(f"{where}: function.arguments is not valid JSON") from exc
    else:
        data = arguments
    if not isinstance(data, dict):
        raise TranslationError(f"{where}: function.arguments must be a JSON object")
    return {"type": "tool_use", "id": call_id, "name": fn["name"], "input": data}


def _tool_result(message: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise TranslationError(f"{where}: tool_call_id is required")
    content = message.get("content")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    if isinstance(content, str):
        block["content"] = content
    else:
        parts = _user_blocks(content, where)
        if parts:
            block["content"] = parts
    return block


def _tool(tool: Any) -> dict[str, Any]:
    fn = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not (
            isinstance(fn, dict) and isinstance(fn.get("name"), str)):
        raise TranslationError("tools: only {type: function, function: {name, ...}} tools "
                               "are supported")
    out: dict[str, Any] = {"name": fn["name"]}
    if isinstance(fn.get("description"), str):
        out["description"] = fn["description"]
    params = fn.get("parameters")
    out["input_schema"] = params if isinstance(params, dict) and params else _EMPTY_SCHEMA
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    out: dict[str, Any] | None
    if choice is None:
        out = None
    elif choice == "auto":
        out = {"type": "auto"}
    elif choice == "none":
        out = {"type": "none"}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict) and isinstance(
            choice["function"].get("name"), str):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise TranslationError(f"tool_choice {choice!r} is not supported")
    if parallel is False:
        out = {**(out or {"type": "auto"}), "disable_parallel_tool_use": True}
        if out["type"] == "none":
            del out["disable_parallel_tool_use"]  # not allowed with "none"
    return out


def _with_json_tool(payload: dict[str, Any], tools: list[dict[str, Any]],
                    choice: dict[str, Any] | None
                    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Add the tool standing in for ``json_schema``. Alone, it is forced;
    next to the client's tools the model must call one of them or answer
    through it ("any"), unless the client named a tool."""
    spec = payload["response_format"].get("json_schema")
    spec = spec if isinstance(spec, dict) else {}
    name = json_schema_tool(payload) or "json_response"
    schema = spec.get("schema")
    tool: dict[str, Any] = {"name": name, "input_schema": schema
                            if isinstance(schema, dict) and schema else _EMPTY_SCHEMA}
    tool["description"] = str(spec.get("description") or
                              "Give the final answer as the input of this tool.")
    extra = {k: v for k, v in (choice or {}).items() if k == "disable_parallel_tool_use"}
    if choice is not None and choice["type"] == "tool":
        forced = choice
    elif tools and (choice is None or choice["type"] in ("auto", "any")):
        forced = {"type": "any", **extra}
    else:
        forced = {"type": "tool", "name": name, **extra}
    return [*tools, tool], forced


# ----------------------------------------------------------------- response


def finish_reason(stop_reason: Any) -> str:
    # Not a str: a malformed answer (and unhashable values must not raise).
    return _FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def usage_from_anthropic(usage: Any) -> Usage:
    """Anthropic usage (``input_tokens`` excludes cached tokens) as ours."""
    usage = usage if isinstance(usage, dict) else {}
    cached = _int(usage.get("cache_read_input_tokens"))
    prompt = _int(usage.get("input_tokens")) + cached + _int(
        usage.get("cache_creation_input_tokens"))
    completion = _int(usage.get("output_tokens"))
    return Usage(prompt_tokens=prompt, completion_tokens=completion,
                 total_tokens=prompt + completion, cached_tokens=cached)


def openai_usage(usage: Usage) -> dict[str, Any]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def from_anthropic_response(data: dict[str, Any], *, model: str = "",
                            json_tool: str | None = None, created: int | None = None
                            ) -> tuple[dict[str, Any], Usage]:
    """An Anthropic Messages response as an OpenAI ``chat.completion``.

    ``json_tool`` is :func:`json_schema_tool` of the request: that tool's
    input is the answer, returned as JSON text content.
    """
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    answer: str | None = None
    content = data.get("content")
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "thinking":
            reasoning.append(str(block.get("thinking") or ""))
        elif kind == "tool_use" and json_tool is not None and block.get("name") == json_tool:
            answer = _json_encode(block.get("input") or {}).decode()
        elif kind == "tool_use":
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"),
                                       "arguments": _json_encode(block.get("input") or {})
                                       .decode()}})
    # The structured answer replaces any text around it (a preamble is not JSON).
    content = answer if answer is not None else "".join(texts) if texts else None
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    reason = finish_reason(data.get("stop_reason"))
    if reason == "tool_calls" and not calls:
        reason = "stop"  # only the json_schema tool was called: that is the answer
    usage = usage_from_anthropic(data.get("usage"))
    body = {"id": data.get("id") or "", "object": "chat.completion",
            "created": int(time.time()) if created is None else created,
            "model": data.get("model") or model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": reason}],
            "usage": openai_usage(usage)}
    return body, usage
