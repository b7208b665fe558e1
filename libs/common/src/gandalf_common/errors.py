"""Gateway errors and their OpenAI-shaped JSON bodies.

Each error knows its HTTP status, OpenAI ``type`` and ``code``, so every
service reports failures the same way and the ingress renders one shape:
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import msgspec


class ErrorDetail(msgspec.Struct, kw_only=True):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(msgspec.Struct, kw_only=True):
    error: ErrorDetail


_encode_json = msgspec.json.Encoder().encode

#: OpenAI's error ``type`` per status class; clients (and the SDKs) key on status.
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    408: "timeout_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_type_for(status: int) -> str:
    return _TYPE_BY_STATUS.get(status, "invalid_request_error" if status < 500 else "api_error")


def error_body(status: int, message: str, *, type: str | None = None,
               code: str | None = None, param: str | None = None) -> bytes:
    detail = ErrorDetail(message=message, type=type or error_type_for(status), param=param,
                         code=code)
    return _encode_json(ErrorBody(error=detail))


class GatewayError(Exception):
    """Base of every error that maps to an HTTP response."""

    status: int = 500
    type: str | None = None
    code: str | None = None

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 type: str | None = None, param: str | None = None,
                 retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        if type is not None:
            self.type = type
        self.param = param
        self.retry_after = retry_after

    def body(self) -> bytes:
        return error_body(self.status, self.message, type=self.type, code=self.code,
                          param=self.param)


class BadRequestError(GatewayError):
    status = 400
    code = "invalid_request"


class UnauthorizedError(GatewayError):
    status = 401
    code = "invalid_api_key"


class ForbiddenError(GatewayError):
    status = 403
    code = "forbidden"


class NotFoundError(GatewayError):
    status = 404
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist or you do not have access to it.",
                         param="model")


class PayloadTooLargeError(GatewayError):
    status = 413
    code = "request_too_large"


class RateLimitedError(GatewayError):
    status = 429
    code = "rate_limit_exceeded"


class UnavailableError(GatewayError):
    status = 503
    code = "service_unavailable"


class UpstreamError(GatewayError):
    status = 502
    code = "upstream_error"


class GatewayTimeoutError(GatewayError):
    status = 504
    code = "timeout"
