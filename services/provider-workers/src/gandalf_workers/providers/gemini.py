"""Gemini: Google AI (``generativelanguage``, API key) and Vertex AI (OAuth).

Chat and embeddings are translated from and to OpenAI terms
(``translate.gemini``); native ``/v1beta/models/{model}:{action}`` calls are
forwarded as they are, to the right URL for either hosting (the original
built Google AI URLs for Vertex too).

URLs (the model is in the URL, never in the body):

- direct: ``{base}/models/{model}:{action}``, ``base`` ending in ``/v1beta``;
- vertex: ``{base}/v1/projects/{p}/locations/{r}/publishers/google/models/{model}:{action}``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import msgspec

from gandalf_common.config import ProviderConfig
from gandalf_common.contract import KIND_GEMINI, NativeCall, Usage

from ..translate import gemini as tr
from .auth import Auth
from .base import NativeResponse, ProviderResponse, StreamItem, UpstreamFailure, unsupported
from .http import UpstreamHTTP, decode_json, read_ok
from .native import (
    JSONBodySniffer,
    Sniffer,
    forward,
    gemini_finished,
    gemini_usage,
    sniffer_for,
)
from .openai import parse_retry_after
from .streams import SSEError, iter_sse

_json_encode = msgspec.json.encode
_json_decode = msgspec.json.decode

#: Native actions forwarded as they are (anything else is refused, not guessed).
NATIVE_ACTIONS = frozenset({"generateContent", "streamGenerateContent", "countTokens",
                            "embedContent", "batchEmbedContents"})
#: Listed for Vertex, whose project-scoped publisher model list is unreliable.
VERTEX_MODELS = ("gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite",
                 "gemini-2.0-flash", "gemini-2.0-flash-lite", "gemini-embedding-001",
                 "text-embedding-005", "text-multilingual-embedding-002")
#: Pages of ``GET /models`` followed at most (1000 models a page is plenty).
_MAX_PAGES = 5
#: Vertex ``:predict`` takes up to 250 texts, but gemini-embedding-001 only one.
_VERTEX_EMBED_BATCH = 250
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "invalid_request_error",
                429: "rate_limit_error"}
#: Client headers never forwarded: credentials are the provider's own.
_DROPPED_HEADERS = frozenset({"authorization", "x-goog-api-key", "content-type",
                              "content-length", "host", "accept-encoding"})
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def _retryable(status: int) -> bool:
    return status in (408, 429) or status >= 500


def _retry_delay(details: Any) -> float:
    """Gemini puts the wait in ``google.rpc.RetryInfo`` (``"37s"``), not Retry-After."""
    for item in details if isinstance(details, list) else []:
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("RetryInfo"):
            match = _DURATION.match(str(item.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return 0.0


def _error_object(data: Any) -> dict[str, Any] | None:
    if isinstance(data, list) and data:  # Vertex wraps stream errors in an array
        data = data[0]
    err = data.get("error") if isinstance(data, dict) else None
    return err if isinstance(err, dict) else None


def failure_from_error(provider: str, status: int, err: dict[str, Any] | None,
                       fallback: str = "", retry_after: float = 0.0) -> UpstreamFailure:
    """An UpstreamFailure from Gemini's ``{"error": {code, message, status}}``."""
    message = str(err.get("message", "")) if err else fallback
    code = err.get("status") if err else None
    text = f"{provider}: upstream returned {status}" + (f": {message}" if message else "")
    return UpstreamFailure(
        text, status=status,
        type=_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error"),
        code=str(code) if code else None, retryable=_retryable(status),
        retry_after=retry_after or (_retry_delay(err.get("details")) if err else 0.0))


def failure_from_response(provider: str, status: int, body: bytes,
                          headers: httpx.Headers) -> UpstreamFailure:
    try:
        err = _error_object(_json_decode(body))
    except (msgspec.DecodeError, RecursionError):
        err = None
    return failure_from_error(provider, status, err,
                              body[:512].decode("utf-8", "replace").strip(),
                              parse_retry_after(headers))


def _usage(openai: dict[str, Any] | None) -> Usage | None:
    if openai is None:
        return None
    details = openai.get("prompt_tokens_details")
    return Usage(prompt_tokens=openai["prompt_tokens"],
                 completion_tokens=openai.get("completion_tokens", 0),
                 total_tokens=openai["total_tokens"],
                 cached_tokens=details.get("cached_tokens", 0) if details else 0)


def _bad_request(provider: str, exc: tr.TranslationError) -> UpstreamFailure:
    return UpstreamFailure(f"{provider}: {exc.message}", status=400,
                           type="invalid_request_error", code=exc.code, retryable=False)


def _without_key(query: str) -> bytes:
    """The client's query string minus ``key=`` (its own Google API key must
    never reach the upstream: credentials are the provider's)."""
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "key"]
    return urlencode(pairs).encode()


