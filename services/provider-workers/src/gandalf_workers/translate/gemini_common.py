"""Pieces shared by the Gemini translators (:mod:`.gemini`, :mod:`.gemini_stream`,
:mod:`.gemini_embed`): the client-error type and the reading of Gemini
response objects (finish reasons, usage, stable tool-call ids).

Pure functions (no I/O).
"""

from __future__ import annotations

import hashlib
import math
import uuid
from typing import Any

import msgspec

_json_encode = msgspec.json.encode


class TranslationError(ValueError):
    """The OpenAI request cannot be expressed in Gemini terms (a client error)."""

    def __init__(self, message: str, *, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


#: Gemini finish reasons that mean the answer was withheld or cut by a filter.
_FILTERED = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
                       "IMAGE_SAFETY"})


def finish_reason(reason: Any, has_calls: bool) -> str:
    """Gemini ``finishReason`` -> OpenAI. Gemini says STOP after function
    calls too; OpenAI clients only run tools on ``tool_calls``."""
    if not isinstance(reason, str):  # a malformed answer: not a reason we know
        return "tool_calls" if has_calls else "stop"
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
