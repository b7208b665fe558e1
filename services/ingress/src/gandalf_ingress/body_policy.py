"""What any client JSON body must respect before it enters the pipeline.

Checked once at the ingress, so the router and the workers never meet a
body their decoders or upstreams refuse (a 502 and a traceback otherwise):

* numbers: no float that overflows (``1e9999``) and no integer outside the
  signed 64-bit range -> 400 ``number_out_of_range``;
* nesting: at most :data:`MAX_DEPTH` levels -> 400 ``too_deep``;
* top-level fields another gateway would honour to redirect the upstream
  call or swap credentials (:data:`FORBIDDEN_FIELDS`, any ``litellm_*``)
  -> 400 ``forbidden_field``. Endpoints and credentials are the gateway's.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from gandalf_common.errors import BadRequestError

MAX_DEPTH = 64
_INT_MIN, _INT_MAX = -(2 ** 63), 2 ** 63 - 1

#: Top-level fields refused in every request body (README "Refused request fields").
FORBIDDEN_FIELDS = (
    "api_base", "base_url", "api_key", "api_version", "organization", "azure_ad_token",
    "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "aws_region_name",
    "vertex_credentials", "vertex_project", "vertex_location", "custom_llm_provider",
    "extra_headers", "extra_query", "extra_body", "user_api_key", "proxy_server_request",
)
#: Field-name prefixes refused the same way.
FORBIDDEN_PREFIXES = ("litellm_",)

# Floats through float(): an overflow becomes inf (found below, with its path)
# instead of an error without one.
_decode = msgspec.json.Decoder(float_hook=float).decode
#: A number can only be out of range with 19+ digits or a 3-digit exponent.
#: Found at C speed on the body reduced to digit/exponent/sign/other (a hit
#: inside a string only costs a closer look).
_SHAPE = bytes(0x30 if 0x30 <= b <= 0x39 else 0x65 if b in b"eE" else 0x2B if b in b"+-"
               else 0x20 for b in range(256))
_BIG_SHAPES = (b"0" * 19, b"e000", b"e+000")


def _maybe_big(body: bytes) -> bool:
    shape = body.translate(_SHAPE)
    return any(s in shape for s in _BIG_SHAPES)


def _out_of_range(where: str) -> BadRequestError:
    return BadRequestError(f"number out of range at {where}: numbers must be finite and "
                           "integers within the signed 64-bit range",
                           code="number_out_of_range")


def _too_deep(where: str) -> BadRequestError:
    return BadRequestError(f"request body is nested too deeply (more than {MAX_DEPTH} "
                           f"levels at {where})", code="too_deep")


def decode_body(body: bytes) -> Any:
    """``body`` decoded and checked. Invalid JSON raises the decoder's own
    error (``msgspec.DecodeError``, ``UnicodeDecodeError``) for the caller's
    message; a policy breach raises :class:`BadRequestError`."""
    try:
        data = _decode(body)
    except msgspec.ValidationError as exc:  # an integer too long for int()
        where = str(exc).partition(" - at ")[2].strip("`") or "$"
        raise _out_of_range(where) from None
    except RecursionError:
        raise _too_deep("$") from None
    check_tree(data, numbers=_maybe_big(body))
    return data


def check_body(body: bytes) -> None:
    """:func:`decode_body` for callers that decode the body themselves (and
    report its syntax errors): only policy breaches raise."""
    try:
        decode_body(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return


def check_tree(data: Any, *, numbers: bool = True) -> None:
    """Raise for a forbidden top-level field, a number out of range or
    nesting past :data:`MAX_DEPTH` anywhere in decoded JSON ``data``.
    ``numbers=False`` skips the number checks (the raw body has no number
    that could be out of range)."""
    if isinstance(data, dict):
        _check_fields(data)
    elif type(data) is not list:
        _check_scalar(data, "$")
        return
    stack: list[tuple[Any, int, str]] = [(data, 1, "$")]
    while stack:
        node, depth, path = stack.pop()
        if depth > MAX_DEPTH:
            raise _too_deep(path)
        values = node.values() if type(node) is dict else node
        # The element types, found at C speed: long token arrays and vectors
        # are not walked one by one unless a number in them may be too big.
        kinds = set(map(type, values))
        if not numbers and dict not in kinds and list not in kinds:
            continue
        pairs = node.items() if type(node) is dict else enumerate(node)
        for key, value in pairs:
            kind = type(value)
            if kind is dict or kind is list:
                stack.append((value, depth + 1, _child(path, key)))
            elif numbers and (kind is int or kind is float):
                _check_scalar(value, path, key)


def _child(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}"


def _check_scalar(value: Any, path: str, key: str | int | None = None) -> None:
    if type(value) is int:
        bad = not _INT_MIN <= value <= _INT_MAX
    elif type(value) is float:
        bad = not math.isfinite(value)
    else:
        return
    if bad:
        raise _out_of_range(path if key is None else _child(path, key))


def _check_fields(data: dict[str, Any]) -> None:
    for name in data:
        if name in FORBIDDEN_FIELDS or name.startswith(FORBIDDEN_PREFIXES):
            raise BadRequestError(f"field `{name}` is not allowed: upstream endpoints, "
                                  "credentials and routing are configured on the gateway",
                                  code="forbidden_field", param=name)
