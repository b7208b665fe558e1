"""OpenAI, Azure OpenAI and OpenAI-compatible servers (vLLM, LM Studio, ...).

Bodies are forwarded as the client sent them (plus the target model), and
responses are relayed byte for byte: no field is dropped either way.

Azure (``hosting: azure``): ``{base}/openai/deployments/{deployment}/...``
with ``api-version`` from the config, the deployment being the route
target's model; a base URL ending in ``/openai/v1`` is Azure's v1 API,
which takes the model in the body like OpenAI and needs no api-version.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec

from gandalf_common.config import ProviderConfig
from gandalf_common.contract import KIND_AZURE, KIND_RESPONSES, NativeCall, Usage
from gandalf_common.errors import error_type_for

from .auth import Auth
from .base import NativeResponse, ProviderResponse, StreamItem, UpstreamFailure, unsupported
from .http import UpstreamHTTP, decode_json, read_ok
from .native import forward, rewrite_model, sniffer_for
from .responses_sniff import responses_sniffer
from .streams import SSEError, iter_sse


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = 0


class _OpenAIUsage(msgspec.Struct):
    prompt_tokens: int | None = 0
    completion_tokens: int | None = 0
    total_tokens: int | None = 0
    #: Cached prompt tokens live here in OpenAI's shape.
    prompt_tokens_details: _PromptDetails | None = None

    def to_usage(self) -> Usage:
        details = self.prompt_tokens_details
        return Usage(prompt_tokens=self.prompt_tokens or 0,
                     completion_tokens=self.completion_tokens or 0,
                     total_tokens=self.total_tokens or 0,
                     cached_tokens=(details.cached_tokens or 0) if details else 0)


class _UsageView(msgspec.Struct):
    usage: _OpenAIUsage | None = None


class _ChunkView(msgspec.Struct):
    choices: list[msgspec.Raw] | None = None
    usage: _OpenAIUsage | None = None


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
#: Native Azure-style actions -> universal ops.
_AZURE_ACTIONS = {"chat/completions": "chat", "embeddings": "embed"}
#: Responses API actions -> (method, path after ``/responses/{id}``).
_RESPONSES_ACTIONS = {"responses": ("POST", ""), "retrieve": ("GET", ""),
                      "delete": ("DELETE", ""), "input_items": ("GET", "/input_items"),
                      "cancel": ("POST", "/cancel")}
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
    except (msgspec.DecodeError, RecursionError):
        message = body[:512].decode("utf-8", "replace")
    text = f"{provider}: upstream returned {status}" + (f": {message}" if message else "")
    return UpstreamFailure(
        text, status=status, type=etype or error_type_for(status),
        code=code, retryable=status in RETRYABLE_STATUS,
        retry_after=parse_retry_after(headers))


def listed_ids(data: Any) -> list[str]:
    """``data[].id`` of a model list (OpenAI's and Anthropic's shape)."""
    items = data.get("data") if isinstance(data, dict) else None
    return [m["id"] for m in items or [] if isinstance(m, dict) and "id" in m]


class OpenAIProvider:
    """``Provider`` for the OpenAI wire format (and Azure OpenAI)."""

    def __init__(self, cfg: ProviderConfig, http: UpstreamHTTP, auth: Auth) -> None:
        self.name = cfg.name
        self._http = http
        self._auth = auth
        base = cfg.base_url.rstrip("/")
        self._base = base
        self._models = cfg.model_map
        self._azure = cfg.hosting == "azure" and not base.endswith("/openai/v1")
        self._query = {"api-version": cfg.api_version} if self._azure else {}
        if self._azure and "/openai/deployments/" in base:
            # The original's sample: one deployment baked into base_url.
            self._deployment_base = base
        else:
            self._deployment_base = ""
        self._urls = {op: httpx.URL(base + path) for op, path in _PATHS.items()}
        self._headers = {"content-type": "application/json"}

    def _url(self, op: str, model: str) -> httpx.URL:
        path = _PATHS.get(op)
        if path is None:
            raise unsupported(self.name, f"operation {op!r}")
        if not self._azure:
            return self._urls[op]
        base = self._deployment_base or f"{self._base}/openai/deployments/{model}"
        return httpx.URL(base + path, params=self._query)

    async def _send(self, op: str, payload: dict[str, Any],
                    ttfb_timeout: float) -> httpx.Response:
        model = str(payload.get("model", ""))
        model = payload["model"] = self._models.get(model, model)
        url = self._url(op, model)
        body = _json_encode(payload)
        headers = dict(self._headers)
        if payload.get("stream"):
            # Streams are read raw (undecoded) to relay them as they come.
            headers["accept-encoding"] = "identity"
        return await self._http.call("POST", url, headers, body, self._auth, ttfb_timeout)

    async def complete(self, op: str, payload: dict[str, Any], *,
                       ttfb_timeout: float) -> ProviderResponse:
        response = await self._send(op, payload, ttfb_timeout)
        body = await read_ok(self.name, response, failure_from_response)
        try:
            view = _usage_decoder.decode(body).usage
            usage = view.to_usage() if view is not None else None
        except (msgspec.DecodeError, RecursionError) as exc:
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
                except (msgspec.DecodeError, RecursionError) as exc:
                    raise UpstreamFailure(f"{self.name}: invalid stream chunk",
                                          code="upstream_invalid_response") from exc
                usage = view.usage.to_usage() if view.usage is not None else None
                yield StreamItem(data, usage, usage is not None and not view.choices)
            if not done:
                raise UpstreamFailure(f"{self.name}: stream ended without [DONE]",
                                      code="upstream_stream_cut")
        except (httpx.HTTPError, SSEError) as exc:
            raise UpstreamFailure(f"{self.name}: stream interrupted ({type(exc).__name__})",
                                  code="upstream_stream_cut") from exc
        finally:
            await response.aclose()

    async def list_models(self, *, timeout: float) -> list[str]:
        if self._azure:
            url = httpx.URL(f"{self._base}/openai/models", params=self._query)
        else:
            url = httpx.URL(self._base + "/models")
        response = await self._http.call("GET", url, {}, b"", self._auth, timeout)
        return listed_ids(decode_json(self.name, await read_ok(self.name, response,
                                                               failure_from_response)))

    async def native(self, call: NativeCall, body: bytes, target_model: str, *,
                     stream: bool, ttfb_timeout: float) -> NativeResponse:
        """Azure-style deployment paths (``/openai/deployments/{d}/...``): the
        client's body byte for byte to an Azure deployment (the URL names
        it); an OpenAI-style URL names no model, so there the body's model
        becomes the target's and nothing else changes."""
        if call.kind == KIND_RESPONSES:
            return await self._responses(call, body, target_model, stream=stream,
                                         ttfb_timeout=ttfb_timeout)
        op = _AZURE_ACTIONS.get(call.action)
        if call.kind != KIND_AZURE or op is None:
            raise unsupported(self.name, f"native {call.kind} {call.action}")
        model = self._models.get(target_model, target_model)
        return await forward(self.name, self._http, self._auth, self._url(op, model),
                             dict(self._headers),
                             body if self._azure else rewrite_model(body, model),
                             sniffer_for(KIND_AZURE, stream=stream), ttfb_timeout=ttfb_timeout)

    async def _responses(self, call: NativeCall, body: bytes, target_model: str, *,
                         stream: bool, ttfb_timeout: float) -> NativeResponse:
        """The Responses API: a create carries the model in its body (rewritten
        like any other); a stored response's actions name it in the path."""
        method, suffix = _RESPONSES_ACTIONS.get(call.action, ("", ""))
        if not method:
            raise unsupported(self.name, f"responses {call.action}")
        if self._azure:  # Azure's Responses API is not per deployment
            base = f"{self._base}/openai/responses"
            params: dict[str, str] = dict(self._query)
        else:
            base, params = self._base + "/responses", {}
        path = base + (f"/{call.ref}{suffix}" if call.ref else "")
        if call.query:
            params.update(httpx.QueryParams(call.query))
        headers = dict(self._headers)
        if call.action == "responses":
            body = rewrite_model(body, self._models.get(target_model, target_model))
        else:
            body = b""
            headers.pop("content-type")
        return await forward(self.name, self._http, self._auth, httpx.URL(path, params=params),
                             headers, body, responses_sniffer(call.action, stream=stream),
                             ttfb_timeout=ttfb_timeout, method=method)

    async def aclose(self) -> None:
        await self._http.aclose()

