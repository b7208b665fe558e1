"""Usage and the response id of an OpenAI Responses API answer (JSON or its
event stream), sniffed from the bytes relayed to the client."""

from __future__ import annotations

from typing import Any

from gandalf_common.contract import Usage

from .base import UpstreamFailure
from .native import JSONBodySniffer, Sniffer, SSESniffer

#: Events that end a Responses stream (``response.failed`` is an answer too:
#: the client sees it; ``error`` alone is an upstream failure).
_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def responses_usage(response: Any) -> Usage | None:
    """``usage`` of a Responses object: input/output tokens, cached input
    tokens (``input_tokens_details``); reasoning tokens are part of
    ``output_tokens`` already, so billing them needs nothing more."""
    if not isinstance(response, dict):
        return None
    usage = response.get("usage")
    if not isinstance(usage, dict):
        return None
    details = usage.get("input_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    prompt, completion = _int(usage.get("input_tokens")), _int(usage.get("output_tokens"))
    return Usage(prompt_tokens=prompt, completion_tokens=completion,
                 total_tokens=_int(usage.get("total_tokens")) or prompt + completion,
                 cached_tokens=cached)


def _response_id(response: Any) -> str:
    value = response.get("id") if isinstance(response, dict) else None
    return value if isinstance(value, str) else ""


class ResponsesJSONSniffer(JSONBodySniffer):
    def __init__(self) -> None:
        super().__init__(self._extract)
        self.ref = ""

    def _extract(self, data: dict[str, Any]) -> Usage | None:
        self.ref = _response_id(data)
        return responses_usage(data)


class ResponsesSSESniffer(SSESniffer):
    def __init__(self) -> None:
        super().__init__(self._on, lambda _e, d: isinstance(d, dict)
                         and d.get("type") in _TERMINAL)
        self.ref = ""

    def _on(self, _event: str, data: Any) -> Usage | None:
        if not isinstance(data, dict):
            return None
        kind = data.get("type")
        if kind == "error":
            raise UpstreamFailure(f"upstream stream error: {data.get('message', '')}",
                                  code=str(data.get("code") or "upstream_error"))
        response = data.get("response")
        if kind == "response.created" or (kind in _TERMINAL and not self.ref):
            self.ref = _response_id(response)
        return responses_usage(response) if kind in _TERMINAL else None


class AnySniffer:
    """A stored-response action (retrieve, delete, ...): no usage to sniff."""

    usage: Usage | None = None
    ref = ""

    def feed(self, chunk: bytes) -> None:
        return None

    def finish(self) -> None:
        return None


def responses_sniffer(action: str, *, stream: bool) -> Sniffer:
    if action != "responses":
        return AnySniffer()
    return ResponsesSSESniffer() if stream else ResponsesJSONSniffer()
