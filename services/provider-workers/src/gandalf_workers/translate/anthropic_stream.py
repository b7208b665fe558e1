"""Anthropic Messages stream events -> OpenAI ``chat.completion.chunk`` dicts.

One :class:`AnthropicStreamTranslator` per response; feed it each decoded
event (``{"type": "message_start", ...}``), in order. Events arrive the same
way from the SSE API (direct, Vertex) and, base64-wrapped, from Bedrock's
event stream, so the transport is the caller's business.

OpenAI tool-call indexes count tool calls only (Anthropic's block index
counts text and thinking blocks too), and the first delta of each call
carries its id and name, as OpenAI clients expect.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from gandalf_common.contract import Usage

from .anthropic import finish_reason, openai_usage, usage_from_anthropic

#: Usage fields Anthropic reports (cumulatively) on ``message_start`` and ``message_delta``.
_USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens",
                 "cache_creation_input_tokens")


class AnthropicStreamError(Exception):
    """An ``error`` event: Anthropic failed after the stream had started."""

    def __init__(self, type: str, message: str) -> None:
        super().__init__(f"{type}: {message}")
        self.type = type
        self.message = message


class ChunkOut(NamedTuple):
    """One OpenAI chunk; ``usage_only`` chunks have ``choices: []``."""

    chunk: dict[str, Any]
    usage: Usage | None = None
    usage_only: bool = False


class _Block:
    __slots__ = ("kind", "streamed", "tool_index")

    def __init__(self, kind: str, tool_index: int = -1) -> None:
        self.kind = kind  # text | tool | answer (json_schema tool) | thinking | other
        self.tool_index = tool_index
        self.streamed = False  # some input JSON was sent for this tool block


class AnthropicStreamTranslator:
    def __init__(self, *, model: str = "", created: int | None = None,
                 json_tool: str | None = None) -> None:
        self.id = ""
        self.model = model
        self.created = int(time.time()) if created is None else created
        self._json_tool = json_tool
        self._blocks: dict[int, _Block] = {}
        self._tools = 0
        self._usage: dict[str, int] = {}
        self._stop_reason: str | None = None
        #: ``message_stop`` was seen: the answer is complete.
        self.done = False
        self.usage: Usage | None = None

    def feed(self, event: Any) -> list[ChunkOut]:
        """Translate one decoded event; unknown event types are ignored
        (Anthropic may add some), as the API's own SDKs do."""
        if not isinstance(event, dict):
            return []
        kind = event.get("type")
        if kind == "message_start":
            return self._start(event.get("message"))
        if kind == "content_block_start":
            return self._block_start(event.get("index"), event.get("content_block"))
        if kind == "content_block_delta":
            return self._delta(event.get("index"), event.get("delta"))
        if kind == "content_block_stop":
            return self._block_stop(event.get("index"))
        if kind == "message_delta":
            delta = event.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason"):
                self._stop_reason = str(delta["stop_reason"])
            self._add_usage(event.get("usage"))
            return []
        if kind == "message_stop":
            return self._stop()
        if kind == "error":
            err = event.get("error")
            err = err if isinstance(err, dict) else {}
            raise AnthropicStreamError(str(err.get("type") or "api_error"),
                                       str(err.get("message") or "stream error"))
        return []  # ping, and future event types

    # ------------------------------------------------------------- events

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> ChunkOut:
        return ChunkOut({"id": self.id, "object": "chat.completion.chunk",
                         "created": self.created, "model": self.model,
                         "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                      "finish_reason": finish}]})

    def _start(self, message: Any) -> list[ChunkOut]:
        message = message if isinstance(message, dict) else {}
        self.id = str(message.get("id") or self.id)
        self.model = str(message.get("model") or self.model)
        self._add_usage(message.get("usage"))
        return [self._chunk({"role": "assistant", "content": ""})]

    def _add_usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        for name in _USAGE_FIELDS:
            value = usage.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                self._usage[name] = value  # cumulative counts: the latest is the total

    def _block_start(self, index: Any, block: Any) -> list[ChunkOut]:
        if not isinstance(index, int) or not isinstance(block, dict):
            return []
        kind = block.get("type")
        if kind == "tool_use" and self._json_tool is not None and (
                block.get("name") == self._json_tool):
            self._blocks[index] = _Block("answer")
            return []
        if kind == "tool_use":
            entry = self._blocks[index] = _Block("tool", self._tools)
            self._tools += 1
            return [self._chunk({"tool_calls": [{
                "index": entry.tool_index, "id": block.get("id"), "type": "function",
                "function": {"name": block.get("name"), "arguments": ""}}]})]
        if kind in ("text", "thinking"):
            self._blocks[index] = _Block(kind)
            initial = block.get(kind)
            if isinstance(initial, str) and initial:
                return [self._chunk(self._text_delta(kind, initial))]
            return []
        self._blocks[index] = _Block("other")  # server tools, redacted thinking, ...
        return []

    @staticmethod
    def _text_delta(kind: str, text: str) -> dict[str, Any]:
        return {"reasoning_content": text} if kind == "thinking" else {"content": text}

    def _delta(self, index: Any, delta: Any) -> list[ChunkOut]:
        block = self._blocks.get(index) if isinstance(index, int) else None
        if block is None or not isinstance(delta, dict):
            return []
        kind = delta.get("type")
        if kind == "text_delta" and block.kind == "text":
            text = delta.get("text")
            return [self._chunk({"content": text})] if isinstance(text, str) and text else []
        if kind == "thinking_delta" and block.kind == "thinking":
            text = delta.get("thinking")
            return ([self._chunk({"reasoning_content": text})]
                    if isinstance(text, str) and text else [])
        if kind == "input_json_delta" and block.kind in ("tool", "answer"):
            partial = delta.get("partial_json")
            if not isinstance(partial, str) or not partial:
                return []  # Anthropic opens with an empty fragment
            block.streamed = True
            return [self._chunk(self._arguments(block, partial))]
        return []  # signature and citation deltas have no OpenAI equivalent

    @staticmethod
    def _arguments(block: _Block, partial: str) -> dict[str, Any]:
        if block.kind == "answer":
            return {"content": partial}
        return {"tool_calls": [{"index": block.tool_index, "function": {"arguments": partial}}]}

    def _block_stop(self, index: Any) -> list[ChunkOut]:
        block = self._blocks.get(index) if isinstance(index, int) else None
        if block is None or block.kind not in ("tool", "answer") or block.streamed:
            return []
        # A call without arguments streams no JSON at all; OpenAI clients
        # parse the arguments, and "" is not JSON.
        block.streamed = True
        return [self._chunk(self._arguments(block, "{}"))]

    def _stop(self) -> list[ChunkOut]:
        self.done = True
        reason = finish_reason(self._stop_reason)
        if reason == "tool_calls" and not self._tools:
            reason = "stop"  # only the json_schema tool was called: that is the answer
        usage = self.usage = usage_from_anthropic(self._usage)
        final = self._chunk({}, reason)
        usage_chunk = {"id": self.id, "object": "chat.completion.chunk",
                       "created": self.created, "model": self.model, "choices": [],
                       "usage": openai_usage(usage)}
        return [final, ChunkOut(usage_chunk, usage, True)]
