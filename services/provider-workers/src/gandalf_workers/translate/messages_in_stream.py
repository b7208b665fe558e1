"""Anthropic Messages output side: OpenAI answers -> what Anthropic returns.

:class:`MessagesStreamEncoder` turns OpenAI ``chat.completion.chunk`` objects
into Anthropic's SSE event sequence; the helpers below it are shared with
:func:`gandalf_workers.translate.messages_in.openai_to_message` (whole
responses). Pure code, no I/O.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Final

import msgspec

from gandalf_common.contract import Usage

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

JSON = dict[str, Any]


class _ToolCall:
    """One OpenAI tool call being streamed as an Anthropic ``tool_use`` block."""

    __slots__ = ("block", "id", "name", "pending")

    def __init__(self, call_id: str | None, name: str | None) -> None:
        self.id = call_id
        self.name = name
        #: The Anthropic block index, once ``content_block_start`` went out.
        self.block: int | None = None
        #: Argument fragments that arrived before the name (the block cannot
        #: start without one).
        self.pending = ""


class MessagesStreamEncoder:
    """OpenAI ``chat.completion.chunk`` objects -> Anthropic SSE bytes.

    Emits ``message_start`` (+ ``ping``) on the first chunk, one content
    block per text run and per tool call (indexes from 0), ``content_block_stop``
    when a block ends, and ``message_delta`` + ``message_stop`` on
    :meth:`finish`. Only choice 0 is read (Anthropic has no ``n``).

    OpenAI servers stream tool calls one after another; a fragment for an
    earlier call arriving after a later one started still goes to that
    call's block index (the SDK's accumulator keys on the index), which is
    better than losing arguments.
    """

    def __init__(self, requested_model: str, message_id: str | None = None) -> None:
        self._model = requested_model
        self._id = message_id
        self._started = False
        self._done = False
        self._next_block = 0
        #: Index of the block not yet stopped, and whether it is text.
        self._open: int | None = None
        self._open_text = False
        #: OpenAI tool index -> call; the latest call of each index.
        self._tools: dict[int, _ToolCall] = {}
        self._finish_reason: str | None = None
        self._tool_use = False
        self._refused = False
        self._usage: Usage | None = None

    def feed(self, chunk: JSON | bytes) -> bytes:
        """SSE bytes to send for one chunk (may be ``b""``). Bytes are JSON;
        invalid JSON raises ``ValueError``. Usage-only chunks only update usage."""
        data = load_json(chunk, "stream chunk")
        if self._done:
            return b""
        out = bytearray()
        if not self._started:
            out += self._start(data)
        usage = openai_usage(data.get("usage"))
        if usage is not None:
            self._usage = usage
        choices = data.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                out += self._choice(choice)
        return bytes(out)

    def finish(self, usage: Usage | None = None) -> bytes:
        """The closing events: ``message_delta`` (stop reason, final usage:
        ``usage``, else the last usage a chunk carried) and ``message_stop``."""
        if self._done:
            return b""
        out = bytearray()
        if not self._started:
            out += self._start({})
        out += self._flush_pending()
        out += self._close()
        self._done = True
        final = _final_usage(usage, self._usage)
        reason = stop_reason(self._finish_reason, self._tool_use, self._refused)
        out += _event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": None},
            "usage": usage_fields(final) if final is not None else {"output_tokens": 0},
        })
        out += _event("message_stop", {"type": "message_stop"})
        return bytes(out)

    def error(self, type: str, message: str) -> bytes:
        """An ``event: error`` for a failure mid-stream; the stream ends there."""
        self._done = True
        return _event("error", {"type": "error", "error": {"type": type, "message": message}})

    # ------------------------------------------------------------ internals

    def _start(self, data: JSON) -> bytes:
        self._started = True
        if self._id is None:
            self._id = message_id(data.get("id"))
        usage = openai_usage(data.get("usage"))
        message: dict[str, Any] = {"id": self._id, "type": "message", "role": "assistant",
                   "model": self._model, "content": [], "stop_reason": None,
                   "stop_sequence": None, "usage": usage_fields(usage)}
        return (_event("message_start", {"type": "message_start", "message": message})
                + _event("ping", {"type": "ping"}))

    def _choice(self, choice: JSON) -> bytes:
        delta = choice.get("delta")
        delta = delta if isinstance(delta, dict) else {}
        out = bytearray()
        text = delta.get("content")
        if isinstance(text, str) and text:
            out += self._text(text)
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            self._refused = True
            out += self._text(refusal)
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, dict):
                out += self._tool_delta(call)
        finish = choice.get("finish_reason")
        if isinstance(finish, str) and finish:
            self._finish_reason = finish
            out += self._flush_pending()
            out += self._close()
        return bytes(out)

    def _text(self, text: str) -> bytes:
        out = b""
        if not self._open_text:
            out = self._block_start({"type": "text", "text": ""})
            self._open_text = True
        return out + self._delta({"type": "text_delta", "text": text})

    def _tool_delta(self, call: JSON) -> bytes:
        index = call.get("index")
        index = index if isinstance(index, int) else 0
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        call_id = _nonempty(call.get("id"))
        name = _nonempty(function.get("name"))
        arguments = function.get("arguments")
        if isinstance(arguments, dict):  # a whole object instead of a JSON string
            arguments = _encode(arguments).decode()
        arguments = arguments if isinstance(arguments, str) else ""
        tool = self._tools.get(index)
        # A new call: a new index, or (servers that number every call 0) a new id.
        if tool is None or (call_id and tool.id and call_id != tool.id):
            tool = self._tools[index] = _ToolCall(call_id, name)
        tool.id = tool.id or call_id
        tool.name = tool.name or name
        out = b""
        if tool.block is None:
            if tool.name is None:
                tool.pending += arguments
                return b""
            out = self._tool_start(tool)
            arguments, tool.pending = tool.pending + arguments, ""
        if arguments:
            out += self._delta({"type": "input_json_delta", "partial_json": arguments},
                               tool.block)
        return out

    def _tool_start(self, tool: _ToolCall) -> bytes:
        tool.id = tool_use_id(tool.id)
        out = self._block_start({"type": "tool_use", "id": tool.id, "name": tool.name or "",
                                 "input": {}})
        tool.block = self._open
        self._tool_use = True
        return out

    def _flush_pending(self) -> bytes:
        """Calls whose name never came: started nameless rather than lost."""
        out = bytearray()
        for tool in self._tools.values():
            if tool.block is None:
                out += self._tool_start(tool)
                if tool.pending:
                    out += self._delta({"type": "input_json_delta",
                                        "partial_json": tool.pending}, tool.block)
                    tool.pending = ""
        return bytes(out)

    def _block_start(self, block: JSON) -> bytes:
        out = self._close()
        self._open, self._next_block = self._next_block, self._next_block + 1
        return out + _event("content_block_start", {"type": "content_block_start",
                                                    "index": self._open,
                                                    "content_block": block})

    def _delta(self, delta: JSON, index: int | None = None) -> bytes:
        return _event("content_block_delta", {"type": "content_block_delta",
                                              "index": self._open if index is None else index,
                                              "delta": delta})

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        index, self._open, self._open_text = self._open, None, False
        return _event("content_block_stop", {"type": "content_block_stop", "index": index})


def _event(name: str, data: JSON) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _encode(data) + b"\n\n"


def _nonempty(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _final_usage(given: Usage | None, seen: Usage | None) -> Usage | None:
    """The caller's usage wins, but a usage decoded without OpenAI's nested
    ``prompt_tokens_details`` has no cache reads: keep the chunk's count then."""
    if given is None:
        return seen
    if (seen is not None and not given.cached_tokens and seen.cached_tokens
            and seen.prompt_tokens == given.prompt_tokens):
        return Usage(prompt_tokens=given.prompt_tokens,
                     completion_tokens=given.completion_tokens,
                     total_tokens=given.total_tokens, cached_tokens=seen.cached_tokens)
    return given


