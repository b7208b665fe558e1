"""The doors of the admission pipeline (``pipeline.py``): per API, where the
key is, how many tokens a body may cost, and the error shape."""

from __future__ import annotations

from typing import Any

from gandalf_common import contract
from gandalf_common.errors import GatewayError

from .formats import native_error_body
from .ratelimit.estimate import (
    DEFAULT_COMPLETION_ESTIMATE,
    _ceil4,
    _json_len,
    _positive_int,
    estimate_chat_tokens,
    estimate_embedding_tokens,
    estimate_prompt_tokens,
)

Scope = dict[str, Any]


def _size_estimate(body: bytes) -> int:
    return max(1, len(body) // 4)


class OpenAIDoor:
    """``/v1/chat/completions``, ``/v1/embeddings``, ``/v1/models``."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def credentials(self, scope: Scope) -> str | None:
        from .handlers import authorization

        return authorization(scope)

    def estimate(self, action: str, payload: dict[str, Any], body: bytes) -> int:
        if not payload:
            return _size_estimate(body)
        if action == contract.OP_EMBED:
            return estimate_embedding_tokens(payload)
        return estimate_chat_tokens(payload)

    def error_body(self, exc: GatewayError) -> bytes:
        return exc.body()


def _completion(limit: Any) -> int:
    return _positive_int(limit) or DEFAULT_COMPLETION_ESTIMATE


class NativeDoor:
    """A native API: Anthropic, Gemini, Azure or Ollama (``kind``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.endpoint = f"native:{kind}"

    def credentials(self, scope: Scope) -> str | None:
        from .native import credentials

        return credentials(scope, self.kind)

    def error_body(self, exc: GatewayError) -> bytes:
        if self.kind == contract.KIND_RESPONSES:  # OpenAI's shape, ``param`` included
            return exc.body()
        return native_error_body(self.kind, exc.status, exc.message, type=exc.type,
                                 code=exc.code)

    def estimate(self, action: str, payload: dict[str, Any], body: bytes) -> int:
        if not payload:
            return _size_estimate(body)
        if self.kind == contract.KIND_ANTHROPIC:
            prompt = estimate_prompt_tokens(payload.get("messages")) + _ceil4(
                _json_len(payload.get("system") or "")) + _ceil4(
                _json_len(payload.get("tools") or ""))
            if action != "messages":  # count_tokens generates nothing
                return prompt
            return prompt + _completion(payload.get("max_tokens"))
        if self.kind == contract.KIND_GEMINI:
            prompt = max(1, _ceil4(_json_len(
                {k: v for k, v in payload.items() if k != "generationConfig"})))
            if action not in ("generateContent", "streamGenerateContent"):
                return prompt  # embeddings, countTokens
            config = payload.get("generationConfig")
            limit = config.get("maxOutputTokens") if isinstance(config, dict) else None
            return prompt + _completion(limit)
        if self.kind == contract.KIND_RESPONSES:
            if action != "responses":  # a stored response's action generates nothing
                return 1
            prompt = max(1, _ceil4(sum(_json_len(payload.get(name) or "") for name in
                                       ("input", "instructions", "tools", "text"))))
            return prompt + _completion(payload.get("max_output_tokens"))
        if self.kind == contract.KIND_AZURE:
            if action == "embeddings":
                return estimate_embedding_tokens(payload)
            return estimate_chat_tokens(payload)
        # Ollama: chat (messages), generate (prompt), embed (input)
        if action == "embed":
            return estimate_embedding_tokens(payload)
        prompt = estimate_prompt_tokens(payload.get("messages")) if action == "chat" else \
            max(1, _ceil4(_json_len(payload.get("prompt") or "")
                          + _json_len(payload.get("system") or "")))
        options = payload.get("options")
        limit = options.get("num_predict") if isinstance(options, dict) else None
        return prompt + _completion(limit)
