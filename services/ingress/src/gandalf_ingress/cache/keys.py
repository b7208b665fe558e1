"""Cache key derivation, cacheability and TTL rules (spec §8, with the §15.15 fixes).

`cache_key` is pure and cheap on purpose: request coalescing uses the same key.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

__all__ = ["cache_key", "cacheable", "effective_ttl"]

# Sampling parameters: numbers, rounded to 4 dp so 0.2 and 0.20000001 share a key.
_ROUNDED = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
# Everything else that changes the answer, copied as-is (nested order preserved: the order of
# properties in a JSON schema changes the order the model writes them in).
_RAW = (
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "tools",
    "tool_choice",
    "response_format",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "parallel_tool_calls",
    "reasoning_effort",
    "modalities",
)
# Message fields that matter, in a fixed order. Anything else on a message is ignored.
_MSG_FIELDS = ("role", "content", "name", "tool_calls", "tool_call_id")
# Deliberately excluded (do not change the answer): stream, stream_options, n, user,
# metadata, store.

_encode = msgspec.json.Encoder().encode


def _round(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value  # not a number: keep raw, validation is someone else's job
    return round(float(value), 4)


def _message(msg: Any) -> Any:
    if not isinstance(msg, dict):
        return msg
    return [[f, msg[f]] for f in _MSG_FIELDS if msg.get(f) is not None]


def cache_key(body: dict[str, Any], *, model: str, scope: str) -> str:
    """Hex SHA-256 of the parts of a chat request that decide its answer.

    `scope` is the key id (or the org id when a cache is shared per org); `model` is the alias
    the client asked for. Top-level and per-message field order is irrelevant (fixed order
    here); message content is kept byte-exact (no trimming). Fields that are absent or null
    are left out, so `{"seed": null}` and no seed give the same key.
    """
    messages = body.get("messages")
    if isinstance(messages, list):
        messages = [_message(m) for m in messages]
    # Names are distinct and emitted in sorted order -> canonical.
    parts: list[list[Any]] = [["messages", messages], ["model", model], ["scope", scope]]
    for name in _ROUNDED:
        value = body.get(name)
        if value is not None:
            parts.append([name, _round(value)])
    for name in _RAW:
        value = body.get(name)
        if value is not None:
            parts.append([name, value])
    parts.sort(key=lambda p: p[0])
    return hashlib.sha256(_encode(parts)).hexdigest()


def cacheable(body: dict[str, Any], *, max_temperature: float = 0.3) -> bool:
    """True when the answer is deterministic enough to cache.

    n <= 1 (absent counts as 1), and either a seed is set or temperature is explicitly set and
    <= `max_temperature`. A missing temperature means the provider default (1.0): not
    cacheable. Streaming is not considered here: a hit on a streaming request is served as a
    synthesized stream; the caller decides whether to do that.
    """
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n > 1):
        return False
    if body.get("seed") is not None:
        return True
    temperature = body.get("temperature")
    if temperature is None or isinstance(temperature, bool):
        return False
    if not isinstance(temperature, int | float):
        return False
    return temperature <= max_temperature


def effective_ttl(route_ttl_s: int | float, default_ttl: float) -> float:
    """Seconds an entry lives: the route's TTL when > 0, never above `cache.default_ttl`.

    The original fell back to a hard-coded 5 min; here the fallback is `default_ttl`.
    A result <= 0 means "do not store".
    """
    default = max(float(default_ttl), 0.0)
    if route_ttl_s and route_ttl_s > 0:
        return min(float(route_ttl_s), default)
    return default
