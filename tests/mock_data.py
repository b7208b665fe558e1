"""Deterministic content the mock upstream answers with (replies, token counts,
embeddings) and its OpenAI-shaped error bodies."""

from __future__ import annotations

import hashlib
import itertools
import json
import struct
from typing import Any

DEFAULT_EMBEDDING_DIMENSIONS = 8
MOCK_MODELS: tuple[str, ...] = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-3.5-turbo",
    "text-embedding-3-small",
    "text-embedding-3-large",
)
_CREATED = 1_700_000_000
_POLL_INTERVAL = 0.01  # seconds between transport-liveness polls

# --------------------------------------------------------------- deterministic data


def _content_text(content: Any) -> str:
    """Text of an OpenAI message ``content`` (string, list of parts or None)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return " ".join(parts)
    return str(content)


def count_prompt_tokens(messages: list[Any]) -> int:
    """Mock prompt token count: total characters of all message contents // 4 + 1."""
    total = sum(len(_content_text(m.get("content"))) for m in messages if isinstance(m, dict))
    return total // 4 + 1


def _last_user_text(messages: list[Any]) -> str:
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            return _content_text(m.get("content"))
    return ""


def mock_reply_words(messages: list[Any], words: int | None = None) -> list[str]:
    """Words of the mock reply: ``mock reply to: <last user text>`` (exactly ``words`` long
    when given: truncated, or padded with ``word4 word5 ...``)."""
    base = ["mock", "reply", "to:", *_last_user_text(messages).split()]
    if words is None:
        return base
    if words <= len(base):
        return base[:words]
    return base + [f"word{i}" for i in range(len(base), words)]


def mock_embedding(text: str, dimensions: int = DEFAULT_EMBEDDING_DIMENSIONS) -> list[float]:
    """Deterministic unit vector derived from sha256(text); values are float32-exact."""
    raw: list[float] = []
    for block in itertools.count():
        digest = hashlib.sha256(f"{block}:{text}".encode()).digest()
        for (value,) in struct.iter_unpack(">I", digest):
            raw.append(value / 0xFFFFFFFF * 2.0 - 1.0)
            if len(raw) == dimensions:
                break
        if len(raw) == dimensions:
            break
    norm = sum(v * v for v in raw) ** 0.5 or 1.0
    packed = struct.pack(f"<{dimensions}f", *(v / norm for v in raw))
    return list(struct.unpack(f"<{dimensions}f", packed))


def _error_body(message: str, err_type: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": err_type, "param": None, "code": code}}


def _error_type_and_code(status: int) -> tuple[str, str | None]:
    """OpenAI-style error ``type``/``code`` for a mock error status."""
    if status == 429:
        return "requests", "rate_limit_exceeded"  # what OpenAI sends for rate limits
    if 400 <= status < 500:
        return "invalid_request_error", None
    return "server_error", None


def mock_tool_call(body: dict[str, Any], index: int = 1) -> dict[str, Any] | None:
    """The call a tool-using model makes: when ``tools`` are offered and the
    conversation ends with a user turn, call the first tool with every required
    property set to ``"mock"``. ``None`` when the model should answer in text."""
    tools = body.get("tools")
    messages = body.get("messages")
    if not tools or not isinstance(messages, list) or not messages:
        return None
    if body.get("tool_choice") == "none" or messages[-1].get("role") != "user":
        return None
    function = tools[0].get("function", {}) if isinstance(tools[0], dict) else {}
    required = (function.get("parameters") or {}).get("required") or []
    return {"id": f"call_mock_{index}", "name": function.get("name", "tool"),
            "arguments": json.dumps({name: "mock" for name in required})}


def mock_tool_result_words(messages: list[Any]) -> list[str] | None:
    """After a tool result the model answers about it."""
    if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool":
        return ["tool", "said:", *_content_text(messages[-1].get("content")).split()]
    return None
