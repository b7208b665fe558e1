"""Where a provider (or JWKS) URL may point: the SSRF guard of admin writes.

Only the URL text is checked: literal IP addresses (every form the resolver
accepts, e.g. ``2852039166`` or ``0xa9.0xfe.0xa9.0xfe``) and well-known
metadata host names. Names are deliberately not resolved here: DNS can change
after the check (rebinding), a resolver may be unavailable to the admin, and
a blocking lookup does not belong in a request handler. Deployments that need
a hard boundary set ``security.upstream_allowlist`` and egress rules.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

from gandalf_common.config import SecurityConfig

from .errors import bad_request

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_BLOCKED_NETS = tuple(ipaddress.ip_network(n) for n in (
    "169.254.0.0/16",      # link-local, AWS/GCP/Azure/OpenStack metadata
    "fe80::/10",           # IPv6 link-local
    "fd00:ec2::254/128",   # AWS metadata over IPv6
))
_BLOCKED_NAMES = frozenset({"metadata.google.internal", "metadata", "metadata.goog",
                            "instance-data", "instance-data.ec2.internal"})
_LEGACY_IPV4 = re.compile(r"^[0-9a-fx.]+$")


def literal_ip(host: str) -> IPAddress | None:
    """The address when ``host`` is an IP literal in any accepted form."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _LEGACY_IPV4.match(host):
        try:  # inet_aton accepts what getaddrinfo does: 1-4 parts, octal, hex
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _blocked(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in _BLOCKED_NETS)


def _allowed(host: str, ip: IPAddress | None, allowlist: list[str]) -> bool:
    for entry in allowlist:
        entry = entry.strip().lower()
        if ip is not None:
            try:
                if ip in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
        if fnmatchcase(host, entry):
            return True
    return False


def check_url(url: str, security: SecurityConfig, param: str, *,
              use_allowlist: bool = True) -> None:
    """400 naming ``param`` unless ``url`` is an acceptable upstream URL."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").rstrip(".").lower()
        _ = parts.port  # raises on a bad port
    except ValueError:
        raise bad_request(f"{param} is not a valid URL", param) from None
    if parts.scheme not in ("http", "https"):
        raise bad_request(f"{param} must use http or https", param)
    if "@" in parts.netloc:
        raise bad_request(f"{param} must not contain credentials (user:password@); "
                          "use the provider's auth fields", param)
    if not host:
        raise bad_request(f"{param} has no host", param)
    ip = literal_ip(host)
    if security.block_metadata and (host in _BLOCKED_NAMES or (ip is not None and _blocked(ip))):
        raise bad_request(f"{param} points at a link-local or cloud metadata address", param)
    if use_allowlist and security.upstream_allowlist and not _allowed(
            host, ip, security.upstream_allowlist):
        raise bad_request(f"{param} host {host!r} is not in security.upstream_allowlist",
                          param)
