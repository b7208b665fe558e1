"""JSON schema -> what Gemini's ``Schema`` message accepts (tool parameters
and ``response_format`` schemas). Pure functions (no I/O).
"""

from __future__ import annotations

from typing import Any

from .gemini_common import TranslationError
from .limits import Budget, LimitError, recursive

#: Schema fields Gemini's ``Schema`` message knows; any other key (``$schema``,
#: ``additionalProperties``, ``strict``, ``examples``, ...) makes it answer
#: 400 "Unknown name". A whitelist, because the list of rejected keys is open.
_SCHEMA_KEYS = frozenset({
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
    "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
    "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum",
    "maximum",
})
#: String formats Gemini accepts; others (``uri``, ``email``) are refused with a 400.
_FORMATS = frozenset({"enum", "date-time", "int32", "int64", "float", "double"})


def clean_schema(schema: Any) -> dict[str, Any]:
    """A JSON schema reduced to what Gemini's ``Schema`` accepts, recursively:
    local ``$ref``s inlined, ``type: [x, "null"]`` and ``anyOf`` with null
    turned into ``nullable``, ``oneOf`` read as ``anyOf``, other keys dropped.

    Raises :class:`TranslationError` (a 400) for a recursive schema (Gemini's
    ``Schema`` cannot express one) and for one whose expansion passes the
    bounds of :mod:`.limits`: inlining ``$ref`` can grow a small schema
    exponentially, so the output is counted while built and never finished."""
    if not isinstance(schema, dict):
        return {}
    defs: dict[str, Any] = {}
    for key in ("definitions", "$defs"):
        if isinstance(schema.get(key), dict):
            defs.update(schema[key])
    try:
        return _clean(schema, defs, 0, frozenset(), Budget())
    except LimitError as exc:
        raise TranslationError(exc.message, code=exc.code) from None


def _resolve(node: dict[str, Any], defs: dict[str, Any],
             active: frozenset[str]) -> tuple[dict[str, Any], frozenset[str]]:
    """``node`` with its ``$ref`` chain inlined (siblings win), and the refs
    now being expanded on this path (one seen again is a cycle)."""
    while isinstance(ref := node.get("$ref"), str):
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        name = ref.rsplit("/", 1)[-1] if ref.startswith("#/") else None
        target = defs.get(name) if name is not None else None
        if name is None or not isinstance(target, dict):
            return siblings, active
        if name in active:
            raise recursive(ref)
        active = active | {name}
        node = {**target, **siblings}
    return node, active


def _clean(node: Any, defs: dict[str, Any], depth: int, active: frozenset[str],
           budget: Budget) -> dict[str, Any]:
    if not isinstance(node, dict):
        return {}
    budget.node(depth)
    node, active = _resolve(node, defs, active)
    out: dict[str, Any] = {}
    any_of: list[dict[str, Any]] | None = None
    for key, value in node.items():
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: _clean(sub, defs, depth + 1, active, budget)
                        for name, sub in value.items()}
            budget.add(sum(len(str(name)) + 4 for name in value))
        elif key == "items":
            out[key] = _clean(value[0] if isinstance(value, list) and value else value,
                              defs, depth + 1, active, budget)
        elif key in ("anyOf", "oneOf") and isinstance(value, list):
            any_of = [_clean(s, defs, depth + 1, active, budget) for s in value]
        elif key == "type" and isinstance(value, list):
            _merge_type_list(out, [t for t in value if isinstance(t, str)])
        elif key == "type" and value == "null":
            out["nullable"] = True
        elif key == "const" and isinstance(value, str):
            out.setdefault("enum", [value])
        elif key == "format":
            if value in _FORMATS:
                out[key] = value
        elif key in _SCHEMA_KEYS:
            budget.value(key, value)
            out[key] = value
    if any_of is not None:
        _merge_any_of(out, any_of)
    required = out.get("required")
    if isinstance(required, list) and isinstance(out.get("properties"), dict):
        # Gemini refuses a required name that is no property.
        out["required"] = [r for r in required if r in out["properties"]]
    return out


def _merge_type_list(out: dict[str, Any], types: list[str]) -> None:
    real = [t for t in types if t != "null"]
    if len(real) < len(types):
        out["nullable"] = True
    if len(real) == 1:
        out["type"] = real[0]
    elif real:
        out["anyOf"] = [{"type": t} for t in real]


def _merge_any_of(out: dict[str, Any], options: list[dict[str, Any]]) -> None:
    """``anyOf``/``oneOf`` (Gemini has no oneOf; anyOf is the closest): a null
    member becomes ``nullable`` (pydantic's ``Optional[X]``), and a single
    remaining member is merged in, the outer keys winning."""
    real = [o for o in options if o != {"nullable": True}]
    if len(real) < len(options):
        out["nullable"] = True
    if not real or any(not o for o in real):
        return  # an unconstrained member: the union allows anything
    if len(real) == 1:
        for key, value in real[0].items():
            out.setdefault(key, value)
    else:
        out["anyOf"] = real
