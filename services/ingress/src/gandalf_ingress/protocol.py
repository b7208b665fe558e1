"""uvicorn's httptools protocol with the edge limits uvicorn lacks: a bound
on request-head size and header count (431), a deadline for the request
head (slowloris: 408 and close), and a per-process connection cap (503
``server_busy``), each answered with the gateway's JSON error shape."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gandalf_common.errors import error_body

log = logging.getLogger("gandalf.ingress")

_REASON = {408: b"Request Timeout", 431: b"Request Header Fields Too Large",
           503: b"Service Unavailable"}


class _Refused(Exception):
    """Raised from a parser callback to stop parsing this connection."""


class EdgeLimits:
    """Per-process limits, shared by every connection's protocol."""

    def __init__(self, *, max_header_bytes: int, max_headers: int, header_timeout: float,
                 max_connections: int) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.header_timeout = header_timeout
        self.max_connections = max_connections


def error_response(status: int, message: str, code: str) -> bytes:
    body = error_body(status, message, code=code,
                      type="api_error" if status >= 500 else None)
    head = (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n"
            b"x-content-type-options: nosniff\r\nx-frame-options: DENY\r\n" %
            (status, _REASON[status], len(body)))
    if status == 503:
        head += b"retry-after: 1\r\n"
    return head + b"\r\n" + body


class EdgeProtocol(HttpToolsProtocol):
    limits: EdgeLimits  # set on the subclass made by ``protocol_class``

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False
        self._head_bytes = 0
        self._header_count = 0
        self._received = False
        self._busy = False
        self._rejection: tuple[int, str, str] | None = None
        self._head_timer: asyncio.TimerHandle | None = None

    # --- connection -------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        cap = self.limits.max_connections
        # Over the cap: answer 503 once the request head is in (so the client
        # reads it rather than a reset); the head deadline bounds the wait.
        self._busy = bool(cap) and len(self.connections) > cap
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        if self.limits.header_timeout > 0:
            self._head_timer = self.loop.call_later(self.limits.header_timeout,
                                                    self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._received:
            self._refuse(408, "the request head did not arrive in time", "header_timeout")
        else:
            self.transport.close()

    def _refuse(self, status: int, message: str, code: str) -> None:
        self._cancel_head_timer()
        if not self.transport.is_closing():
            self.transport.write(error_response(status, message, code))
            self.transport.close()

    # --- parsing ----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        self._received = True
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            if self._rejection is not None:
                self._refuse(*self._rejection)
                return
            self.send_400_response("Invalid HTTP request received.")
            return
        if self._in_head:
            # The whole chunk may be head: bound what the parser buffers
            # before a header line is even complete.
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(*_TOO_LARGE)

    def _reject(self, rejection: tuple[int, str, str]) -> None:
        self._rejection = rejection
        raise _Refused

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self._header_count = 0
        if self._head_timer is None:
            self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_header_bytes:
            self._reject(_TOO_LARGE)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._reject((431, f"more than {self.limits.max_headers} request headers",
                          "too_many_headers"))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if size > self.limits.max_header_bytes:
            self._reject(_TOO_LARGE)
        if self._busy:
            log.warning("connection refused: over server.max_connections (%d)",
                        self.limits.max_connections)
            self._reject((503, "the gateway is at its limit of open connections; "
                          "retry shortly", "server_busy"))
        super().on_headers_complete()


_TOO_LARGE = (431, "request header fields too large", "headers_too_large")


def protocol_class(limits: EdgeLimits) -> type[EdgeProtocol]:
    """A protocol class bound to ``limits`` (uvicorn instantiates it per
    connection with its own arguments)."""
    return type("BoundEdgeProtocol", (EdgeProtocol,), {"limits": limits})
