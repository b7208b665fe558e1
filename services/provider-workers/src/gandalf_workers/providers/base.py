"""The ``Provider`` port every adapter implements, and its failure type."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from gandalf_common.contract import NativeCall, Usage

# Re-exported: where the adapters have always found them.
from ..failure import UpstreamFailure as UpstreamFailure
from ..failure import unsupported as unsupported


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


class NativeResponse:
    """A native-API response: status and headers, then the body as raw bytes.

    ``usage`` is filled in by the adapter while ``body`` is read (it sniffs
    the provider's own usage fields), so it is final once ``body`` is done.
    A broken upstream stream raises :class:`UpstreamFailure` from ``body``.
    """

    __slots__ = ("body", "close", "headers", "ref", "status", "usage")

    def __init__(self, status: int, headers: list[tuple[str, str]],
                 body: AsyncIterator[bytes], close: Callable[[], Awaitable[None]]) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.close = close
        self.usage: Usage | None = None
        #: The id of what the upstream stored (Responses API), once ``body`` is done.
        self.ref = ""


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

    async def list_models(self, *, timeout: float) -> list[str]:
        """Model ids the upstream offers (its own listing, or a static list)."""
        ...

    async def native(self, call: NativeCall, body: bytes, target_model: str, *,
                     stream: bool, ttfb_timeout: float) -> NativeResponse:
        """Forward a native-API request (``call.kind`` in this type's
        ``NATIVE_KINDS`` other than the translated anthropic case): ``body``
        unchanged but for the model, which becomes ``target_model``;
        credentials are the provider's. Non-200 answers are returned, not
        raised, so the worker can pass a 4xx through or fail over on 5xx."""
        ...

    async def aclose(self) -> None: ...
