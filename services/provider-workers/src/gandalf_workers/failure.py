"""The failure of an upstream call, shared by the provider adapters and the
pure translators (which must not import the adapters)."""

from __future__ import annotations


class UpstreamFailure(Exception):
    """A call failed before a response could be used.

    ``status`` is what the client should see; ``retryable`` says whether the
    router may try another target (connect errors, timeouts, 408, 429, 5xx).
    """

    def __init__(self, message: str, *, status: int = 502, type: str = "api_error",
                 code: str | None = None, retryable: bool = True,
                 retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.retryable = retryable
        self.retry_after = retry_after


def unsupported(provider: str, what: str) -> UpstreamFailure:
    """A clear 400 for an operation this provider does not have (never a
    provider-health failure, and no point in retrying it elsewhere blindly)."""
    return UpstreamFailure(f"{provider}: {what} is not supported by this provider",
                           status=400, type="invalid_request_error", code="unsupported",
                           retryable=False)