# ============================================================ shared with whole responses

_STOP_REASONS: Final = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                        "function_call": "tool_use", "content_filter": "refusal"}
_ID_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_-]")


def load_json(body: bytes | JSON, what: str) -> JSON:
    """A JSON object from bytes (or the dict itself); ``ValueError`` otherwise."""
    if isinstance(body, dict):
        return body
    try:
        data = _decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ValueError(f"OpenAI {what} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"OpenAI {what} is not a JSON object")
    return data


def stop_reason(finish_reason: Any, has_tool_use: bool, refused: bool = False) -> str:
    if refused:
        return "refusal"
    reason = _STOP_REASONS.get(finish_reason, "end_turn") if isinstance(
        finish_reason, str) else "end_turn"
    # Some servers (Ollama, older vLLM) finish a tool-calling turn with "stop":
    # Anthropic clients run tools when the stop reason says so.
    if has_tool_use and reason == "end_turn":
        return "tool_use"
    return reason


def message_id(openai_id: Any) -> str:
    """``msg_`` + the OpenAI id's own part, so retries of one upstream answer
    keep one id; random when the upstream sent none."""
    suffix = ""
    if isinstance(openai_id, str):
        suffix = _ID_UNSAFE.sub("", openai_id.removeprefix("chatcmpl-"))
    return "msg_" + (suffix or uuid.uuid4().hex)


def tool_use_id(call_id: Any) -> str:
    # Kept as is: the client sends it back as tool_use_id, which becomes the
    # OpenAI tool_call_id the upstream expects.
    if isinstance(call_id, str) and call_id:
        return call_id
    return "toolu_" + uuid.uuid4().hex


def tool_input(arguments: Any) -> JSON:
    """The parsed arguments object; ``{}`` when empty. Anthropic needs an
    object, so anything else (broken JSON, an array) is kept as ``_raw``."""
    if isinstance(arguments, dict):  # some servers send the object itself
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        value = _decode(arguments)
    except (msgspec.DecodeError, RecursionError):
        return {"_raw": arguments}
    return value if isinstance(value, dict) else {"_raw": arguments}


def openai_usage(usage: Any) -> Usage | None:
    """OpenAI ``usage`` -> :class:`Usage` (``prompt_tokens`` includes cached)."""
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    prompt, completion = _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
    return Usage(prompt_tokens=prompt, completion_tokens=completion,
                 total_tokens=_int(usage.get("total_tokens")) or prompt + completion,
                 cached_tokens=cached)


def usage_fields(usage: Usage | None) -> dict[str, int]:
    """Anthropic usage: ``input_tokens`` excludes cache reads, which OpenAI
    counts inside ``prompt_tokens``; OpenAI has no cache writes to report."""
    usage = usage or Usage()
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    return {"input_tokens": usage.prompt_tokens - cached,
            "output_tokens": usage.completion_tokens,
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
