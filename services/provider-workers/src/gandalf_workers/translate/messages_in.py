"""Anthropic Messages as an input format, served by an OpenAI chat provider.

A client speaking Anthropic's Messages API (``POST /v1/messages``: the
``anthropic`` SDK, Claude Code) reaches a provider that speaks OpenAI chat
completions. This module translates the request (:func:`messages_to_openai`)
and a whole response (:func:`openai_to_message`); streams are translated by
:class:`MessagesStreamEncoder` (from :mod:`.messages_in_stream`, re-exported
here so the worker has one import). Pure functions, no I/O.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from .messages_in_stream import (
    JSON,
    MessagesStreamEncoder,
    load_json,
    message_id,
    openai_usage,
    stop_reason,
    tool_input,
    tool_use_id,
    usage_fields,
)

__all__ = ["MessagesInputError", "MessagesStreamEncoder", "messages_to_openai",
           "openai_to_message"]

_encode = msgspec.json.Encoder().encode


class MessagesInputError(ValueError):
    """The client's Messages request is invalid, or asks for something OpenAI
    chat completions cannot express: answered 400 ``invalid_request_error``."""


# ====================================================================== request

_ROLES: Final = frozenset({"user", "assistant"})
_TOOL_CHOICES: Final = {"auto": "auto", "any": "required", "none": "none"}
#: Tool types that are plain client-side functions; every other ``type``
#: (``web_search_20250305``, ``bash_20250124``, ...) runs on Anthropic's side.
_CUSTOM_TOOL_TYPES: Final = (None, "custom")
#: Anthropic's reasoning blocks: the signature only means something to
#: Anthropic, and an OpenAI model cannot take a previous turn's reasoning.
_THINKING_BLOCKS: Final = frozenset({"thinking", "redacted_thinking"})


def messages_to_openai(body: JSON, target_model: str) -> JSON:
    """Anthropic Messages request -> OpenAI chat completions request.

    Raises :class:`MessagesInputError` for invalid input and for features
    without an OpenAI equivalent (server tools, PDF documents, file ids).
    """
    if not isinstance(body, dict):
        raise MessagesInputError("request body must be a JSON object")
    max_tokens = _max_tokens(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise MessagesInputError("messages: at least one message is required")
    out: list[JSON] = []
    system = _system_text(body.get("system"))
    if system:
        out.append({"role": "system", "content": system})
    for i, message in enumerate(messages):
        out.extend(_message(message, f"messages.{i}"))
    # ``max_tokens``, not ``max_completion_tokens``: OpenAI still accepts it
    # for chat models, and many OpenAI-compatible servers (older vLLM, Ollama,
    # LM Studio, ...) reject or ignore the newer name. The cost: OpenAI's own
    # reasoning models (o-series, gpt-5) answer 400 to ``max_tokens``.
    request: JSON = {"model": target_model, "messages": out, "max_tokens": max_tokens}
    _sampling(body, request)
    _tooling(body, request)
    if body.get("stream") is True:
        # Anthropic streams always end with usage; OpenAI only sends it on request.
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
    # Dropped on purpose: ``top_k`` has no OpenAI equivalent. ``thinking`` could
    # become ``reasoning_effort``, but OpenAI rejects that field for models that
    # do not reason and the gateway cannot tell which kind the target is, so
    # the request would fail where dropping only loses the extra reasoning.
    return request


def _max_tokens(body: JSON) -> int:
    value = body.get("max_tokens")
    if value is None:
        raise MessagesInputError("max_tokens: Field required")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise MessagesInputError("max_tokens: Input should be a positive integer")
    return value


def _system_text(system: Any) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    if not isinstance(system, list):
        raise MessagesInputError("system: Input should be a string or a list of text blocks")
    texts = []
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise MessagesInputError(f"system.{i}: only text blocks are allowed")
        texts.append(_str_field(block, "text", f"system.{i}"))
    return "\n\n".join(texts)


def _message(message: Any, at: str) -> list[JSON]:
    if not isinstance(message, dict):
        raise MessagesInputError(f"{at}: Input should be an object")
    role = message.get("role")
    if role not in _ROLES:
        raise MessagesInputError(f"{at}.role: Input should be 'user' or 'assistant'")
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise MessagesInputError(f"{at}.content: Input should be a string or a list of blocks")
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise MessagesInputError(f"{at}.content.{j}: Input should be a content block")
    if role == "user":
        return _user_turn(content, at)
    return [_assistant_turn(content, at)]


def _user_turn(blocks: list[JSON], at: str) -> list[JSON]:
    """Tool results first, one ``tool`` message each: OpenAI wants them right
    after the assistant message that made the calls. Images a tool returned
    cannot go in a ``tool`` message, so they lead the user message that
    follows, ahead of the turn's own content."""
    tool_messages: list[JSON] = []
    tool_images: list[JSON] = []
    parts: list[JSON] = []
    for j, block in enumerate(blocks):
        where = f"{at}.content.{j}"
        kind = block["type"]
        if kind == "tool_result":
            message, images = _tool_result(block, where)
            tool_messages.append(message)
            tool_images.extend(images)
        elif kind not in _THINKING_BLOCKS:
            parts.append(_user_part(block, where))
    rest = tool_images + parts
    if rest or not tool_messages:
        tool_messages.append({"role": "user", "content": _user_content(rest)})
    return tool_messages


