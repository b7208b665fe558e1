"""The parts of OpenAI request bodies the ingress validates.

Only what routing and validation need is decoded; the body itself is
forwarded unchanged, so fields Gandalf does not know are kept.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from gandalf_common.errors import BadRequestError

from .body_policy import check_body


class Message(Struct):
    role: Annotated[str, Meta(min_length=1)]
    content: Any = None
    name: str | None = None
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None


class StreamOptions(Struct):
    include_usage: bool = False


class ChatRequest(Struct, kw_only=True):
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


class EmbeddingsRequest(Struct, kw_only=True):
    model: Annotated[str, Meta(min_length=1)]
    #: A string, a list of strings, or token arrays (checked below).
    input: str | list[str | int | list[int]]
    encoding_format: str | None = None
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    user: str | None = None


_chat_decoder = msgspec.json.Decoder(ChatRequest)
_embed_decoder = msgspec.json.Decoder(EmbeddingsRequest)


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    if not body:
        raise BadRequestError("request body is empty; expected a JSON object")
    check_body(body)  # numbers, nesting, forbidden fields (body_policy.py)
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
    return req


def parse_embeddings(body: bytes) -> EmbeddingsRequest:
    req: EmbeddingsRequest = _decode(_embed_decoder, body)
    if isinstance(req.input, list) and not req.input:
        raise BadRequestError("invalid request body: `input` must not be empty", param="input")
    return req
