"""Worker side of the Responses API on targets without one (Anthropic,
Gemini, Ollama): Responses -> chat -> the adapter's own translation, and the
chat answer back as a Responses object or event stream. OpenAI-type targets
forward it natively instead (``native_exec._passthrough``).

As for every translated door, the first upstream byte is read before
``Head`` goes out, so a target that fails early can still be failed over.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from gandalf_common.contract import ExecRequest

from .native_exec import relay_translated
from .providers.base import UpstreamFailure

if TYPE_CHECKING:
    from .handlers import ProviderPool
    from .native_exec import _Out

_json_decode = msgspec.json.Decoder(dict[str, Any]).decode
_SSE = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
_JSON = [("content-type", "application/json")]


def _client_error(message: str, param: str | None = None) -> UpstreamFailure:
    exc = UpstreamFailure(message, status=400, type="invalid_request_error",
                          code="unsupported_parameter" if param else "invalid_request",
                          retryable=False)
    return exc


def _invalid(provider: str) -> UpstreamFailure:
    return UpstreamFailure(f"{provider}: upstream answer could not be translated to "
                           "a Responses API answer", code="upstream_invalid_response")


async def run_translated(pool: ProviderPool, req: ExecRequest, out: _Out,
                         body: bytes) -> UpstreamFailure | None:
    from .translate.responses_in import ResponsesInputError, responses_to_chat
    from .translate.responses_out import ResponsesStreamEncoder, chat_to_response

    call = req.route.native
    assert call is not None
    if call.action != "responses":
        raise _client_error(f"{pool.provider.name}: stored responses ({call.action}) exist "
                            "only on OpenAI-type targets")
    try:
        request = _json_decode(body)
        payload = responses_to_chat(request, provider_type=pool.provider_type)
    except ResponsesInputError as exc:
        raise _client_error(str(exc), exc.param) from exc
    except msgspec.DecodeError as exc:
        raise _client_error("request body is not a JSON object") from exc
    payload["model"] = req.target_model
    timeout = pool._remaining(req)
    if not req.route.stream:
        payload["stream"] = False
        result = await pool.provider.complete("chat", payload, ttfb_timeout=timeout)
        try:
            answer = chat_to_response(result.body, request, req.route.model, result.usage)
        except (ValueError, msgspec.DecodeError) as exc:
            raise _invalid(pool.provider.name) from exc
        await out.head(200, _JSON)
        await out.data(answer)
        await out.end(result.usage)
        return None
    payload["stream"] = True
    payload["stream_options"] = {"include_usage": True}
    encoder = ResponsesStreamEncoder(request, req.route.model)
    items = pool.provider.stream(payload, ttfb_timeout=timeout)
    return await relay_translated(items, encoder, out, lambda: _invalid(pool.provider.name))