def _user_content(parts: list[JSON]) -> str | list[JSON]:
    # A lone text part as a plain string: the form every compatible server takes.
    if not parts:
        return ""
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def _user_part(block: JSON, at: str) -> JSON:
    kind = block["type"]
    if kind == "text":
        return {"type": "text", "text": _str_field(block, "text", at)}
    if kind == "image":
        return _image_part(block, at)
    if kind == "document":
        return {"type": "text", "text": _document_text(block, at)}
    raise MessagesInputError(
        f"{at}: {kind!r} content blocks are not supported in user turns for this model")


def _image_part(block: JSON, at: str) -> JSON:
    source = block.get("source")
    if not isinstance(source, dict):
        raise MessagesInputError(f"{at}.source: Field required")
    kind = source.get("type")
    if kind == "base64":
        media_type = _str_field(source, "media_type", f"{at}.source")
        url = f"data:{media_type};base64,{_str_field(source, 'data', f'{at}.source')}"
    elif kind == "url":
        url = _str_field(source, "url", f"{at}.source")
    else:
        raise MessagesInputError(
            f"{at}.source: image source type {kind!r} is not supported for this model")
    return {"type": "image_url", "image_url": {"url": url}}


def _document_text(block: JSON, at: str) -> str:
    """Plain-text documents only: PDFs, URLs and file ids would need a
    conversion the OpenAI API cannot be trusted to do."""
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if isinstance(source, dict) and kind == "text":
        return _str_field(source, "data", f"{at}.source")
    if isinstance(source, dict) and kind == "content":
        content = source.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list) and all(
                isinstance(b, dict) and b.get("type") == "text" for b in content):
            return "\n\n".join(_str_field(b, "text", f"{at}.source") for b in content)
    raise MessagesInputError(
        f"{at}: document blocks with a {kind!r} source are not supported for this model "
        "(only plain text documents are)")


def _tool_result(block: JSON, at: str) -> tuple[JSON, list[JSON]]:
    call_id = _str_field(block, "tool_use_id", at)
    content = block.get("content", "")
    texts: list[str] = []
    images: list[JSON] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for k, item in enumerate(content):
            where = f"{at}.content.{k}"
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "image":
                images.append(_image_part(item, where))
            elif kind in ("text", "document"):
                texts.append(_user_part(item, where)["text"])
            else:
                raise MessagesInputError(
                    f"{where}: {kind!r} blocks in a tool result are not supported for this model")
    else:
        raise MessagesInputError(f"{at}.content: Input should be a string or a list of blocks")
    text = "\n\n".join(texts)
    if block.get("is_error") is True:
        text = "Error: " + text
    return {"role": "tool", "tool_call_id": call_id, "content": text}, images


def _assistant_turn(blocks: list[JSON], at: str) -> JSON:
    texts: list[str] = []
    calls: list[JSON] = []
    for j, block in enumerate(blocks):
        where = f"{at}.content.{j}"
        kind = block["type"]
        if kind == "text":
            texts.append(_str_field(block, "text", where))
        elif kind == "tool_use":
            arguments = _encode(block.get("input", {})).decode()
            calls.append({"id": _str_field(block, "id", where), "type": "function",
                          "function": {"name": _str_field(block, "name", where),
                                       "arguments": arguments}})
        elif kind not in _THINKING_BLOCKS:
            raise MessagesInputError(
                f"{where}: {kind!r} blocks in an assistant turn are not supported for this model")
    # Text blocks of one model turn are one text, cut where tool calls or
    # citations went: joined back without a separator.
    message: JSON = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        # A turn of thinking blocks only: OpenAI rejects an assistant message
        # with neither content nor tool calls.
        message["content"] = ""
    return message


