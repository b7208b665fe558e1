"""Bounded reachability probes.

A client library's own connect can retry past its timeout (nats-py with
reconnects on never gives up on the first connect), so every "is X there"
question is asked first with a plain TCP connect under a real deadline, and
answers with the address in the reason.
"""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import parse_qs, urlsplit

__all__ = ["Endpoint", "endpoint_of", "probe", "probe_async"]

#: Default ports by URL scheme.
_PORTS = {"nats": 4222, "tls": 4222, "redis": 6379, "rediss": 6379, "postgresql": 5432,
          "postgres": 5432, "http": 80, "https": 443}


class Endpoint:
    """Where a URL's server listens: a TCP host and port, or a unix socket path."""

    __slots__ = ("host", "path", "port")

    def __init__(self, host: str = "", port: int = 0, path: str = "") -> None:
        self.host = host
        self.port = port
        self.path = path

    def __str__(self) -> str:
        if self.path:
            return self.path
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def endpoint_of(url: str) -> Endpoint:
    """The first server of a NATS, Redis or PostgreSQL URL (``?host=/dir`` for
    a PostgreSQL unix socket, as the embedded server's DSN uses)."""
    first = url.split(",", 1)[0]
    parts = urlsplit(first if "://" in first else f"nats://{first}")
    scheme = parts.scheme.lower()
    if scheme in ("postgresql", "postgres"):
        query = parse_qs(parts.query)
        socket_dir = (query.get("host") or [""])[0]
        port = parts.port or int((query.get("port") or ["5432"])[0])
        if socket_dir.startswith("/"):
            return Endpoint(path=f"{socket_dir.rstrip('/')}/.s.PGSQL.{port}")
        if not parts.hostname:
            # libpq's default: the local socket directory.
            return Endpoint(path=f"/var/run/postgresql/.s.PGSQL.{port}")
    if scheme == "unix":
        return Endpoint(path=parts.path)
    return Endpoint(parts.hostname or "127.0.0.1", parts.port or _PORTS.get(scheme, 0))


def probe(url: str, timeout: float = 1.0) -> str | None:
    """None when a connection to ``url``'s server opens within ``timeout``,
    else why not (naming the address)."""
    where = endpoint_of(url)
    try:
        if where.path:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(where.path)
        else:
            with socket.create_connection((where.host, where.port), timeout=timeout):
                pass
    except OSError as exc:
        return f"nothing answers at {where} ({_reason(exc, timeout)})"
    return None


async def probe_async(url: str, timeout: float = 1.0) -> str | None:
    """:func:`probe` without blocking the event loop."""
    where = endpoint_of(url)
    try:
        if where.path:
            opening = asyncio.open_unix_connection(where.path)
        else:
            opening = asyncio.open_connection(where.host, where.port)
        _, writer = await asyncio.wait_for(opening, timeout)
    except (OSError, TimeoutError) as exc:
        return f"nothing answers at {where} ({_reason(exc, timeout)})"
    writer.close()
    return None


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer within {timeout:g}s"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
