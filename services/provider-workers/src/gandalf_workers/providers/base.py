"""The ``Provider`` port every adapter implements, and its failure type."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from gandalf_common.contract import Usage


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


class ProviderResponse:
    """A whole (non-streaming) upstream response, body as OpenAI JSON bytes."""

    __slots__ = ("body", "model", "status", "usage")

    def __init__(self, body: bytes, usage: Usage | None, model: str = "",
                 status: int = 200) -> None:
        self.body = body
        self.usage = usage
        self.model = model
        self.status = status


class StreamItem:
    """One event of a translated stream: an OpenAI chunk (``data``) and/or usage."""

    __slots__ = ("data", "usage", "usage_only")

    def __init__(self, data: bytes | None, usage: Usage | None = None,
                 usage_only: bool = False) -> None:
        self.data = data
        self.usage = usage
        #: The chunk only carries usage (``choices: []``): dropped for clients
        #: that did not ask for ``stream_options.include_usage``.
        self.usage_only = usage_only


class Provider(Protocol):
    """An upstream LLM API spoken in OpenAI terms.

    ``payload`` is the client's OpenAI request as a dict with ``model`` already
    set to the target model. ``ttfb_timeout`` bounds connect + time to first
    byte only; a stream may then run as long as it keeps producing.
    """

    name: str

    async def complete(self, op: str, payload: dict[str, Any], *,
                       ttfb_timeout: float) -> ProviderResponse: ...

    def stream(self, payload: dict[str, Any], *,
               ttfb_timeout: float) -> AsyncIterator[StreamItem]: ...

    async def aclose(self) -> None: ...
