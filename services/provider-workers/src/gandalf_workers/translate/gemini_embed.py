"""OpenAI embeddings <-> Gemini ``batchEmbedContents`` (Google AI) and
``predict`` (Vertex AI). Pure functions (no I/O); a request the client got
wrong raises :class:`TranslationError`.
"""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

from .gemini_common import TranslationError, _int

#: ``batchEmbedContents`` takes at most this many requests per call.
BATCH_EMBED_LIMIT = 100


def embedding_inputs(payload: dict[str, Any]) -> list[str]:
    """The texts of an OpenAI embeddings request (a string or a list of them)."""
    value = payload.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    if isinstance(value, list) and value and all(
            isinstance(v, int | list) and not isinstance(v, bool) for v in value):
        raise TranslationError("token-array input is not supported by Gemini embeddings",
                               code="unsupported")
    raise TranslationError("'input' must be a non-empty string or array of strings")


def _dimensions(payload: dict[str, Any]) -> int | None:
    dims = payload.get("dimensions")
    if dims is None:
        return None
    if not isinstance(dims, int) or isinstance(dims, bool) or dims < 1:
        raise TranslationError("'dimensions' must be a positive integer")
    return dims


def encoding_format(payload: dict[str, Any]) -> str:
    fmt = payload.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise TranslationError("'encoding_format' must be 'float' or 'base64'")
    return str(fmt)


def batch_embed_request(payload: dict[str, Any], inputs: list[str],
                        model: str) -> dict[str, Any]:
    """``:batchEmbedContents`` body (Google AI) for ``inputs``."""
    dims = _dimensions(payload)
    requests: list[dict[str, Any]] = []
    for text in inputs:
        req: dict[str, Any] = {"model": f"models/{model}", "content": {"parts": [{"text": text}]}}
        if dims is not None:
            req["outputDimensionality"] = dims
        requests.append(req)
    return {"requests": requests}


def batch_embed_vectors(data: Any) -> list[list[float]]:
    """The vectors of a ``batchEmbedContents`` response."""
    items = data.get("embeddings") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ValueError("no 'embeddings' in the response")
    return [_values(item) for item in items]


def vertex_embed_request(payload: dict[str, Any], inputs: list[str]) -> dict[str, Any]:
    """Vertex ``:predict`` body for text embedding models."""
    dims = _dimensions(payload)
    body: dict[str, Any] = {"instances": [{"content": text} for text in inputs]}
    if dims is not None:
        body["parameters"] = {"outputDimensionality": dims}
    return body


def vertex_embed_vectors(data: Any) -> tuple[list[list[float]], int]:
    """The vectors and the summed token count of a Vertex ``:predict`` response."""
    predictions = data.get("predictions") if isinstance(data, dict) else None
    if not isinstance(predictions, list):
        raise ValueError("no 'predictions' in the response")
    vectors: list[list[float]] = []
    tokens = 0
    for item in predictions:
        emb = item.get("embeddings") if isinstance(item, dict) else None
        vectors.append(_values(emb))
        stats = emb.get("statistics") if isinstance(emb, dict) else None
        if isinstance(stats, dict):
            tokens += _int(stats.get("token_count"))
    return vectors, tokens


def _values(item: Any) -> list[float]:
    values = item.get("values") if isinstance(item, dict) else None
    if not isinstance(values, list):
        raise ValueError("an embedding without 'values'")
    return values


def estimate_tokens(inputs: list[str]) -> int:
    """Gemini's batch embedding API reports no token counts; ~4 characters a
    token is the usual estimate, and accounting needs some number."""
    return sum(math.ceil(len(text) / 4) for text in inputs)


def embeddings_response(vectors: list[list[float]], model: str, prompt_tokens: int,
                        fmt: str = "float") -> dict[str, Any]:
    """OpenAI's embeddings list; ``base64`` packs little-endian float32 like OpenAI."""
    data: list[dict[str, Any]] = []
    for index, vector in enumerate(vectors):
        embedding: list[float] | str = vector
        if fmt == "base64":
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
