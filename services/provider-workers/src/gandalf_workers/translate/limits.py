"""Bounds on what a translator builds from a client-supplied tree.

Only the Gemini schema cleaner (:mod:`.gemini_schema`) builds a tree larger
than its input (it inlines ``$ref``); the Anthropic, Ollama and Messages
translators pass tool schemas and content through as they came, so their
size is the body's (bounded by the ingress size and nesting limits).
The :class:`Budget` counts while building and stops at the first bound, so
an exponential expansion never gets built.
"""

from __future__ import annotations

from typing import Any

import msgspec

#: Nodes (schema objects) one expanded schema may hold.
MAX_SCHEMA_NODES = 10_000
#: Bytes one expanded schema may take (estimated while building).
MAX_SCHEMA_BYTES = 1024 * 1024
#: Nesting of schema objects (``properties``/``items``/``anyOf`` levels).
MAX_SCHEMA_DEPTH = 32

_encode = msgspec.json.Encoder().encode


class LimitError(ValueError):
    """A client tree over a bound: a 400 with ``code``."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def recursive(ref: str) -> LimitError:
    return LimitError(f"schema is recursive ($ref {ref!r} is reached again inside its own "
                      "expansion); recursive schemas are not supported for this model",
                      code="schema_recursive")


class Budget:
    """Node and byte counts of one tree being built."""

    __slots__ = ("nodes", "size")

    def __init__(self) -> None:
        self.nodes = 0
        self.size = 0

    def node(self, depth: int) -> None:
        """Count one more object at ``depth``."""
        if depth > MAX_SCHEMA_DEPTH:
            raise LimitError(f"schema is nested deeper than {MAX_SCHEMA_DEPTH} levels",
                             code="schema_too_deep")
        self.nodes += 1
        if self.nodes > MAX_SCHEMA_NODES:
            raise LimitError(f"schema expands to more than {MAX_SCHEMA_NODES} nodes "
                             "(after inlining $ref)", code="schema_too_large")
        self.add(2)

    def value(self, key: str, value: Any) -> None:
        """Count one copied ``key: value`` pair."""
        if isinstance(value, str):
            size = len(value) + 2
        elif value is None or isinstance(value, bool | int | float):
            size = 8
        else:
            try:
                size = len(_encode(value))
            except (TypeError, ValueError, OverflowError):
                size = 64
        self.add(len(key) + 4 + size)

    def add(self, size: int) -> None:
        self.size += size
        if self.size > MAX_SCHEMA_BYTES:
            raise LimitError(f"schema expands to more than {MAX_SCHEMA_BYTES} bytes "
                             "(after inlining $ref)", code="schema_too_large")
