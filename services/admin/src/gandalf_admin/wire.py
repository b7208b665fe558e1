"""Request parsing and JSON responses for the admin API (over NATS, so no
HTTP framework: an ``AdminRequest`` in, an ``AdminResponse`` out)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import msgspec

from gandalf_common.contract import AdminResponse, Caller

from .errors import ApiError, bad_request
from .store.ports import Page

T = TypeVar("T")

#: The original's admin body limit (behaviour-spec §1.9).
MAX_BODY = 1024 * 1024
DEFAULT_LIMIT = 50
#: Larger limits are refused (400) rather than silently changed: the original
#: turned limit > 100 into 50, which clients could not notice.
MAX_LIMIT = 1000

_JSON = [("content-type", "application/json")]
_encode = msgspec.json.Encoder().encode
_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_UNKNOWN = re.compile(r"unknown field `(?P<name>[^`]+)`")
_MISSING = re.compile(r"missing required field `(?P<name>[^`]+)`")


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: bytes
    caller: Caller
    request_id: str = ""
    params: dict[str, str] = field(default_factory=dict)


def parse_query(raw: str) -> dict[str, str]:
    # Repeated parameters: the last one wins (none of ours is a list).
    return dict(parse_qsl(raw, keep_blank_values=True))


def json_response(status: int, body: Any, *, location: str = "") -> AdminResponse:
    headers = list(_JSON)
    if location:
        headers.append(("location", location))
    return AdminResponse(status=status, body=_encode(body), headers=headers)


def no_content() -> AdminResponse:
    return AdminResponse(status=204)


def error_response(exc: ApiError) -> AdminResponse:
    return AdminResponse(status=exc.status, body=exc.body(), headers=_JSON + exc.headers)


def _param_of(message: str, path: str) -> str | None:
    param = path.lstrip(".") or None
    for pattern in (_UNKNOWN, _MISSING):
        m = pattern.search(message)
        if m:
            name = m.group("name")
            return f"{param}.{name}" if param else name
    return param


def decode_body(req: Request, cls: type[T], *, empty_ok: bool = False) -> T:
    """The JSON body as ``cls``; 400 naming the field for any mistake."""
    if len(req.body) > MAX_BODY:
        raise ApiError(413, f"request body over {MAX_BODY} bytes", code="request_too_large")
    body = req.body.strip()
    if not body:
        if empty_ok:
            body = b"{}"
        else:
            raise bad_request("invalid request body: a JSON object is required")
    try:
        return msgspec.json.decode(body, type=cls)
    except msgspec.ValidationError as exc:
        m = _AT.match(str(exc))
        assert m is not None  # the pattern matches any text
        param = _param_of(m.group("msg"), m.group("path") or "")
        message = m.group("msg")
        raise bad_request(f"invalid {param}: {message}" if param else
                          f"invalid request body: {message}", param) from None
    except msgspec.DecodeError as exc:
        raise bad_request(f"invalid request body: {exc}") from None


def _int_param(query: dict[str, str], name: str, default: int) -> int:
    raw = query.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise bad_request(f"{name} must be an integer", name) from None


def page_of(query: dict[str, str]) -> Page:
    limit = _int_param(query, "limit", DEFAULT_LIMIT)
    offset = _int_param(query, "offset", 0)
    if not 1 <= limit <= MAX_LIMIT:
        raise bad_request(f"limit must be between 1 and {MAX_LIMIT}", "limit")
    if offset < 0:
        raise bad_request("offset must not be negative", "offset")
    return Page(offset=offset, limit=limit)


def envelope(data: list[Any], page: Page, total: int) -> dict[str, Any]:
    return {"data": data,
            "pagination": {"offset": page.offset, "limit": page.limit, "total": total}}


def flag(query: dict[str, str], name: str) -> bool:
    return query.get(name, "").lower() in ("1", "true", "yes")
