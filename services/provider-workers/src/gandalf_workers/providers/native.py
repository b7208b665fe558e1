"""Native passthrough: forward a provider's own API request and relay the
answer byte for byte, sniffing the provider's usage fields on the way.

The sniffers parse a copy of the bytes incrementally; they never change what
the client receives. ``finish`` raises when the upstream's stream ended
without its terminator, so a cut stream is a failure, never a success.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import httpx
import msgspec

from gandalf_common.contract import Usage

from .auth import Auth
from .base import NativeResponse, UpstreamFailure
from .http import UpstreamHTTP
from .streams import LineBuffer

_json_decode = msgspec.json.Decoder().decode
#: Response headers relayed to the client (the rest are hop-by-hop, or about
#: the upstream connection rather than the answer).
_RELAYED = ("content-type", "retry-after", "request-id", "x-request-id")
_RELAYED_PREFIXES = ("anthropic-", "x-ratelimit-", "openai-", "x-ms-", "x-goog-")
#: Non-stream bodies larger than this are refused rather than truncated.
MAX_BODY = 64 * 1024 * 1024


class Sniffer(Protocol):
    usage: Usage | None

    def feed(self, chunk: bytes) -> None: ...

    def finish(self) -> None:
        """Raise :class:`UpstreamFailure` if the answer was incomplete."""
        ...


def relayed_headers(headers: httpx.Headers) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers.multi_items()
            if k in _RELAYED or k.startswith(_RELAYED_PREFIXES)]


async def forward(provider: str, http: UpstreamHTTP, auth: Auth, url: httpx.URL,
                  headers: dict[str, str], body: bytes, sniffer: Sniffer, *,
                  ttfb_timeout: float, method: str = "POST",
                  transform: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]] | None = None,
                  ) -> NativeResponse:
    """Send the request; the response body is relayed as it arrives.

    ``transform`` re-encodes the upstream bytes first (Bedrock's binary event
    stream becomes the SSE Anthropic clients expect); the sniffer sees the
    bytes the client gets.
    """
    headers = {**headers, "accept-encoding": "identity"}  # sniffable, and relayed as is
    await auth.apply(method, url, headers, body)
    response = await http.send(method, url, headers, body, ttfb_timeout)
    out_headers = relayed_headers(response.headers)
    if response.status_code != 200:
        return NativeResponse(response.status_code, out_headers, _plain(response),
                              response.aclose)
    native = NativeResponse(200, out_headers, _plain(response), response.aclose)

    async def body_with_usage() -> AsyncIterator[bytes]:
        async for chunk in _iter(provider, response, sniffer, transform):
            yield chunk
        native.usage = sniffer.usage
        native.ref = getattr(sniffer, "ref", "")

    native.body = body_with_usage()
    return native


async def _plain(response: httpx.Response) -> AsyncIterator[bytes]:
    try:
        yield await response.aread()
    except httpx.HTTPError:
        yield b""


async def _iter(provider: str, response: httpx.Response, sniffer: Sniffer,
                transform: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]] | None
                ) -> AsyncIterator[bytes]:
    source: AsyncIterator[bytes] = response.aiter_raw()
    if transform is not None:
        source = transform(source)
    try:
        async for chunk in source:
            if chunk:
                sniffer.feed(chunk)
                yield chunk
    except httpx.HTTPError as exc:
        raise UpstreamFailure(f"{provider}: stream interrupted ({type(exc).__name__})",
                              code="upstream_stream_cut") from exc
    try:
        sniffer.finish()
    except UpstreamFailure as exc:
        exc.message = f"{provider}: {exc.message}"
        raise


# ----------------------------------------------------------------- sniffers


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _usage(prompt: int, completion: int, cached: int = 0, total: int = 0) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=completion,
                 total_tokens=total or prompt + completion, cached_tokens=cached)


def _cut(message: str) -> UpstreamFailure:
    return UpstreamFailure(message, code="upstream_stream_cut")


def _lines() -> LineBuffer:
    """Lines of a sniffed stream (a line past ``MAX_LINE`` is a broken stream)."""
    return LineBuffer(lambda: UpstreamFailure("upstream stream line too long",
                                              code="upstream_invalid_response"))


class JSONBodySniffer:
    """A whole JSON body; ``extract`` maps it to usage."""

    def __init__(self, extract: Callable[[dict[str, Any]], Usage | None]) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._extract = extract
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > MAX_BODY:
            raise UpstreamFailure("response body too large", code="upstream_too_large")
        self._parts.append(chunk)

    def finish(self) -> None:
        try:
            data = _json_decode(b"".join(self._parts))
        except (msgspec.DecodeError, RecursionError) as exc:
            raise UpstreamFailure("upstream sent invalid JSON",
                                  code="upstream_invalid_response") from exc
        if isinstance(data, dict):
            self.usage = self._extract(data)


class SSESniffer:
    """Server-sent events; ``on_event(event, data)`` returns usage or None,
    ``is_end(event, data)`` says the stream reached its terminator."""

    def __init__(self, on_event: Callable[[str, Any], Usage | None],
                 is_end: Callable[[str, Any], bool]) -> None:
        self._lines = _lines()
        self._event = ""
        self._data: list[bytes] = []
        self._on_event = on_event
        self._is_end = is_end
        self.ended = False
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> None:
        for raw in self._lines.split(chunk):
            line = raw.rstrip(b"\r")
            if not line:
                self._dispatch()
            elif line.startswith(b"data:"):
                self._data.append(line[5:].lstrip(b" "))
            elif line.startswith(b"event:"):
                self._event = line[6:].strip().decode("utf-8", "replace")

    def _dispatch(self) -> None:
        if not self._data:
            self._event = ""
            return
        raw = b"\n".join(self._data)
        event, self._event, self._data = self._event, "", []
        if raw == b"[DONE]":
            data: Any = "[DONE]"
        else:
            try:
                data = _json_decode(raw)
            except (msgspec.DecodeError, RecursionError) as exc:
                raise UpstreamFailure("upstream sent an invalid stream event",
                                      code="upstream_invalid_response") from exc
        usage = self._on_event(event, data)
        if usage is not None:
            self.usage = usage
        if self._is_end(event, data):
            self.ended = True

    def finish(self) -> None:
        if self._lines.rest().strip() or self._data:
            self.feed(b"\n\n")
        if not self.ended:
            raise _cut("stream ended before its terminator")


class NDJSONSniffer:
    """Newline-delimited JSON (Ollama): usage and the end from one object."""

    def __init__(self, on_line: Callable[[dict[str, Any]], Usage | None],
                 is_end: Callable[[dict[str, Any]], bool]) -> None:
        self._lines = _lines()
        self._on_line = on_line
        self._is_end = is_end
        self.ended = False
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> None:
        for line in self._lines.split(chunk):
            self._line(line)

    def _line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            data = _json_decode(line)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise UpstreamFailure("upstream sent an invalid NDJSON line",
                                  code="upstream_invalid_response") from exc
        if isinstance(data, dict):
            if isinstance(data.get("error"), str):  # Ollama reports mid-stream errors so
                raise UpstreamFailure(f"upstream stream error: {data['error']}",
                                      code="upstream_error")
            usage = self._on_line(data)
            if usage is not None:
                self.usage = usage
            if self._is_end(data):
                self.ended = True

    def finish(self) -> None:
        self._line(self._lines.rest())
        if not self.ended:
            raise _cut("stream ended before its final object")


# ------------------------------------------------------ per-format extractors


def openai_usage(data: Any) -> Usage | None:
    """OpenAI (and Azure) chat/embeddings bodies and stream chunks."""
    if not isinstance(data, dict):
        return None
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return _usage(_int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")),
                  cached, _int(usage.get("total_tokens")))


def anthropic_usage(data: Any) -> Usage | None:
    """A Messages response, or a ``message_start``/``message_delta`` event."""
    if not isinstance(data, dict):
        return None
    message = data.get("message")
    usage = (message if isinstance(message, dict) else data).get("usage")
    if not isinstance(usage, dict):
        return None
    cached = _int(usage.get("cache_read_input_tokens"))
    prompt = (_int(usage.get("input_tokens")) + cached
              + _int(usage.get("cache_creation_input_tokens")))
    return _usage(prompt, _int(usage.get("output_tokens")), cached)


_STREAM_ERROR_STATUS = {"rate_limit_error": 429, "overloaded_error": 529,
                        "invalid_request_error": 400}


class AnthropicSSESniffer(SSESniffer):
    """Input tokens come with ``message_start``, output tokens with
    ``message_delta``: merged here. An ``error`` event fails the stream."""

    def __init__(self) -> None:
        super().__init__(self._on, lambda event, data: isinstance(data, dict)
                         and data.get("type") == "message_stop")
        self._prompt = 0
        self._cached = 0

    def _on(self, event: str, data: Any) -> Usage | None:
        if not isinstance(data, dict):
            return None
        kind = data.get("type")
        if kind == "error":
            err = data.get("error")
            err = err if isinstance(err, dict) else {}
            etype = str(err.get("type") or "api_error")
            raise UpstreamFailure(f"upstream stream error: {err.get('message', '')}",
                                  status=_STREAM_ERROR_STATUS.get(etype, 502),
                                  type="rate_limit_error" if etype == "rate_limit_error"
                                  else "api_error", code=etype)
        if kind == "message_start":
            usage = anthropic_usage(data)
            if usage is not None:
                self._prompt, self._cached = usage.prompt_tokens, usage.cached_tokens
            return usage
        if kind == "message_delta":
            usage = data.get("usage")
            if isinstance(usage, dict):
                prompt = self._prompt or _int(usage.get("input_tokens"))
                return _usage(prompt, _int(usage.get("output_tokens")), self._cached)
        return None


def gemini_usage(data: Any) -> Usage | None:
    if not isinstance(data, dict):
        return None
    meta = data.get("usageMetadata")
    if not isinstance(meta, dict):
        return None
    # Thinking models bill their thoughts as output.
    completion = _int(meta.get("candidatesTokenCount")) + _int(meta.get("thoughtsTokenCount"))
    return _usage(_int(meta.get("promptTokenCount")), completion,
                  _int(meta.get("cachedContentTokenCount")), _int(meta.get("totalTokenCount")))


def gemini_finished(event: str, data: Any) -> bool:
    if not isinstance(data, dict):
        return False
    candidates = data.get("candidates")
    return isinstance(candidates, list) and any(
        isinstance(c, dict) and c.get("finishReason") for c in candidates)


def ollama_usage(data: dict[str, Any]) -> Usage | None:
    if "prompt_eval_count" not in data and "eval_count" not in data:
        return None
    return _usage(_int(data.get("prompt_eval_count")), _int(data.get("eval_count")))


def sniffer_for(kind: str, *, stream: bool) -> Sniffer:
    """The usage sniffer for a native answer of ``kind``."""
    if kind == "anthropic":
        return AnthropicSSESniffer() if stream else JSONBodySniffer(anthropic_usage)
    if kind == "gemini":
        return (SSESniffer(lambda _e, d: gemini_usage(d), gemini_finished) if stream
                else JSONBodySniffer(gemini_usage))
    if kind == "ollama":
        return (NDJSONSniffer(ollama_usage, lambda d: bool(d.get("done"))) if stream
                else JSONBodySniffer(ollama_usage))
    return (SSESniffer(lambda _e, d: openai_usage(d), lambda _e, d: d == "[DONE]")
            if stream else JSONBodySniffer(openai_usage))


def rewrite_model(body: bytes, model: str, *, drop: bool = False) -> bytes:
    """The client's JSON body with ``model`` set to the target (or removed,
    for APIs that take the model from the URL). Other fields are kept."""
    data = client_json(body)
    if drop:
        data.pop("model", None)
    else:
        data["model"] = model
    return msgspec.json.encode(data)


def client_json(body: bytes) -> dict[str, Any]:
    """A native request body as a JSON object; anything else is the client's 400."""
    try:
        data = _json_decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise UpstreamFailure("request body is not valid JSON", status=400,
                              type="invalid_request_error", code="invalid_json",
                              retryable=False) from exc
    if not isinstance(data, dict):
        raise UpstreamFailure("request body must be a JSON object", status=400,
                              type="invalid_request_error", code="invalid_json",
                              retryable=False)
    return data
