"""OpenAI chat answers -> Responses API answers (translated targets): a whole
chat completion becomes a Responses object; a chat stream becomes the
Responses event stream (``response.created`` ... ``response.completed``)."""

from __future__ import annotations

import secrets
import time
from typing import Any

import msgspec

from gandalf_common.contract import Usage

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
#: Request fields the Responses object echoes back.
_ECHOED = ("instructions", "max_output_tokens", "metadata", "temperature", "tool_choice",
           "tools", "top_p", "parallel_tool_calls", "text", "user")


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def responses_usage(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {"input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_tokens},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.total_tokens or usage.prompt_tokens + usage.completion_tokens}


class ResponseShell:
    """The fields of one translated response that do not depend on its output."""

    def __init__(self, request: dict[str, Any], alias: str) -> None:
        self.id = _id("resp")
        self.created = int(time.time())
        self.alias = alias
        self.request = request

    def build(self, status: str, output: list[dict[str, Any]], usage: Usage | None,
              incomplete: str | None = None) -> dict[str, Any]:
        req = self.request
        out: dict[str, Any] = {
            "id": self.id, "object": "response", "created_at": self.created,
            "status": status, "error": None,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "model": self.alias, "output": output, "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None}, "store": False,
            "truncation": "disabled", "usage": responses_usage(usage)}
        for name in _ECHOED:
            out[name] = req.get(name)
        out["tools"] = req.get("tools") or []
        out["tool_choice"] = req.get("tool_choice") or "auto"
        out["parallel_tool_calls"] = req.get("parallel_tool_calls") is not False
        out["metadata"] = req.get("metadata") or {}
        out["text"] = req.get("text") or {"format": {"type": "text"}}
        return out


def _message_item(text: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "message", "id": _id("msg"), "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def _call_item(call_id: str, name: str, arguments: str,
               status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": _id("fc"), "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


def _incomplete(finish: Any) -> str | None:
    if finish == "length":
        return "max_output_tokens"
    if finish == "content_filter":
        return "content_filter"
    return None


def chat_to_response(body: bytes, request: dict[str, Any], alias: str,
                     usage: Usage | None) -> bytes:
    """A chat completion (JSON) as a Responses object; ValueError when the
    upstream's answer is not a chat completion."""
    data = _decode(body)
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("no choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise ValueError("no message")
    output: list[dict[str, Any]] = []
    if isinstance(message.get("content"), str) and message["content"]:
        output.append(_message_item(message["content"]))
    tool_calls = message.get("tool_calls") or []
    if not isinstance(tool_calls, list):
        raise ValueError("bad tool calls")
    for call in tool_calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise ValueError("bad tool call")
        output.append(_call_item(str(call.get("id") or _id("call")),
                                 str(function.get("name") or ""),
                                 str(function.get("arguments") or "")))
    incomplete = _incomplete(choices[0].get("finish_reason"))
    shell = ResponseShell(request, alias)
    return _encode(shell.build("incomplete" if incomplete else "completed", output, usage,
                               incomplete))


class ResponsesStreamEncoder:
    """Chat stream chunks in, Responses SSE events out (``feed`` per chunk,
    ``finish`` once with the usage)."""

    def __init__(self, request: dict[str, Any], alias: str) -> None:
        self.shell = ResponseShell(request, alias)
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.text: dict[str, Any] | None = None  # the open message item
        self.calls: dict[int, dict[str, Any]] = {}  # chat tool index -> open call item
        self.finish_reason: Any = None
        self.started = False

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + _encode(data) + b"\n\n"

    def _start(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        shell = self.shell.build("in_progress", [], None)
        return (self._event("response.created", response=shell)
                + self._event("response.in_progress", response=shell))

    def feed(self, chunk: bytes) -> bytes:
        data = _decode(chunk)
        if not isinstance(data, dict):
            raise ValueError("chunk is not an object")
        out = self._start()
        choices = data.get("choices") or []
        if not isinstance(choices, list):
            raise ValueError("bad choices")
        for choice in choices:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            delta = delta or {}
            if not isinstance(choice, dict) or not isinstance(delta, dict):
                raise ValueError("bad choice")
            if isinstance(delta.get("content"), str) and delta["content"]:
                out += self._text_delta(delta["content"])
            calls = delta.get("tool_calls") or []
            if not isinstance(calls, list):
                raise ValueError("bad tool calls")
            for call in calls:
                out += self._call_delta(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def _text_delta(self, text: str) -> bytes:
        out = b""
        if self.text is None:
            item = _message_item("", "in_progress")
            item["content"] = []
            self.text = item
            self.output.append(item)
            index = len(self.output) - 1
            out += self._event("response.output_item.added", output_index=index, item=item)
            part = {"type": "output_text", "text": "", "annotations": []}
            out += self._event("response.content_part.added", item_id=item["id"],
                               output_index=index, content_index=0, part=part)
            item["content"] = [part]
        item = self.text
        item["content"][0]["text"] += text
        return out + self._event("response.output_text.delta", item_id=item["id"],
                                 output_index=self.output.index(item), content_index=0,
                                 delta=text, logprobs=[])

    def _close_text(self) -> bytes:
        item, self.text = self.text, None
        if item is None:
            return b""
        index = self.output.index(item)
        part = item["content"][0]
        item["status"] = "completed"
        return (self._event("response.output_text.done", item_id=item["id"],
                            output_index=index, content_index=0, text=part["text"],
                            logprobs=[])
                + self._event("response.content_part.done", item_id=item["id"],
                              output_index=index, content_index=0, part=part)
                + self._event("response.output_item.done", output_index=index, item=item))

    def _call_delta(self, call: Any) -> bytes:
        if not isinstance(call, dict):
            raise ValueError("bad tool call delta")
        index = call.get("index", 0)
        function = call.get("function") or {}
        if not isinstance(index, int) or not isinstance(function, dict):
            raise ValueError("bad tool call delta")
        out = b""
        item = self.calls.get(index)
        if item is None:
            out += self._close_text()
            item = _call_item(str(call.get("id") or _id("call")),
                              str(function.get("name") or ""), "", "in_progress")
            self.calls[index] = item
            self.output.append(item)
            out += self._event("response.output_item.added",
                               output_index=len(self.output) - 1, item=item)
        args = function.get("arguments")
        if isinstance(args, str) and args:
            item["arguments"] += args
            out += self._event("response.function_call_arguments.delta", item_id=item["id"],
                               output_index=self.output.index(item), delta=args)
        return out

    def finish(self, usage: Usage | None) -> bytes:
        out = self._start() + self._close_text()
        for item in self.calls.values():
            index = self.output.index(item)
            item["status"] = "completed"
            out += self._event("response.function_call_arguments.done", item_id=item["id"],
                               output_index=index, arguments=item["arguments"])
            out += self._event("response.output_item.done", output_index=index, item=item)
        self.calls = {}
        incomplete = _incomplete(self.finish_reason)
        response = self.shell.build("incomplete" if incomplete else "completed", self.output,
                                    usage, incomplete)
        kind = "response.incomplete" if incomplete else "response.completed"
        return out + self._event(kind, response=response)
