"""Gemini ``streamGenerateContent?alt=sse`` objects -> OpenAI
``chat.completion.chunk`` dicts. Pure (no I/O): the transport is the caller's.
"""

from __future__ import annotations

import time
from typing import Any

from .gemini_common import (
    _blocked,
    _int,
    _parts,
    _response_id,
    _tool_call,
    finish_reason,
    new_completion_id,
    openai_usage,
)


class StreamTranslator:
    """Gemini ``streamGenerateContent?alt=sse`` objects -> OpenAI chunk dicts.

    Feed each decoded ``data:`` object; ``finished`` says whether a finish
    reason arrived (a stream without one was cut: Gemini has no ``[DONE]``).
    ``usageMetadata`` is cumulative, so only the last one counts; it becomes
    one usage-only chunk (``usage_chunk``) after the stream ended.
    """

    def __init__(self, model: str, *, completion_id: str | None = None,
                 created: int | None = None) -> None:
        self.model = model
        self.created = int(time.time()) if created is None else created
        self._id = completion_id
        self._seed: str | None = None
        self._started: set[int] = set()
        self._calls: dict[int, int] = {}
        self._finished: set[int] = set()
        self.usage: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        if self._id is None:
            self._id = f"chatcmpl-{self._seed}" if self._seed else new_completion_id()
        return self._id

    @property
    def finished(self) -> bool:
        return bool(self._finished)

    def _chunk(self, index: int, delta: dict[str, Any],
               finish: str | None = None) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model,
                "choices": [{"index": index, "delta": delta, "logprobs": None,
                             "finish_reason": finish}]}

    def _start(self, index: int) -> list[dict[str, Any]]:
        if index in self._started:
            return []
        self._started.add(index)
        return [self._chunk(index, {"role": "assistant", "content": ""})]

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The OpenAI chunks for one Gemini stream object."""
        if self._seed is None:
            self._seed = _response_id(event)
        usage = openai_usage(event.get("usageMetadata"))
        if usage is not None:
            self.usage = usage
        out: list[dict[str, Any]] = []
        candidates = event.get("candidates")
        if not isinstance(candidates, list) or not candidates:
            if _blocked(event) and 0 not in self._finished:
                out += self._start(0)
                out.append(self._chunk(0, {}, "content_filter"))
                self._finished.add(0)
            return out
        for pos, cand in enumerate(candidates):
            if isinstance(cand, dict):
                out += self._candidate(_int(cand.get("index", pos)), cand)
        return out

    def _candidate(self, index: int, cand: dict[str, Any]) -> list[dict[str, Any]]:
        out = self._start(index)
        for part in _parts(cand):
            if part.get("thought"):
                continue
            text = part.get("text")
            if isinstance(text, str) and text:
                out.append(self._chunk(index, {"content": text}))
            call = part.get("functionCall")
            if isinstance(call, dict):
                # Gemini sends a whole call at once: one delta with id, name
                # and all the arguments.
                k = self._calls.get(index, 0)
                self._calls[index] = k + 1
                tool = {"index": k, **_tool_call(self._seed or "", index, k, call)}
                out.append(self._chunk(index, {"tool_calls": [tool]}))
        reason = cand.get("finishReason")
        if reason and index not in self._finished:
            self._finished.add(index)
            out.append(self._chunk(index, {}, finish_reason(reason, index in self._calls)))
        return out

    def usage_chunk(self) -> dict[str, Any] | None:
        """The final usage-only chunk (``choices: []``), None without usage."""
        if self.usage is None:
            return None
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [], "usage": self.usage}
