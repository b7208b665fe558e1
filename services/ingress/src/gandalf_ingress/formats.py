"""Error bodies in each native API's own shape, so that API's SDKs parse
them (the OpenAI shape is in ``gandalf_common.errors``)."""

from __future__ import annotations

import msgspec

from gandalf_common.contract import KIND_ANTHROPIC, KIND_GEMINI, KIND_OLLAMA, KIND_RESPONSES
from gandalf_common.errors import error_body

_encode = msgspec.json.encode

_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                    429: "rate_limit_error", 529: "overloaded_error"}
_GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                  404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED", 409: "ABORTED",
                  413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED",
                  501: "UNIMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def anthropic_error_type(status: int) -> str:
    return _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else
                                "invalid_request_error")


def native_error_body(kind: str, status: int, message: str, *, type: str | None = None,
                      code: str | None = None) -> bytes:
    """A whole error response body for a native endpoint."""
    if kind == KIND_ANTHROPIC:
        return _encode({"type": "error", "error": {"type": anthropic_error_type(status),
                                                   "message": message}})
    if kind == KIND_GEMINI:
        return _encode({"error": {"code": status, "message": message,
                                  "status": _GOOGLE_STATUS.get(status, "INTERNAL")}})
    if kind == KIND_OLLAMA:
        return _encode({"error": message})
    return error_body(status, message, type=type, code=code)  # Azure: OpenAI's shape


def native_stream_error(kind: str, status: int, message: str, *, type: str | None = None,
                        code: str | None = None) -> bytes:
    """An in-band error for a native stream that already started, in the
    form that API's own streams report errors."""
    if kind == KIND_RESPONSES:  # the Responses event stream's own error event
        return b"event: error\ndata: " + _encode(
            {"type": "error", "code": code or type, "message": message, "param": None}) + b"\n\n"
    body = native_error_body(kind, status, message, type=type, code=code)
    if kind == KIND_ANTHROPIC:
        return b"event: error\ndata: " + body + b"\n\n"
    if kind == KIND_OLLAMA:
        return body + b"\n"
    return b"data: " + body + b"\n\n"
