"""Which IP addresses an upstream connection may reach (the SSRF policy),
shared by the admin's URL check and the workers' connect-time guard.

An address is judged after unwrapping every IPv6 form that carries an IPv4
address (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible ``::a.b.c.d``, NAT64
``64:ff9b::/96`` and ``64:ff9b:1::/48``, 6to4 ``2002::/16``, Teredo
``2001::/32``): each embedded address is judged too, so
``64:ff9b::a9fe:a9fe`` is as forbidden as ``169.254.169.254``.

- ``security.block_metadata`` (default on): link-local and cloud metadata
  addresses are refused.
- ``security.block_private`` (default off): also loopback, private (RFC 1918,
  unique-local), shared (CGNAT) and unspecified addresses. Off by default so
  local model servers (Ollama on 127.0.0.1, vLLM on 10.x) keep working.
- A CIDR in ``security.upstream_allowlist`` permits its addresses whatever
  the two switches say (e.g. ``127.0.0.0/8`` with ``block_private: true``).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

from .config import SecurityConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_METADATA_NETS = tuple(ipaddress.ip_network(n) for n in (
    "169.254.0.0/16",       # link-local: AWS/GCP/Azure/OpenStack metadata
    "fe80::/10",            # IPv6 link-local
    "fd00:ec2::254/128",    # AWS metadata over IPv6
    "100.100.100.200/32",   # Alibaba Cloud metadata
))
_PRIVATE_NETS = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "172.16.0.0/12",
    "192.168.0.0/16", "::/128", "::1/128", "fc00::/7",
))
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_COMPAT = ipaddress.ip_network("::/96")


def embedded(ip: IPAddress) -> Iterator[IPAddress]:
    """``ip`` and every IPv4 address an IPv6 form of it carries."""
    yield ip
    if not isinstance(ip, ipaddress.IPv6Address):
        return
    if ip.ipv4_mapped is not None:
        yield ip.ipv4_mapped
    if ip.sixtofour is not None:
        yield ip.sixtofour
    if ip.teredo is not None:
        yield from ip.teredo  # (server, client)
    low = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if any(ip in net for net in _NAT64):
        yield low
    if ip in _COMPAT and int(ip) > 1:  # not :: or ::1, which are themselves
        yield low


def _in(ip: IPAddress, nets: tuple[Any, ...]) -> bool:
    return any(ip.version == net.version and ip in net for net in nets)


def allowlisted(ip: IPAddress, allowlist: list[str]) -> bool:
    for entry in allowlist:
        try:
            net = ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            continue  # a host name pattern: not about addresses
        if ip.version == net.version and ip in net:
            return True
    return False


def forbidden(ip: IPAddress, security: SecurityConfig) -> str | None:
    """Why ``ip`` may not be reached (a short phrase), or None."""
    if allowlisted(ip, security.upstream_allowlist):
        return None
    for inner in embedded(ip):
        if security.block_metadata and _in(inner, _METADATA_NETS):
            return "a link-local or cloud metadata address"
        if security.block_private and _in(inner, _PRIVATE_NETS):
            return "a loopback or private address"
    return None


class ForbiddenAddressError(OSError):
    """A connection to an address the SSRF policy refuses."""


def guarded_socket_factory(security: SecurityConfig) -> Any:
    """An aiohttp ``socket_factory``: called with each resolved address right
    before connecting, so a name that resolves (or re-resolves, DNS
    rebinding) to a forbidden address never gets a connection."""

    def factory(addr_info: tuple[Any, ...]) -> socket.socket:
        family, type_, proto, _canon, sockaddr = addr_info
        ip = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
        reason = forbidden(ip, security)
        if reason is not None:
            raise ForbiddenAddressError(f"upstream address {ip} refused: {reason} "
                                        "(security.upstream_allowlist can permit it)")
        sock = socket.socket(family=family, type=type_, proto=proto)
        sock.setblocking(False)
        return sock

    return factory
