"""Token estimates reserved from the TPM bucket before a call (settled with the real usage).

Chat (behaviour-spec §7 heuristic): per message 4 + ceil(len(role)/4) + ceil(len(content as
JSON)/4), + ceil(len(name)/4) + 1 when ``name`` is set, + ceil(len(tool_calls as JSON)/4),
+ ceil(len(tool_call_id)/4); + 3 for the reply primer; at least 1. Lengths are UTF-8 bytes of
compact JSON (quotes and escapes included), as the original measured the raw request bytes.

Unlike the original, the completion counts too (TPM limits prompt + completion tokens):
``max_completion_tokens`` or ``max_tokens`` when given, times ``n``; when absent,
``DEFAULT_COMPLETION_ESTIMATE`` (1024). Over-reserving is temporary: ``settle`` refunds the
difference once the usage is known, and the limiter caps any estimate at the TPM capacity.
"""

from __future__ import annotations

import json
from typing import Any

#: Completion tokens assumed when the request sets no max_tokens/max_completion_tokens.
DEFAULT_COMPLETION_ESTIMATE = 1024
#: Upper bound for ``n`` in the estimate (choices per request).
_MAX_N = 128


def _ceil4(n: int) -> int:
    return -(-n // 4)


def _json_len(value: Any) -> int:
    if isinstance(value, str):  # the common case, without a full dumps of nested parts
        return len(json.dumps(value, ensure_ascii=False).encode())
    try:
        return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
    except (TypeError, ValueError):
        return len(str(value).encode())


def _text_len(value: Any) -> int:
    return len(value.encode()) if isinstance(value, str) else _json_len(value)


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if value > 0 else None


def estimate_prompt_tokens(messages: Any) -> int:
    """The §7 heuristic over a ``messages`` list."""
    total = 0
    if isinstance(messages, list):
        for msg in messages:
            if not isinstance(msg, dict):
                total += 4 + _ceil4(_json_len(msg))
                continue
            total += 4
            total += _ceil4(_text_len(msg.get("role") or ""))
            if "content" in msg:
                total += _ceil4(_json_len(msg["content"]))
            if msg.get("name"):
                total += _ceil4(_text_len(msg["name"])) + 1
            if msg.get("tool_calls"):
                total += _ceil4(_json_len(msg["tool_calls"]))
            if msg.get("tool_call_id"):
                total += _ceil4(_text_len(msg["tool_call_id"]))
    return max(1, total + 3)


def estimate_completion_tokens(body: dict[str, Any]) -> int:
    limit = _positive_int(body.get("max_completion_tokens"))
    if limit is None:
        limit = _positive_int(body.get("max_tokens"))
    if limit is None:
        limit = DEFAULT_COMPLETION_ESTIMATE
    n = _positive_int(body.get("n")) or 1
    return limit * min(n, _MAX_N)


def estimate_chat_tokens(body: dict[str, Any]) -> int:
    """Prompt heuristic + the completion allowance (see module docstring)."""
    return estimate_prompt_tokens(body.get("messages")) + estimate_completion_tokens(body)


def estimate_embedding_tokens(body: dict[str, Any]) -> int:
    """Sum of ceil(len(text)/4) over the inputs; token-id arrays count their length; min 1."""
    inp = body.get("input")
    items = inp if isinstance(inp, list) else [inp]
    if items and all(isinstance(x, int) and not isinstance(x, bool) for x in items):
        return max(1, len(items))  # one pre-tokenised input
    total = 0
    for item in items:
        if isinstance(item, str):
            total += _ceil4(len(item.encode()))
        elif isinstance(item, list):
            total += len(item)  # token ids
        elif item is not None:
            total += _ceil4(_json_len(item))
    return max(1, total)
