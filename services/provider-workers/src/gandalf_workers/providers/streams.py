"""Stream readers shared by the adapters: SSE, NDJSON and AWS event-stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

#: A single SSE line longer than this is treated as a broken stream. Generous:
#: tool-call arguments can be large (the original failed at 64 KiB).
MAX_LINE = 8 * 1024 * 1024


class SSEError(Exception):
    pass


async def iter_sse(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[str, bytes]]:
    """Yield ``(event, data)`` per SSE event; multi-line data joined with ``\\n``.

    Comments and ``id:``/``retry:`` fields are skipped. The stream ending in the
    middle of an event drops that partial event.
    """
    buf = b""
    event = ""
    data: list[bytes] = []
    async for chunk in chunks:
        buf += chunk
        if len(buf) > MAX_LINE and b"\n" not in buf:
            raise SSEError("SSE line too long")
        *lines, buf = buf.split(b"\n")
        for raw in lines:
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
    if data and buf == b"":
        # A final event without the trailing blank line is still complete.
        yield event, b"\n".join(data)


class FrameError(Exception):
    """A broken NDJSON line or AWS event-stream frame."""


async def iter_ndjson(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Yield each non-empty line of an NDJSON stream (Ollama). A final line
    without its newline is still yielded: the caller checks the ``done`` flag."""
    buf = b""
    async for chunk in chunks:
        buf += chunk
        if len(buf) > MAX_LINE and b"\n" not in buf:
            raise FrameError("NDJSON line too long")
        *lines, buf = buf.split(b"\n")
        for line in lines:
            line = line.strip()
            if line:
                yield line
    if buf.strip():
        yield buf.strip()


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
