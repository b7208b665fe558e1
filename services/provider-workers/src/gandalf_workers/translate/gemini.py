"""OpenAI chat/embeddings <-> Gemini ``generateContent`` and embeddings.

Pure functions (no I/O). A request the client got wrong raises
:class:`TranslationError`, which the adapter turns into a 400.

The original gateway lost most of the conversation on the way to Gemini
(assistant tool calls, function names of tool results, images, several system
messages) and answered tool calls with ``finish_reason: stop`` and ids equal
to the function name. Everything here keeps the conversation whole.

This module translates chat requests and responses and is the package's
public face: the stream translator (:mod:`.gemini_stream`), embeddings
(:mod:`.gemini_embed`), schema cleaning (:mod:`.gemini_schema`) and the shared
pieces (:mod:`.gemini_common`) live next to it and are re-exported here.
"""

from __future__ import annotations

import base64
import time
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

import msgspec

from .gemini_common import (
    TranslationError,
    _blocked,
    _int,
    _parts,
    _response_id,
    _tool_call,
    finish_reason,
    new_completion_id,
    openai_usage,
    tool_call_id,
)
from .gemini_embed import (
    BATCH_EMBED_LIMIT,
    batch_embed_request,
    batch_embed_vectors,
    embedding_inputs,
    embeddings_response,
    encoding_format,
    estimate_tokens,
    vertex_embed_request,
    vertex_embed_vectors,
)
from .gemini_schema import clean_schema
from .gemini_stream import StreamTranslator

__all__ = [
    "BATCH_EMBED_LIMIT",
    "StreamTranslator",
    "TranslationError",
    "batch_embed_request",
    "batch_embed_vectors",
    "chat_request",
    "chat_response",
    "clean_schema",
    "embedding_inputs",
    "embeddings_response",
    "encoding_format",
    "estimate_tokens",
    "finish_reason",
    "new_completion_id",
    "openai_usage",
    "tool_call_id",
    "vertex_embed_request",
    "vertex_embed_vectors",
]

_json_decode = msgspec.json.decode


# ===================================================================== request

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
        fn = fn if isinstance(fn, dict) else {}
        name = fn.get("name")
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
    except (msgspec.DecodeError, RecursionError):
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
    except (msgspec.DecodeError, RecursionError):
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
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if isinstance(schema, dict):
            config["responseSchema"] = clean_schema(schema)
    elif kind not in ("text", "json_object"):
        raise TranslationError(f"response_format type {kind!r} is not supported")
    return config


# ==================================================================== response


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
