"""The parts of OpenAI request bodies the ingress validates.

Only what routing and validation need is decoded; the body itself is
forwarded unchanged, so fields Gandalf does not know are kept.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from gandalf_common.errors import BadRequestError


class Message(Struct):
    role: Annotated[str, Meta(min_length=1)]
    content: Any = None
    name: str | None = None
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None


class StreamOptions(Struct):
    include_usage: bool = False


#: Fields that would let a caller redirect the upstream call or swap
#: credentials (a LiteLLM CVE class). Never accepted from clients.
FORBIDDEN_FIELDS = ("api_base", "base_url", "api_key", "api_version", "organization",
                    "azure_ad_token", "aws_access_key_id", "vertex_credentials")


class _Forbidden(Struct, kw_only=True):
    api_base: Any = msgspec.UNSET
    base_url: Any = msgspec.UNSET
    api_key: Any = msgspec.UNSET
    api_version: Any = msgspec.UNSET
    organization: Any = msgspec.UNSET
    azure_ad_token: Any = msgspec.UNSET
    aws_access_key_id: Any = msgspec.UNSET
    vertex_credentials: Any = msgspec.UNSET


class ChatRequest(_Forbidden, kw_only=True):
    model: Annotated[str, Meta(min_length=1)]
    messages: Annotated[list[Message], Meta(min_length=1)]
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1)] | None = None
    seed: int | None = None
    user: str | None = None
    tools: list[Any] | None = None
    stop: str | list[str] | None = None


class EmbeddingsRequest(_Forbidden, kw_only=True):
    model: Annotated[str, Meta(min_length=1)]
    #: A string, a list of strings, or token arrays (checked below).
    input: str | list[str | int | list[int]]
    encoding_format: str | None = None
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    user: str | None = None


_chat_decoder = msgspec.json.Decoder(ChatRequest)
_embed_decoder = msgspec.json.Decoder(EmbeddingsRequest)


def _check_forbidden(req: _Forbidden) -> None:
    for name in FORBIDDEN_FIELDS:
        if getattr(req, name) is not msgspec.UNSET:
            raise BadRequestError(f"field `{name}` is not allowed: upstream endpoints and "
                                  "credentials are configured on the gateway", param=name)


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    if not body:
        raise BadRequestError("request body is empty; expected a JSON object")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise BadRequestError(f"invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequestError(f"invalid JSON in request body: {exc}") from None
    except UnicodeDecodeError:
        raise BadRequestError("invalid JSON in request body: not valid UTF-8") from None
    except RecursionError:
        raise BadRequestError("invalid JSON in request body: nested too deeply") from None


def parse_chat(body: bytes) -> ChatRequest:
    req: ChatRequest = _decode(_chat_decoder, body)
    _check_forbidden(req)
    return req


def parse_embeddings(body: bytes) -> EmbeddingsRequest:
    req: EmbeddingsRequest = _decode(_embed_decoder, body)
    _check_forbidden(req)
    if isinstance(req.input, list) and not req.input:
        raise BadRequestError("invalid request body: `input` must not be empty", param="input")
    return req