def _sampling(body: JSON, request: JSON) -> None:
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            request[name] = body[name]
    stops = body.get("stop_sequences")
    if stops:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise MessagesInputError("stop_sequences: Input should be a list of strings")
        # Passed whole: OpenAI itself caps ``stop`` at 4 and will say so, but
        # compatible servers often take more.
        request["stop"] = stops
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        request["user"] = metadata["user_id"]


def _tooling(body: JSON, request: JSON) -> None:
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise MessagesInputError("tools: Input should be a list")
    choice = body.get("tool_choice")
    openai_choice, parallel = _tool_choice(choice) if choice is not None else (None, True)
    if not tools:
        # OpenAI rejects tool_choice / parallel_tool_calls without tools.
        return
    request["tools"] = [_tool(tool, f"tools.{i}") for i, tool in enumerate(tools)]
    if openai_choice is not None:
        request["tool_choice"] = openai_choice
    if not parallel:
        request["parallel_tool_calls"] = False


def _tool(tool: Any, at: str) -> JSON:
    if not isinstance(tool, dict):
        raise MessagesInputError(f"{at}: Input should be an object")
    kind = tool.get("type")
    if kind not in _CUSTOM_TOOL_TYPES:
        raise MessagesInputError(
            f"{at}: server tool {kind!r} is not supported for this model "
            "(only custom tools with an input_schema are)")
    schema = tool.get("input_schema")
    if not isinstance(schema, dict):
        raise MessagesInputError(f"{at}.input_schema: Field required")
    function: JSON = {"name": _str_field(tool, "name", at)}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    function["parameters"] = schema
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> tuple[str | JSON, bool]:
    """OpenAI ``tool_choice`` and whether parallel tool calls stay allowed."""
    if not isinstance(choice, dict):
        raise MessagesInputError("tool_choice: Input should be an object")
    kind = choice.get("type")
    parallel = choice.get("disable_parallel_tool_use") is not True
    if kind == "tool":
        name = _str_field(choice, "name", "tool_choice")
        return {"type": "function", "function": {"name": name}}, parallel
    if kind in _TOOL_CHOICES:
        return _TOOL_CHOICES[kind], parallel
    raise MessagesInputError(
        "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")


def _str_field(obj: JSON, name: str, at: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise MessagesInputError(f"{at}.{name}: Field required (a string)")
    return value


# ===================================================================== response


def openai_to_message(body: bytes | JSON, requested_model: str) -> bytes:
    """OpenAI ``chat.completion`` -> Anthropic Message JSON bytes.

    ``model`` is ``requested_model``: Anthropic clients expect the name they
    asked for. Raises ``ValueError`` for a body that is not a completion.
    """
    data = load_json(body, "response")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("OpenAI response has no choices")
    choice = choices[0]
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    content: list[JSON] = []
    text = _message_text(message.get("content"))
    refusal = message.get("refusal")
    refused = isinstance(refusal, str) and bool(refusal)
    if isinstance(refusal, str) and refusal and not text:
        text = refusal
    if text:
        content.append({"type": "text", "text": text})
    tool_uses = _tool_uses(message)
    content.extend(tool_uses)
    # ``reasoning_content`` (DeepSeek, vLLM) is dropped: an Anthropic thinking
    # block needs a signature, and requests drop thinking blocks anyway.
    reason = stop_reason(choice.get("finish_reason"), bool(tool_uses), refused)
    return _encode({
        "id": message_id(data.get("id")), "type": "message", "role": "assistant",
        "model": requested_model, "content": content, "stop_reason": reason,
        # OpenAI does not say which stop sequence matched, or whether one did.
        "stop_sequence": None,
        "usage": usage_fields(openai_usage(data.get("usage"))),
    })


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # a few servers answer with content parts
        return "".join(p["text"] for p in content
                       if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _tool_uses(message: JSON) -> list[JSON]:
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        calls = []
    legacy = message.get("function_call")  # the deprecated single-call form
    if isinstance(legacy, dict) and not calls:
        calls = [{"function": legacy}]
    blocks = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        name = function.get("name")
        blocks.append({"type": "tool_use", "id": tool_use_id(call.get("id")),
                       "name": name if isinstance(name, str) else "",
                       "input": tool_input(function.get("arguments"))})
    return blocks
