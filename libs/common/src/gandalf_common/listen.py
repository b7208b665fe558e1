"""Listening address helpers (``server.addr`` is Go-style ``host:port``)."""

from __future__ import annotations

import socket


def parse_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    return (host or "0.0.0.0"), int(port or 8080)


def bind_socket(addr: str) -> socket.socket:
    """A listening socket that ``gandalf up`` hands to every gateway process."""
    host, port = parse_addr(addr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
