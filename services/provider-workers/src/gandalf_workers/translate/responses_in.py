"""OpenAI Responses API requests -> OpenAI chat requests, for targets that
have no Responses API (Anthropic, Gemini, Ollama): the chat path and its
per-provider translators then take it from there.

What has no chat equivalent is refused with a 400 naming the field, never
dropped silently. The answer goes back through :mod:`.responses_out`.
"""

from __future__ import annotations

from typing import Any

#: Input items one request may carry (each becomes at least one chat message).
MAX_INPUT_ITEMS = 2048
#: Content parts in one message item.
MAX_CONTENT_PARTS = 256
#: Top-level fields translated (or, like ``store`` and ``metadata``, honoured:
#: metadata is echoed back; translated responses are never stored).
_KNOWN = frozenset({"model", "input", "instructions", "tools", "tool_choice", "text",
                    "max_output_tokens", "temperature", "top_p", "stream", "store",
                    "metadata", "user", "parallel_tool_calls", "reasoning", "truncation"})
_ROLES = {"user": "user", "assistant": "assistant", "system": "system",
          "developer": "system"}
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


class ResponsesInputError(ValueError):
    """The client's request cannot be served on this target: a 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _bad(param: str, why: str) -> ResponsesInputError:
    return ResponsesInputError(f"{param}: {why}", param)


def responses_to_chat(data: dict[str, Any], *, provider_type: str,
                      reasoning_ok: bool = False) -> dict[str, Any]:
    """The chat request equivalent to a Responses request (model left to the caller)."""
    for name, value in data.items():
        if name not in _KNOWN and value is not None:
            raise _bad(name, f"not supported on {provider_type} targets (the Responses "
                             "API is translated to chat for them)")
    out: dict[str, Any] = {"messages": _messages(data)}
    if data.get("tools") is not None:
        out["tools"] = _tools(data["tools"])
    if data.get("tool_choice") is not None:
        out["tool_choice"] = _tool_choice(data["tool_choice"])
    fmt = _format(data.get("text"))
    if fmt is not None:
        out["response_format"] = fmt
    for src, dst in (("max_output_tokens", "max_completion_tokens"),
                     ("temperature", "temperature"), ("top_p", "top_p")):
        value = data.get(src)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _bad(src, "must be a number")
            out[dst] = value
    if isinstance(data.get("user"), str):
        out["user"] = data["user"]
    if data.get("parallel_tool_calls") is False:
        out["parallel_tool_calls"] = False
    truncation = data.get("truncation")
    if truncation not in (None, "disabled"):
        raise _bad("truncation", f"{truncation!r} is not supported on {provider_type} targets")
    reasoning = data.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, dict):
        raise _bad("reasoning", "must be an object")
    if reasoning and reasoning.get("effort") is not None:
        if not reasoning_ok:
            raise _bad("reasoning", f"no equivalent on {provider_type} targets")
        out["reasoning_effort"] = reasoning["effort"]
    return out


def _messages(data: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    instructions = data.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _bad("instructions", "must be a string")
        messages.append({"role": "system", "content": instructions})
    items = data.get("input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
        return messages
    if not isinstance(items, list) or not items:
        raise _bad("input", "must be a string or a non-empty array of items")
    if len(items) > MAX_INPUT_ITEMS:
        raise _bad("input", f"at most {MAX_INPUT_ITEMS} items")
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(where, "must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            call = {"id": _string(item, "call_id", where), "type": "function",
                    "function": {"name": _string(item, "name", where),
                                 "arguments": _string(item, "arguments", where)}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append({"role": "tool", "tool_call_id": _string(item, "call_id", where),
                             "content": output if isinstance(output, str)
                             else _text_of(output, f"{where}.output")})
        else:
            raise _bad(f"{where}.type", f"item type {kind!r} is not supported on "
                                        "translated targets")
    return messages


def _string(item: dict[str, Any], name: str, where: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise _bad(f"{where}.{name}", "must be a string")
    return value


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    raw_role = item.get("role")
    role = _ROLES.get(raw_role) if isinstance(raw_role, str) else None
    if role is None:
        raise _bad(f"{where}.role", f"unknown role {item.get('role')!r}")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise _bad(f"{where}.content", "must be a string or an array of parts")
    if len(content) > MAX_CONTENT_PARTS:
        raise _bad(f"{where}.content", f"at most {MAX_CONTENT_PARTS} parts")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS:
            parts.append({"type": "text", "text": _string(part, "text", at)})
        elif kind == "input_image" and role == "user" and isinstance(
                part.get("image_url"), str):
            image: dict[str, Any] = {"url": part["image_url"]}
            if part.get("detail") in ("low", "high", "auto"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise _bad(f"{at}.type", f"content part {kind!r} is not supported on "
                                     "translated targets")
    if role != "user":  # assistant and system turns are text in chat
        return {"role": role, "content": "".join(p["text"] for p in parts)}
    return {"role": role, "content": parts}


def _text_of(value: Any, where: str) -> str:
    if isinstance(value, list):
        texts = [p.get("text") for p in value if isinstance(p, dict)]
        if all(isinstance(t, str) for t in texts) and len(texts) == len(value):
            return "".join(texts)  # type: ignore[arg-type]
    raise _bad(where, "must be a string or an array of text parts")


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("tools", "must be an array")
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise _bad(f"tools[{i}].type", f"tool type {kind!r} is not supported on "
                                           "translated targets (function tools only)")
        function: dict[str, Any] = {"name": _string(tool, "name", f"tools[{i}]")}
        for name in ("description", "parameters", "strict"):
            if tool.get(name) is not None:
                function[name] = tool[name]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(
            choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise _bad("tool_choice", "only auto, none, required or a function tool are supported "
                              "on translated targets")


def _format(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        raise _bad("text", "must be an object")
    for name, value in text.items():
        if name != "format" and value is not None:
            raise _bad(f"text.{name}", "not supported on translated targets")
    fmt = text.get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise _bad("text.format.schema", "must be an object")
        spec: dict[str, Any] = {"name": fmt.get("name") or "response", "schema": fmt["schema"]}
        for name in ("description", "strict"):
            if fmt.get(name) is not None:
                spec[name] = fmt[name]
        return {"type": "json_schema", "json_schema": spec}
    raise _bad("text.format.type", f"format {kind!r} is not supported")
