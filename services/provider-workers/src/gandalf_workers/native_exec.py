"""Worker side of native-API requests (``op`` = native).

Two ways to serve one:

- passthrough: the provider speaks the client's format (``/v1/messages`` to
  Anthropic, ``/v1beta/models/*`` to Gemini, ...): the adapter forwards the
  body and the answer goes back byte for byte as ``Head`` + ``Chunk``... + ``End``;
- translated: Anthropic Messages aimed at another type: Messages -> OpenAI
  -> the adapter's own translation, and back to Anthropic's JSON or SSE.

Either way the first byte is read from the upstream before ``Head`` is sent,
so a target that fails before answering can still be failed over.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from gandalf_common.bus import inline_limit
from gandalf_common.contract import (
    KIND_ANTHROPIC,
    KIND_RESPONSES,
    Chunk,
    End,
    ErrorReply,
    ExecRequest,
    Head,
    Started,
    Usage,
    encode,
)

from .providers.base import StreamItem, UpstreamFailure
from .providers.openai import RETRYABLE_STATUS

if TYPE_CHECKING:
    from .handlers import ProviderPool

_json_decode = msgspec.json.Decoder(dict[str, Any]).decode
_SSE = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
_JSON = [("content-type", "application/json")]


def translated(provider_type: str, kind: str) -> bool:
    """Anthropic Messages on a non-Anthropic provider, and the Responses API on
    a non-OpenAI one, go through OpenAI chat terms."""
    return (kind == KIND_ANTHROPIC and provider_type != "anthropic") or (
        kind == KIND_RESPONSES and provider_type != "openai")


class _Out:
    """Publishes one native answer to the ingress inbox in order."""

    def __init__(self, pool: ProviderPool, req: ExecRequest, ctl: str) -> None:
        self.pool = pool
        self.req = req
        self.ctl = ctl
        self.seq = 0
        self.limit = inline_limit(pool.nc)

    async def _pub(self, msg: Head | Chunk | End | ErrorReply) -> None:
        await self.pool.nc.publish(self.req.reply_to, encode(msg))
        self.seq += 1

    async def head(self, status: int, headers: list[tuple[str, str]]) -> None:
        await self._pub(Head(attempt=self.req.attempt, seq=self.seq, status=status,
                             headers=headers))
        await self.pool._ctl(self.ctl, Started(attempt=self.req.attempt))

    async def data(self, data: bytes) -> None:
        for start in range(0, len(data), self.limit):
            await self._pub(Chunk(attempt=self.req.attempt, seq=self.seq,
                                  data=data[start:start + self.limit]))

    async def end(self, usage: Usage | None, ref: str = "") -> None:
        await self._pub(End(attempt=self.req.attempt, seq=self.seq, usage=usage,
                            provider=self.req.provider, model=self.req.target_model, ref=ref))

    async def error(self, exc: UpstreamFailure) -> None:
        await self._pub(ErrorReply(attempt=self.req.attempt, seq=self.seq, status=exc.status,
                                   type=exc.type, code=exc.code, message=exc.message))


async def run_native(pool: ProviderPool, req: ExecRequest, ctl: str,
                     body: bytes) -> UpstreamFailure | None:
    """Serve one native request; returns the failure that cut the answer after
    it started (None: whole). Raises only before the first byte went out."""
    call = req.route.native
    assert call is not None
    out = _Out(pool, req, ctl)
    if translated(pool.provider_type, call.kind):
        if call.kind == KIND_RESPONSES:
            from .responses_exec import run_translated

            return await run_translated(pool, req, out, body)
        return await _translated(pool, req, out, body)
    return await _passthrough(pool, req, out, body)


async def _passthrough(pool: ProviderPool, req: ExecRequest, out: _Out,
                       body: bytes) -> UpstreamFailure | None:
    call = req.route.native
    assert call is not None
    resp = await pool.provider.native(call, body, req.target_model, stream=req.route.stream,
                                      ttfb_timeout=pool._remaining(req))
    try:
        if resp.status != 200:
            data = b"".join([chunk async for chunk in resp.body])
            if resp.status in RETRYABLE_STATUS or resp.status >= 500:  # incl. 529 overloaded
                # Another target may well answer: fail over (the router decides).
                raise _failure(pool.provider.name, resp.status, data, resp.headers)
            # The client's request is wrong for this API: show it the
            # provider's own error, as that API's clients expect.
            await out.head(resp.status, resp.headers)
            await out.data(data)
            await out.end(None)
            return None
        chunks = resp.body.__aiter__()
        first = await _first(chunks)  # failures up to here can fail over
        await out.head(200, resp.headers)
        try:
            if first:
                await out.data(first)
            async for chunk in chunks:
                await out.data(chunk)
        except UpstreamFailure as exc:
            await out.error(exc)
            return exc
        await out.end(resp.usage, resp.ref)
        return None
    finally:
        await resp.close()


async def _first(chunks: AsyncIterator[bytes]) -> bytes:
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return b""


def _failure(provider: str, status: int, data: bytes,
             headers: list[tuple[str, str]]) -> UpstreamFailure:
    import httpx

    from .providers.openai import parse_retry_after

    message = data[:300].decode("utf-8", "replace")
    return UpstreamFailure(f"{provider}: upstream returned {status}: {message}", status=status,
                           type="rate_limit_error" if status == 429 else "api_error",
                           retryable=True, retry_after=parse_retry_after(httpx.Headers(headers)))


def _invalid(provider: str) -> UpstreamFailure:
    return UpstreamFailure(f"{provider}: upstream answer could not be translated to "
                           "Anthropic Messages", code="upstream_invalid_response")


async def _translated(pool: ProviderPool, req: ExecRequest, out: _Out,
                      body: bytes) -> UpstreamFailure | None:
    from .translate.messages_in import (
        MessagesInputError,
        MessagesStreamEncoder,
        messages_to_openai,
        openai_to_message,
    )

    call = req.route.native
    assert call is not None
    if call.action != "messages":
        raise UpstreamFailure(f"{pool.provider.name}: {call.action} needs an Anthropic "
                              "provider", status=400, type="invalid_request_error",
                              code="unsupported", retryable=False)
    try:
        payload = messages_to_openai(_json_decode(body), req.target_model)
    except (MessagesInputError, msgspec.DecodeError) as exc:
        raise UpstreamFailure(str(exc), status=400, type="invalid_request_error",
                              code="invalid_request", retryable=False) from exc
    payload["model"] = req.target_model
    timeout = pool._remaining(req)
    if not req.route.stream:
        payload["stream"] = False
        result = await pool.provider.complete("chat", payload, ttfb_timeout=timeout)
        try:
            message = openai_to_message(result.body, req.route.model)
        except ValueError as exc:  # the upstream's answer, not the client's request
            raise _invalid(pool.provider.name) from exc
        await out.head(200, _JSON)
        await out.data(message)
        await out.end(result.usage)
        return None
    payload["stream"] = True
    payload["stream_options"] = {"include_usage": True}
    encoder = MessagesStreamEncoder(req.route.model)
    items = pool.provider.stream(payload, ttfb_timeout=timeout)
    return await relay_translated(items, encoder, out, lambda: _invalid(pool.provider.name))


class StreamEncoder(Protocol):
    """Turns the OpenAI chat stream into another API's event stream."""

    def feed(self, data: bytes) -> bytes: ...
    def finish(self, usage: Usage | None) -> bytes: ...


async def relay_translated(items: AsyncIterable[StreamItem], encoder: StreamEncoder, out: _Out,
                           invalid: Callable[[], UpstreamFailure]) -> UpstreamFailure | None:
    """Stream a chat answer to the client re-encoded by ``encoder`` (the
    Messages and the Responses translations): the head goes out with the first
    item, a failure before it is the router's to fail over, after it an error
    event; returns the failure that ended the stream, if any."""
    usage: Usage | None = None
    started = False
    try:
        async for item in items:
            if item.usage is not None:
                usage = item.usage
            try:
                data = encoder.feed(item.data) if item.data is not None else b""
            except (ValueError, msgspec.DecodeError) as exc:  # the upstream's, not the client's
                raise invalid() from exc
            if not started:
                await out.head(200, _SSE)
                started = True
            if data:
                await out.data(data)
    except UpstreamFailure as exc:
        if not started:
            raise
        await out.error(exc)
        return exc
    if not started:
        await out.head(200, _SSE)
    await out.data(encoder.finish(usage))
    await out.end(usage)
    return None