class _ArraySniffer(JSONBodySniffer):
    """``streamGenerateContent`` without ``alt=sse`` answers one JSON array
    of response objects: the last usage counts, some object must finish."""

    def __init__(self) -> None:
        super().__init__(gemini_usage)

    def finish(self) -> None:
        try:
            items = _json_decode(b"".join(self._parts))
        except (msgspec.DecodeError, RecursionError) as exc:
            raise UpstreamFailure("stream ended inside its JSON array",
                                  code="upstream_stream_cut") from exc
        items = items if isinstance(items, list) else [items]
        err = next((e for e in map(_error_object, items) if e is not None), None)
        if err is not None:
            raise UpstreamFailure(f"upstream stream error: {err.get('message', '')}",
                                  code=str(err.get("status") or "upstream_error"))
        for item in items:
            self.usage = gemini_usage(item) or self.usage
        if not any(gemini_finished("", item) for item in items):
            raise UpstreamFailure("stream ended before a finish reason",
                                  code="upstream_stream_cut")


class GeminiProvider:
    """``Provider`` for Gemini on Google AI or Vertex AI."""

    def __init__(self, cfg: ProviderConfig, http: UpstreamHTTP, auth: Auth) -> None:
        self.name = cfg.name
        self._http = http
        self._auth = auth
        self._map = cfg.model_map
        self._vertex = cfg.hosting == "vertex"
        self._models = list(cfg.models)
        base = cfg.base_url.rstrip("/")
        self._base = base
        if self._vertex:
            if not re.search(r"/v1(beta1)?$", base):
                base += "/v1"
            self._model_base = (f"{base}/projects/{cfg.project}/locations/{cfg.region}"
                                "/publishers/google/models")
        else:
            self._model_base = f"{base}/models"
        self._headers = {"content-type": "application/json"}

    # ------------------------------------------------------------------ urls

    def _model(self, target: str) -> str:
        model = self._map.get(target, target)
        return model.removeprefix("models/")

    def _url(self, model: str, action: str, query: bytes = b"") -> httpx.URL:
        url = httpx.URL(f"{self._model_base}/{model}:{action}")
        return url.copy_with(query=query) if query else url

    async def _post(self, url: httpx.URL, body: dict[str, Any], ttfb_timeout: float, *,
                    stream: bool = False) -> httpx.Response:
        raw = _json_encode(body)
        headers = dict(self._headers)
        if stream:
            # A compressor may hold back SSE events; streams come uncompressed.
            headers["accept-encoding"] = "identity"
        return await self._http.call("POST", url, headers, raw, self._auth, ttfb_timeout)

    async def _json(self, response: httpx.Response) -> Any:
        """The whole JSON body of a 200 answer; an error answer raises."""
        return decode_json(self.name, await read_ok(self.name, response,
                                                    failure_from_response))

    def _invalid(self, what: str) -> UpstreamFailure:
        return UpstreamFailure(f"{self.name}: unexpected upstream response ({what})",
                               status=502, code="upstream_invalid_response")

    # ------------------------------------------------------------------ chat

    async def complete(self, op: str, payload: dict[str, Any], *,
                       ttfb_timeout: float) -> ProviderResponse:
        if op == "embed":
            return await self._embed(payload, ttfb_timeout)
        if op != "chat":
            raise unsupported(self.name, f"operation {op!r}")
        target = str(payload.get("model", ""))
        try:
            body = tr.chat_request(payload)
        except tr.TranslationError as exc:
            raise _bad_request(self.name, exc) from exc
        response = await self._post(self._url(self._model(target), "generateContent"), body,
                                    ttfb_timeout)
        data = await self._json(response)
        if not isinstance(data, dict):
            raise self._invalid("not an object")
        out = tr.chat_response(data, target)
        return ProviderResponse(_json_encode(out), _usage(out.get("usage")), target)

    async def stream(self, payload: dict[str, Any], *,
                     ttfb_timeout: float) -> AsyncIterator[StreamItem]:
        target = str(payload.get("model", ""))
        try:
            body = tr.chat_request(payload)
        except tr.TranslationError as exc:
            raise _bad_request(self.name, exc) from exc
        url = self._url(self._model(target), "streamGenerateContent", b"alt=sse")
        response = await self._post(url, body, ttfb_timeout, stream=True)
        try:
            if response.status_code != 200:
                raw = await response.aread()
                raise failure_from_response(self.name, response.status_code, raw,
                                            response.headers)
            translator = tr.StreamTranslator(target)
            async for _event, data in iter_sse(response.aiter_bytes()):
                for chunk in translator.feed(self._stream_object(data)):
                    yield StreamItem(_json_encode(chunk))
            if not translator.finished:
                raise UpstreamFailure(f"{self.name}: stream ended without a finish reason",
                                      code="upstream_stream_cut")
            last = translator.usage_chunk()
            if last is not None:
                yield StreamItem(_json_encode(last), _usage(translator.usage), usage_only=True)
        except (httpx.HTTPError, SSEError) as exc:
            raise UpstreamFailure(f"{self.name}: stream interrupted ({type(exc).__name__})",
                                  code="upstream_stream_cut") from exc
        finally:
            await response.aclose()

    def _stream_object(self, data: bytes) -> dict[str, Any]:
        try:
            obj = _json_decode(data)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise UpstreamFailure(f"{self.name}: invalid stream chunk",
                                  code="upstream_invalid_response") from exc
        err = _error_object(obj)
        if err is not None:
            code = err.get("code")
            status = code if isinstance(code, int) and 400 <= code <= 599 else 502
            raise failure_from_error(self.name, status, err)
        if not isinstance(obj, dict):
            raise UpstreamFailure(f"{self.name}: invalid stream chunk",
                                  code="upstream_invalid_response")
        return obj

    # ------------------------------------------------------------ embeddings

    async def _embed(self, payload: dict[str, Any], ttfb_timeout: float) -> ProviderResponse:
        target = str(payload.get("model", ""))
        model = self._model(target)
        try:
            inputs = tr.embedding_inputs(payload)
            fmt = tr.encoding_format(payload)
            if self._vertex:
                vectors, tokens = await self._vertex_embed(payload, inputs, model,
                                                           ttfb_timeout)
            else:
                vectors = await self._batch_embed(payload, inputs, model, ttfb_timeout)
                tokens = tr.estimate_tokens(inputs)
        except tr.TranslationError as exc:
            raise _bad_request(self.name, exc) from exc
        if len(vectors) != len(inputs):
            raise self._invalid(f"{len(vectors)} embeddings for {len(inputs)} inputs")
        out = tr.embeddings_response(vectors, target, tokens, fmt)
        usage = Usage(prompt_tokens=tokens, total_tokens=tokens)
        return ProviderResponse(_json_encode(out), usage, target)

    async def _batch_embed(self, payload: dict[str, Any], inputs: list[str], model: str,
                           ttfb_timeout: float) -> list[list[float]]:
        url = self._url(model, "batchEmbedContents")
        vectors: list[list[float]] = []
        for start in range(0, len(inputs), tr.BATCH_EMBED_LIMIT):
            batch = inputs[start:start + tr.BATCH_EMBED_LIMIT]
            body = tr.batch_embed_request(payload, batch, model)
            data = await self._json(await self._post(url, body, ttfb_timeout))
            try:
                vectors += tr.batch_embed_vectors(data)
            except ValueError as exc:
                raise self._invalid(str(exc)) from exc
        return vectors

    async def _vertex_embed(self, payload: dict[str, Any], inputs: list[str], model: str,
                            ttfb_timeout: float) -> tuple[list[list[float]], int]:
        url = self._url(model, "predict")
        size = 1 if model.startswith("gemini-embedding") else _VERTEX_EMBED_BATCH
        vectors: list[list[float]] = []
        tokens = 0
        for start in range(0, len(inputs), size):
            body = tr.vertex_embed_request(payload, inputs[start:start + size])
            data = await self._json(await self._post(url, body, ttfb_timeout))
            try:
                batch, count = tr.vertex_embed_vectors(data)
            except ValueError as exc:
                raise self._invalid(str(exc)) from exc
            vectors += batch
            tokens += count
        return vectors, tokens

    # ---------------------------------------------------------------- models

    async def list_models(self, *, timeout: float) -> list[str]:
        if self._vertex:
            return self._models or list(VERTEX_MODELS)
        models: list[str] = []
        token = ""
        for _page in range(_MAX_PAGES):
            params = {"pageSize": "1000", **({"pageToken": token} if token else {})}
            url = httpx.URL(self._model_base, params=params)
            data = await self._json(await self._http.call("GET", url, {}, b"", self._auth,
                                                          timeout))
            items = data.get("models") if isinstance(data, dict) else None
            for item in items if isinstance(items, list) else []:
                name = item.get("name") if isinstance(item, dict) else None
                if isinstance(name, str) and name:
                    models.append(name.removeprefix("models/"))
            token = data.get("nextPageToken", "") if isinstance(data, dict) else ""
            if not token:
                break
        return models

    # ---------------------------------------------------------------- native

    async def native(self, call: NativeCall, body: bytes, target_model: str, *,
                     stream: bool, ttfb_timeout: float) -> NativeResponse:
        """``/v1beta/models/{model}:{action}`` bodies go out unchanged (the
        model is in the URL). The usage sniffer follows the wire format the
        upstream will actually use: SSE only for ``alt=sse``."""
        if call.kind != KIND_GEMINI or call.action not in NATIVE_ACTIONS:
            raise unsupported(self.name, f"native {call.kind} {call.action}")
        query = _without_key(call.query)
        url = self._url(self._model(target_model), call.action, query)
        sniffer: Sniffer
        if call.action != "streamGenerateContent":
            sniffer = sniffer_for(KIND_GEMINI, stream=False)
        elif ("alt", "sse") in parse_qsl(call.query):
            sniffer = sniffer_for(KIND_GEMINI, stream=True)
        else:
            sniffer = _ArraySniffer()
        headers = {k: v for k, v in call.headers if k.lower() not in _DROPPED_HEADERS}
        headers.update(self._headers)
        return await forward(self.name, self._http, self._auth, url, headers, body, sniffer,
                             ttfb_timeout=ttfb_timeout)

    async def aclose(self) -> None:
        await self._http.aclose()
