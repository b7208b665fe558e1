"""Server-sent-events reader shared by the adapters that speak SSE."""

from __future__ import annotations

from collections.abc import AsyncIterator

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
