"""Ollama, spoken natively: ``/api/chat`` (NDJSON stream), ``/api/embed``,
``/api/tags``. Universal (OpenAI) calls are translated both ways
(``translate/ollama.py``); native Ollama calls are forwarded as they are.

The original gateway used Ollama's OpenAI-compatible ``/v1`` API; the native
one gives exact token counts on every stream and takes inline images, tools
and JSON schemas. ``/v1`` is still used for OpenAI bodies on Azure-style
native paths (``kind == "azure"``), which need no translation at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec

from gandalf_common.config import ProviderConfig
from gandalf_common.contract import KIND_AZURE, KIND_OLLAMA, NativeCall, Usage
from gandalf_common.errors import error_type_for

from ..translate import ollama as tr
from .auth import Auth
from .base import NativeResponse, ProviderResponse, StreamItem, UpstreamFailure, unsupported
from .http import UpstreamHTTP, read_ok
from .native import forward, rewrite_model, sniffer_for
from .openai import RETRYABLE_STATUS, OpenAIProvider, parse_retry_after
from .streams import FrameError, iter_ndjson

DEFAULT_BASE_URL = "http://localhost:11434"
#: Native Ollama actions forwarded as ``POST {base}/api/{action}``.
NATIVE_ACTIONS = frozenset({"chat", "generate", "embed", "embeddings", "show"})

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode


def _usage(counts: dict[str, int]) -> Usage:
    return Usage(prompt_tokens=counts.get("prompt_tokens", 0),
                 completion_tokens=counts.get("completion_tokens", 0),
                 total_tokens=counts.get("total_tokens", 0))


def _error_message(body: bytes) -> str:
    """Ollama says ``{"error": "..."}``; a proxy in front may say anything."""
    try:
        data = _json_decode(body)
    except (msgspec.DecodeError, RecursionError):
        return body[:512].decode("utf-8", "replace").strip()
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, str):
        return error
    message = error.get("message") if isinstance(error, dict) else None
    if isinstance(message, str):
        return message  # an OpenAI-shaped error (a gateway in front)
    return ""


def failure_from_response(provider: str, status: int, body: bytes,
                          headers: httpx.Headers) -> UpstreamFailure:
    """An Ollama error answer -> a failure keeping its status and message."""
    message = _error_message(body)
    # Ollama's 404 on a model-scoped endpoint means the model is not pulled.
    code = "model_not_found" if status == 404 and "model" in message.lower() else None
    text = f"{provider}: upstream returned {status}" + (f": {message}" if message else "")
    return UpstreamFailure(text, status=status, type=error_type_for(status), code=code,
                           retryable=status in RETRYABLE_STATUS,
                           retry_after=parse_retry_after(headers))


def _invalid(provider: str, what: str) -> UpstreamFailure:
    return UpstreamFailure(f"{provider}: upstream sent {what}", status=502,
                           code="upstream_invalid_response")


def _decode_object(provider: str, raw: bytes, what: str) -> dict[str, Any]:
    try:
        data = _json_decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise _invalid(provider, what) from exc
    if not isinstance(data, dict):
        raise _invalid(provider, what)
    return data


def _stream_error(provider: str, data: dict[str, Any]) -> UpstreamFailure:
    """An ``{"error": ...}`` object in place of an answer (Ollama reports a
    failure after the 200 this way, e.g. the runner crashing mid-stream)."""
    return UpstreamFailure(f"{provider}: upstream error: {data['error']}", status=502,
                           code="upstream_error")


class OllamaProvider:
    """``Provider`` for Ollama's native API."""

    def __init__(self, cfg: ProviderConfig, http: UpstreamHTTP, auth: Auth) -> None:
        self.name = cfg.name
        self._http = http
        self._auth = auth
        self._models = cfg.model_map
        base = (cfg.base_url or DEFAULT_BASE_URL).rstrip("/")
        self._base = base
        self._urls = {"chat": httpx.URL(base + "/api/chat"),
                      "embed": httpx.URL(base + "/api/embed")}
        self._headers = {"content-type": "application/json"}
        # OpenAI bodies (native kind azure) go to Ollama's OpenAI-compatible
        # API unchanged; same pool and credentials.
        self._openai = OpenAIProvider(
            msgspec.structs.replace(cfg, base_url=base + "/v1", hosting=""), http, auth)

    def _model(self, payload: dict[str, Any]) -> str:
        model = str(payload.get("model", ""))
        return self._models.get(model, model)

    async def _post(self, op: str, request: dict[str, Any],
                    ttfb_timeout: float) -> httpx.Response:
        url = self._urls[op]
        body = _json_encode(request)
        return await self._http.call("POST", url, dict(self._headers), body, self._auth,
                                     ttfb_timeout)

    async def _read(self, response: httpx.Response) -> bytes:
        return await read_ok(self.name, response, failure_from_response)

    async def complete(self, op: str, payload: dict[str, Any], *,
                       ttfb_timeout: float) -> ProviderResponse:
        model = self._model(payload)
        if op == "chat":
            request = tr.chat_request(payload, model, provider=self.name, stream=False)
        elif op == "embed":
            request = tr.embed_request(payload, model, provider=self.name)
        else:
            raise unsupported(self.name, f"operation {op!r}")
        response = await self._post(op, request, ttfb_timeout)
        data = _decode_object(self.name, await self._read(response), "invalid JSON")
        if "error" in data:
            raise _stream_error(self.name, data)
        if op == "chat":
            out = tr.chat_response(data, model=model)
            usage = _usage(out["usage"])
        else:
            if not isinstance(data.get("embeddings"), list):
                raise _invalid(self.name, "an embed answer without 'embeddings'")
            out = tr.embed_response(data, model=model,
                                    encoding_format=payload.get("encoding_format"))
            usage = _usage(out["usage"])
        return ProviderResponse(_json_encode(out), usage, model)

    async def stream(self, payload: dict[str, Any], *,
                     ttfb_timeout: float) -> AsyncIterator[StreamItem]:
        model = self._model(payload)
        request = tr.chat_request(payload, model, provider=self.name, stream=True)
        response = await self._post("chat", request, ttfb_timeout)
        try:
            if response.status_code != 200:
                body = await response.aread()
                raise failure_from_response(self.name, response.status_code, body,
                                            response.headers)
            translator = tr.ChatStream(model)
            async for line in iter_ndjson(response.aiter_raw()):
                data = _decode_object(self.name, line, "an invalid NDJSON line")
                if "error" in data:
                    raise _stream_error(self.name, data)
                for chunk in translator.feed(data):
                    if chunk["choices"]:
                        yield StreamItem(_json_encode(chunk))
                    else:
                        yield StreamItem(_json_encode(chunk), _usage(chunk["usage"]),
                                         usage_only=True)
                if translator.done:
                    break
            if not translator.done:
                raise UpstreamFailure(f"{self.name}: stream ended without its final object",
                                      code="upstream_stream_cut")
        except httpx.HTTPError as exc:
            raise UpstreamFailure(f"{self.name}: stream interrupted ({type(exc).__name__})",
                                  code="upstream_stream_cut") from exc
        except FrameError as exc:
            raise _invalid(self.name, f"a broken stream ({exc})") from exc
        finally:
            await response.aclose()

    async def list_models(self, *, timeout: float) -> list[str]:
        url = httpx.URL(self._base + "/api/tags")
        headers: dict[str, str] = {}
        await self._auth.apply("GET", url, headers, b"")
        response = await self._http.send("GET", url, headers, b"", timeout)
        data = _decode_object(self.name, await self._read(response), "invalid JSON")
        models = data.get("models")
        if not isinstance(models, list):
            return []
        return [m["name"] for m in models
                if isinstance(m, dict) and isinstance(m.get("name"), str)]

    async def native(self, call: NativeCall, body: bytes, target_model: str, *,
                     stream: bool, ttfb_timeout: float) -> NativeResponse:
        """Ollama's own API (``/api/{action}``), or OpenAI bodies on
        Azure-style paths via Ollama's ``/v1``. ``stream`` is what the
        ingress decided (Ollama streams chat/generate unless told not to)."""
        if call.kind == KIND_AZURE:
            return await self._openai.native(call, body, target_model, stream=stream,
                                             ttfb_timeout=ttfb_timeout)
        if call.kind != KIND_OLLAMA or call.action not in NATIVE_ACTIONS:
            raise unsupported(self.name, f"native {call.kind} {call.action}")
        model = self._models.get(target_model, target_model)
        url = httpx.URL(f"{self._base}/api/{call.action}")
        return await forward(self.name, self._http, self._auth, url, dict(self._headers),
                             rewrite_model(body, model), sniffer_for(KIND_OLLAMA, stream=stream),
                             ttfb_timeout=ttfb_timeout)

    async def aclose(self) -> None:
        await self._http.aclose()  # shared with the inner OpenAI adapter: closed once
