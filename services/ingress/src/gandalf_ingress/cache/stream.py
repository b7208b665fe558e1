"""Serve a cached `chat.completion` to a streaming request as an equivalent SSE stream."""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["synthesize_stream"]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

_PIECES = 4  # content/arguments are split into at most this many chunks
_MIN_PIECE = 16  # ... of at least this many characters (short texts go in one chunk)


def _split(text: str) -> list[str]:
    if not text:
        return []
    size = max(_MIN_PIECE, -(-len(text) // _PIECES))
    return [text[i : i + size] for i in range(0, len(text), size)]


def synthesize_stream(completion_json: bytes, *, include_usage: bool) -> list[bytes]:
    """The `data:` payloads (JSON, without the `data: ` framing or `[DONE]`) of a stream.

    Per choice: a role chunk, content (or refusal) chunks, for each tool call a chunk with
    id/type/name and then its arguments in pieces, and a finish chunk with `finish_reason`.
    Then, when `include_usage`, one chunk with `choices: []` and the stored usage. All chunks
    carry the completion's id/created/model (and system_fingerprint/service_tier when set),
    with `object: chat.completion.chunk`. Logprobs are not replayed. The caller frames each
    payload as `data: <payload>\\n\\n` and ends with `data: [DONE]\\n\\n`.
    """
    completion: dict[str, Any] = _decode(completion_json)
    base: dict[str, Any] = {
        "id": completion.get("id", ""),
        "object": "chat.completion.chunk",
        "created": completion.get("created", 0),
        "model": completion.get("model", ""),
    }
    for extra in ("system_fingerprint", "service_tier"):
        if completion.get(extra) is not None:
            base[extra] = completion[extra]

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _encode({**base, "choices": [choice]})

    out: list[bytes] = []
    for pos, choice in enumerate(completion.get("choices") or []):
        index = choice.get("index", pos)
        message = choice.get("message") or {}
        out.append(chunk(index, {"role": message.get("role") or "assistant", "content": ""}))
        for piece in _split(message.get("content") or ""):
            out.append(chunk(index, {"content": piece}))
        for piece in _split(message.get("refusal") or ""):
            out.append(chunk(index, {"refusal": piece}))
        for t_index, call in enumerate(message.get("tool_calls") or []):
            function = call.get("function") or {}
            head = {
                "index": t_index,
                "id": call.get("id", ""),
                "type": call.get("type", "function"),
                "function": {"name": function.get("name", ""), "arguments": ""},
            }
            out.append(chunk(index, {"tool_calls": [head]}))
            for piece in _split(function.get("arguments") or ""):
                delta = {"tool_calls": [{"index": t_index, "function": {"arguments": piece}}]}
                out.append(chunk(index, delta))
        out.append(chunk(index, {}, choice.get("finish_reason") or "stop"))
    if include_usage and completion.get("usage") is not None:
        out.append(_encode({**base, "choices": [], "usage": completion["usage"]}))
    return out
