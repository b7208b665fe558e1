"""Anthropic Messages API: direct, on Vertex AI and on Bedrock.

OpenAI chat requests are translated (``translate.anthropic``); the three
hostings differ only in URL, credentials, a few body fields and, for
Bedrock streams, the framing (AWS binary event stream instead of SSE):

- direct: ``POST {base}/messages`` with ``anthropic-version``; ``x-api-key``.
- vertex: ``{base}/v1/projects/{p}/locations/{r}/publishers/anthropic/models/
  {model}:rawPredict`` (``:streamRawPredict`` to stream); the model is in the
  URL, ``anthropic_version: vertex-2023-10-16`` in the body; Google bearer.
- bedrock: ``{base}/model/{modelId}/invoke`` (``/invoke-with-response-stream``);
  ``anthropic_version: bedrock-2023-05-31``, no ``model`` or ``stream``; SigV4.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import yarl

from gandalf_common.config import ProviderConfig
from gandalf_common.contract import KIND_ANTHROPIC, NativeCall

from ..translate.anthropic import TranslationError, json_schema_tool, to_anthropic_request
from ..translate.anthropic import from_anthropic_response as _from_anthropic
from ..translate.anthropic_stream import AnthropicStreamError, AnthropicStreamTranslator
from .auth import Auth
from .base import NativeResponse, ProviderResponse, StreamItem, UpstreamFailure, unsupported
from .http import UpstreamHTTP, decode_json, read_ok
from .native import client_json, forward, rewrite_model, sniffer_for
from .openai import listed_ids, parse_retry_after
from .streams import FrameError, SSEError, iter_eventstream, iter_sse

API_VERSION = "2023-06-01"
VERTEX_VERSION = "vertex-2023-10-16"
BEDROCK_VERSION = "bedrock-2023-05-31"
#: What ``list_models`` answers on Vertex/Bedrock when the config names no models
#: (neither has an Anthropic model listing of its own).
STATIC_MODELS = ("claude-opus-4-6", "claude-sonnet-4-6", "claude-haiku-4-5")

#: Anthropic error type -> OpenAI error type.
_ERROR_TYPES = {"invalid_request_error": "invalid_request_error",
                "authentication_error": "authentication_error",
                "permission_error": "permission_error",
                "not_found_error": "invalid_request_error",
                "request_too_large": "invalid_request_error",
                "rate_limit_error": "rate_limit_error",
                "api_error": "api_error", "overloaded_error": "api_error",
                "timeout_error": "timeout_error"}
_STATUS_TYPES = {401: "authentication_error", 403: "permission_error",
                 429: "rate_limit_error"}
#: An ``error`` event inside a running stream: the status the client should see.
_STREAM_ERROR_STATUS = {"rate_limit_error": 429, "invalid_request_error": 400,
                        "authentication_error": 401, "permission_error": 403,
                        "not_found_error": 404, "request_too_large": 413}
#: Bedrock stream exception (``:exception-type``, lower-cased) -> status.
_BEDROCK_EXCEPTIONS = {"throttlingexception": 429, "servicequotaexceededexception": 429,
                       "validationexception": 400, "accessdeniedexception": 403,
                       "resourcenotfoundexception": 404, "modeltimeoutexception": 504,
                       "internalserverexception": 500, "serviceunavailableexception": 503,
                       "modelstreamerrorexception": 502, "modelnotreadyexception": 503}

_json_decode = msgspec.json.Decoder().decode
_json_encode = msgspec.json.Encoder().encode


def retryable_status(status: int) -> bool:
    """408, 429 and every 5xx (Anthropic's 529 "overloaded" included)."""
    return status in (408, 429) or status >= 500


def failure_from_response(provider: str, status: int, body: bytes,
                          headers: httpx.Headers) -> UpstreamFailure:
    """An error answer as a failure: Anthropic's ``{"type":"error","error":{..}}``,
    Google's ``{"error":{"message","status"}}`` (Vertex) or Bedrock's
    ``{"message"}`` with the exception name in ``x-amzn-ErrorType``."""
    message, etype = "", ""
    try:
        data: Any = _json_decode(body)
    except (msgspec.DecodeError, RecursionError):
        data, message = None, body[:512].decode("utf-8", "replace").strip()
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            message = str(err.get("message") or "")
            etype = str(err.get("type") or err.get("status") or "")
        else:
            message = str(data.get("message") or data.get("Message") or "")
    amzn = headers.get("x-amzn-errortype", "")
    if amzn and not etype:
        etype = amzn.split(":", 1)[0]
    otype = _ERROR_TYPES.get(etype) or _STATUS_TYPES.get(status) or (
        "api_error" if status >= 500 else "invalid_request_error")
    text = f"{provider}: upstream returned {status}" + (f": {message}" if message else "")
    return UpstreamFailure(text, status=status, type=otype, code=etype or None,
                           retryable=retryable_status(status),
                           retry_after=parse_retry_after(headers))


def bedrock_model_id(model: str) -> str:
    """The model id as one path segment (inference-profile ARNs hold ``/``).

    Escaped as botocore does, then normalised as yarl (under aiohttp) will
    send it, which unescapes what a path may hold verbatim (``%3A`` -> ``:``):
    SigV4 signs the path, so it must sign the one that goes on the wire.
    """
    return yarl.URL("http://h/" + quote(model, safe="")).raw_path[1:]


class AnthropicProvider:
    """``Provider`` for the Anthropic Messages API, on any of its hostings."""

    def __init__(self, cfg: ProviderConfig, http: UpstreamHTTP, auth: Auth) -> None:
        self.name = cfg.name
        self._http = http
        self._auth = auth
        self._hosting = cfg.hosting
        self._base = (cfg.base_url or "https://api.anthropic.com/v1").rstrip("/")
        self._models = cfg.model_map
        self._listed = list(dict.fromkeys([*cfg.models, *cfg.model_map]))
        if cfg.hosting == "vertex":
            self._vertex_base = (f"{self._base}/v1/projects/{cfg.project}/locations/"
                                 f"{cfg.region}/publishers/anthropic/models/")

    # ------------------------------------------------------------ requests

    def _url(self, model: str, *, stream: bool, count_tokens: bool = False) -> httpx.URL:
        if self._hosting == "vertex":
            action = "streamRawPredict" if stream else "rawPredict"
            return httpx.URL(f"{self._vertex_base}{quote(model, safe='@')}:{action}")
        if self._hosting == "bedrock":
            action = "invoke-with-response-stream" if stream else "invoke"
            return httpx.URL(f"{self._base}/model/{bedrock_model_id(model)}/{action}")
        return httpx.URL(self._base + ("/messages/count_tokens" if count_tokens
                                       else "/messages"))

    def _headers(self, *, stream: bool) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if not self._hosting:
            headers["anthropic-version"] = API_VERSION
        elif self._hosting == "bedrock":
            headers["accept"] = ("application/vnd.amazon.eventstream" if stream
                                 else "application/json")
        return headers

    def _hosted(self, body: dict[str, Any]) -> dict[str, Any]:
        """Vertex and Bedrock take the model from the URL and the API version
        in the body; Bedrock also picks streaming by URL, not by a field."""
        if self._hosting in ("vertex", "bedrock"):
            body.pop("model", None)
            body.setdefault("anthropic_version", VERTEX_VERSION if self._hosting == "vertex"
                            else BEDROCK_VERSION)
        if self._hosting == "bedrock":
            body.pop("stream", None)
        return body

    def _translate(self, payload: dict[str, Any], model: str, *, stream: bool
                   ) -> tuple[bytes, str | None]:
        try:
            body = to_anthropic_request({**payload, "stream": stream}, model=model)
        except TranslationError as exc:
            raise UpstreamFailure(f"{self.name}: {exc}", status=400,
                                  type="invalid_request_error", code="invalid_request",
                                  retryable=False) from exc
        return _json_encode(self._hosted(body)), json_schema_tool(payload)

    async def _post(self, model: str, body: bytes, *, stream: bool,
                    ttfb_timeout: float) -> httpx.Response:
        url = self._url(model, stream=stream)
        headers = self._headers(stream=stream)
        return await self._http.call("POST", url, headers, body, self._auth, ttfb_timeout)

    def _model(self, payload: dict[str, Any]) -> str:
        model = str(payload.get("model", ""))
        return self._models.get(model, model)

    # ------------------------------------------------------------ OpenAI ops

    async def complete(self, op: str, payload: dict[str, Any], *,
                       ttfb_timeout: float) -> ProviderResponse:
        if op != "chat":
            raise unsupported(self.name, "embeddings" if op == "embed" else f"operation {op!r}")
        model = self._model(payload)
        body, json_tool = self._translate(payload, model, stream=False)
        response = await self._post(model, body, stream=False, ttfb_timeout=ttfb_timeout)
        data = decode_json(self.name, await read_ok(self.name, response, failure_from_response))
        if not isinstance(data, dict) or data.get("type") not in (None, "message"):
            raise self._invalid("upstream sent something other than a message")
        out, usage = _from_anthropic(data, model=model, json_tool=json_tool)
        return ProviderResponse(_json_encode(out), usage, model)

    def _invalid(self, message: str) -> UpstreamFailure:
        return UpstreamFailure(f"{self.name}: {message}", code="upstream_invalid_response")

    def _cut(self, message: str) -> UpstreamFailure:
        return UpstreamFailure(f"{self.name}: {message}", code="upstream_stream_cut")

    async def stream(self, payload: dict[str, Any], *,
                     ttfb_timeout: float) -> AsyncIterator[StreamItem]:
        model = self._model(payload)
        body, json_tool = self._translate(payload, model, stream=True)
        response = await self._post(model, body, stream=True, ttfb_timeout=ttfb_timeout)
        translator = AnthropicStreamTranslator(model=model, json_tool=json_tool)
        try:
            if response.status_code != 200:
                raw = await response.aread()
                raise failure_from_response(self.name, response.status_code, raw,
                                            response.headers)
            async with contextlib.aclosing(self._events(response)) as events:
                async for event in events:
                    try:
                        outs = translator.feed(event)
                    except AnthropicStreamError as exc:
                        raise self._stream_error(exc) from exc
                    for out in outs:
                        yield StreamItem(_json_encode(out.chunk), out.usage, out.usage_only)
                    if translator.done:
                        break
            if not translator.done:
                raise self._cut("stream ended without message_stop")
        except (httpx.HTTPError, SSEError, FrameError) as exc:
            raise self._cut(f"stream interrupted ({type(exc).__name__})") from exc
        finally:
            await response.aclose()

    def _stream_error(self, exc: AnthropicStreamError) -> UpstreamFailure:
        status = _STREAM_ERROR_STATUS.get(exc.type, 502)
        return UpstreamFailure(f"{self.name}: upstream stream error: {exc.message}",
                               status=status, type=_ERROR_TYPES.get(exc.type, "api_error"),
                               code=exc.type, retryable=retryable_status(status))

    async def _events(self, response: httpx.Response) -> AsyncGenerator[Any, None]:
        """Decoded Anthropic events, from SSE or from Bedrock's event stream."""
        if self._hosting == "bedrock":
            async for raw in self._bedrock_events(response.aiter_raw()):
                yield self._decode_event(raw)
            return
        async for _name, data in iter_sse(response.aiter_raw()):
            yield self._decode_event(data)

    def _decode_event(self, data: bytes) -> Any:
        try:
            return _json_decode(data)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise self._invalid("upstream sent an invalid stream event") from exc

    async def _bedrock_events(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The Anthropic event JSON inside each Bedrock event-stream frame
        (``{"bytes": base64}``); exception frames raise."""
        try:
            async for headers, payload in iter_eventstream(chunks):
                kind = headers.get(":message-type")
                if kind == "event":
                    try:
                        wrapped = _json_decode(payload)
                        yield base64.b64decode(wrapped["bytes"], validate=True)
                    except (msgspec.DecodeError, RecursionError, KeyError, TypeError,
                            ValueError) as exc:
                        raise self._invalid("invalid Bedrock stream event") from exc
                elif kind in ("exception", "error"):
                    raise self._bedrock_exception(headers, payload)
        except FrameError as exc:
            raise self._cut(str(exc)) from exc

    def _bedrock_exception(self, headers: dict[str, Any], payload: bytes) -> UpstreamFailure:
        name = str(headers.get(":exception-type") or headers.get(":error-code") or "")
        message = str(headers.get(":error-message") or "")
        with contextlib.suppress(msgspec.DecodeError, AttributeError):
            message = str(_json_decode(payload).get("message") or message)
        status = _BEDROCK_EXCEPTIONS.get(name.lower(), 502)
        return UpstreamFailure(f"{self.name}: Bedrock stream {name or 'error'}: {message}",
                               status=status, type=_STATUS_TYPES.get(status) or (
                                   "invalid_request_error" if status < 500 else "api_error"),
                               code=name or None, retryable=retryable_status(status))

    # -------------------------------------------------------------- models

    async def list_models(self, *, timeout: float) -> list[str]:
        if self._hosting:
            return self._listed or list(STATIC_MODELS)
        url = httpx.URL(self._base + "/models", params={"limit": "1000"})
        response = await self._http.call("GET", url, {"anthropic-version": API_VERSION}, b"",
                                         self._auth, timeout)
        return listed_ids(decode_json(self.name, await read_ok(self.name, response,
                                                               failure_from_response)))

    # -------------------------------------------------------------- native

    async def native(self, call: NativeCall, body: bytes, target_model: str, *,
                     stream: bool, ttfb_timeout: float) -> NativeResponse:
        """The client's Messages request, sent as this hosting wants it; the
        answer is what Anthropic's own API would send (Bedrock's event stream
        is re-encoded as SSE)."""
        count = call.action == "messages/count_tokens"
        if call.kind != KIND_ANTHROPIC or not (call.action == "messages" or (
                count and not self._hosting)):
            raise unsupported(self.name, f"native {call.kind} {call.action}")
        stream = stream and not count
        model = self._models.get(target_model, target_model)
        client = {k.lower(): v for k, v in call.headers}
        if self._hosting:
            data = self._native_body(body, client.get("anthropic-beta", ""))
        else:
            data = rewrite_model(body, model)
        headers = self._headers(stream=stream)
        if not self._hosting:
            headers["anthropic-version"] = client.get("anthropic-version") or API_VERSION
        if self._hosting != "bedrock" and client.get("anthropic-beta"):
            headers["anthropic-beta"] = client["anthropic-beta"]
        transform = self._sse_from_bedrock if self._hosting == "bedrock" and stream else None
        response = await forward(self.name, self._http, self._auth,
                                 self._url(model, stream=stream, count_tokens=count), headers,
                                 data, sniffer_for(KIND_ANTHROPIC, stream=stream),
                                 ttfb_timeout=ttfb_timeout, transform=transform)
        if transform is not None and response.status == 200:
            response.headers = [(k, v) for k, v in response.headers if k != "content-type"]
            response.headers.append(("content-type", "text/event-stream; charset=utf-8"))
        return response

    def _native_body(self, body: bytes, beta: str) -> bytes:
        data = client_json(body)
        if self._hosting == "bedrock" and beta:
            # Bedrock takes beta flags in the body (as Anthropic's Bedrock SDK sends them).
            data.setdefault("anthropic_beta", [b.strip() for b in beta.split(",") if b.strip()])
        return _json_encode(self._hosted(data))

    async def _sse_from_bedrock(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Bedrock's event stream as the SSE Anthropic's API sends:
        ``event: <type>`` and ``data: <the event JSON, as sent>``."""
        async for raw in self._bedrock_events(chunks):
            event = self._decode_event(raw)
            kind = event.get("type") if isinstance(event, dict) else None
            if not isinstance(kind, str):
                continue
            if b"\n" in raw or b"\r" in raw:
                raw = _json_encode(event)  # one SSE data line
            yield b"event: " + kind.encode() + b"\ndata: " + raw + b"\n\n"

    async def aclose(self) -> None:
        await self._http.aclose()
