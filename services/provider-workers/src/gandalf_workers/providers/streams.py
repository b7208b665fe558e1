"""Stream readers shared by the adapters: SSE, NDJSON and AWS event-stream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

#: A single SSE line longer than this is treated as a broken stream. Generous:
#: tool-call arguments can be large (the original failed at 64 KiB).
MAX_LINE = 8 * 1024 * 1024


class SSEError(Exception):
    pass


class LineBuffer:
    """Split fed bytes into complete lines. A partial line is kept as parts
    and joined once its newline comes: re-scanning a growing buffer on every
    chunk made a long line quadratic (seconds for a few MiB in small chunks).
    A line past ``limit`` raises ``error()``."""

    def __init__(self, error: Callable[[], Exception], limit: int = MAX_LINE) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._error = error
        self._limit = limit

    def split(self, chunk: bytes) -> list[bytes]:
        if b"\n" not in chunk:
            self._parts.append(chunk)
            self._size += len(chunk)
            if self._size > self._limit:
                raise self._error()
            return []
        *lines, rest = (b"".join(self._parts) + chunk if self._parts else chunk).split(b"\n")
        self._parts, self._size = ([rest], len(rest)) if rest else ([], 0)
        if self._size > self._limit or any(len(line) > self._limit for line in lines):
            raise self._error()
        return lines

    def rest(self) -> bytes:
        return b"".join(self._parts)


async def iter_sse(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[str, bytes]]:
    """Yield ``(event, data)`` per SSE event; multi-line data joined with ``\\n``.

    Comments and ``id:``/``retry:`` fields are skipped. The stream ending in the
    middle of an event drops that partial event.
    """
    buf = LineBuffer(lambda: SSEError("SSE line too long"))
    event = ""
    data: list[bytes] = []
    async for chunk in chunks:
        for raw in buf.split(chunk):
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if not line:
                if data:
                    yield event, b"\n".join(data)
                event, data = "", []
                continue
            if line[0:1] == b":":
                continue
            name, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                data.append(value)
            elif name == b"event":
                event = value.decode("utf-8", "replace")
    if data and buf.rest() == b"":
        # A final event without the trailing blank line is still complete.
        yield event, b"\n".join(data)


class FrameError(Exception):
    """A broken NDJSON line or AWS event-stream frame."""


async def iter_ndjson(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Yield each non-empty line of an NDJSON stream (Ollama). A final line
    without its newline is still yielded: the caller checks the ``done`` flag."""
    buf = LineBuffer(lambda: FrameError("NDJSON line too long"))
    async for chunk in chunks:
        for line in buf.split(chunk):
            line = line.strip()
            if line:
                yield line
    if rest := buf.rest().strip():
        yield rest


async def iter_eventstream(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[dict[str, Any],
                                                                              bytes]]:
    """Yield ``(headers, payload)`` per AWS binary event-stream frame (Bedrock's
    ``invoke-with-response-stream``), decoded and CRC-checked by botocore."""
    from botocore.eventstream import EventStreamBuffer, ParserError

    buffer = EventStreamBuffer()
    try:
        async for chunk in chunks:
            buffer.add_data(chunk)
            for message in buffer:
                yield message.headers, message.payload
    except ParserError as exc:
        raise FrameError(f"invalid event-stream frame: {exc}") from exc
    if buffer._data:
        raise FrameError("event stream ended inside a frame")
