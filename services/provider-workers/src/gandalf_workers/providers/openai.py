"""OpenAI and OpenAI-compatible servers (vLLM, LM Studio, ...) via ``base_url``.

Bodies are forwarded as the client sent them (plus the target model), and
responses are relayed byte for byte: no field is dropped either way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec

from gandalf_common.contract import Usage

from .base import ProviderResponse, StreamItem, UpstreamFailure
from .http import UpstreamHTTP
from .sse import SSEError, iter_sse


class _UsageView(msgspec.Struct):
    usage: Usage | None = None


class _ChunkView(msgspec.Struct):
    choices: list[msgspec.Raw] | None = None
    usage: Usage | None = None


class _ErrorDetail(msgspec.Struct):
    message: str = ""
    type: str | None = None
    code: str | int | None = None


class _ErrorView(msgspec.Struct):
    error: _ErrorDetail | str | None = None


_usage_decoder = msgspec.json.Decoder(_UsageView)
_chunk_decoder = msgspec.json.Decoder(_ChunkView)
_error_decoder = msgspec.json.Decoder(_ErrorView)
_json_encode = msgspec.json.Encoder().encode

_PATHS = {"chat": "/chat/completions", "embed": "/embeddings"}
#: Retryable upstream statuses: another target may well succeed.
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def parse_retry_after(headers: httpx.Headers) -> float:
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            return 0.0  # an HTTP date: rare from LLM APIs, ignored
    return 0.0


def failure_from_response(provider: str, status: int, body: bytes,
                          headers: httpx.Headers) -> UpstreamFailure:
    """Turn an upstream error response into a failure carrying its message."""
    message = ""
    etype: str | None = None
    code: str | None = None
    try:
        err = _error_decoder.decode(body).error
        if isinstance(err, _ErrorDetail):
            message, etype = err.message, err.type
            code = str(err.code) if err.code is not None else None
        elif isinstance(err, str):
            message = err
    except msgspec.DecodeError:
        message = body[:512].decode("utf-8", "replace")
    text = f"{provider}: upstream returned {status}" + (f": {message}" if message else "")
    return UpstreamFailure(
        text, status=status, type=etype or ("api_error" if status >= 500 else
                                            "invalid_request_error"),
        code=code, retryable=status in RETRYABLE_STATUS,
        retry_after=parse_retry_after(headers))


class OpenAIProvider:
    """``Provider`` for the OpenAI wire format."""

    def __init__(self, name: str, base_url: str, api_key: str, http: UpstreamHTTP,
                 *, auth_header: str = "authorization",
                 query: dict[str, str] | None = None) -> None:
        self.name = name
        self._http = http
        base = base_url.rstrip("/")
        self._urls = {op: httpx.URL(base + path, params=query or None)
                      for op, path in _PATHS.items()}
        self._headers = {"content-type": "application/json"}
        if api_key:
            self._headers[auth_header] = (f"Bearer {api_key}" if auth_header == "authorization"
                                          else api_key)

    async def _send(self, op: str, payload: dict[str, Any],
                    ttfb_timeout: float) -> httpx.Response:
        url = self._urls.get(op)
        if url is None:
            raise UpstreamFailure(f"{self.name}: operation {op!r} is not supported", status=400,
                                  type="invalid_request_error", code="unsupported",
                                  retryable=False)
        return await self._http.post(url, self._headers, _json_encode(payload), ttfb_timeout)

    async def complete(self, op: str, payload: dict[str, Any], *,
                       ttfb_timeout: float) -> ProviderResponse:
        response = await self._send(op, payload, ttfb_timeout)
        try:
            body = await response.aread()
        except httpx.HTTPError as exc:
            raise UpstreamFailure(f"{self.name}: response body cut ({type(exc).__name__})",
                                  status=502, code="upstream_read_error") from exc
        finally:
            await response.aclose()
        if response.status_code != 200:
            raise failure_from_response(self.name, response.status_code, body, response.headers)
        try:
            usage = _usage_decoder.decode(body).usage
        except msgspec.DecodeError as exc:
            raise UpstreamFailure(f"{self.name}: upstream sent invalid JSON", status=502,
                                  code="upstream_invalid_response") from exc
        return ProviderResponse(body, usage, str(payload.get("model", "")))

    async def stream(self, payload: dict[str, Any], *,
                     ttfb_timeout: float) -> AsyncIterator[StreamItem]:
        response = await self._send("chat", payload, ttfb_timeout)
        try:
            if response.status_code != 200:
                body = await response.aread()
                raise failure_from_response(self.name, response.status_code, body,
                                            response.headers)
            done = False
            async for _event, data in iter_sse(response.aiter_raw()):
                if data == b"[DONE]":
                    done = True
                    break
                try:
                    view = _chunk_decoder.decode(data)
                except msgspec.DecodeError as exc:
                    raise UpstreamFailure(f"{self.name}: invalid stream chunk",
                                          code="upstream_invalid_response") from exc
                yield StreamItem(data, view.usage,
                                 view.usage is not None and not view.choices)
            if not done:
                raise UpstreamFailure(f"{self.name}: stream ended without [DONE]",
                                      code="upstream_stream_cut")
        except (httpx.HTTPError, SSEError) as exc:
            raise UpstreamFailure(f"{self.name}: stream interrupted ({type(exc).__name__})",
                                  code="upstream_stream_cut") from exc
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

