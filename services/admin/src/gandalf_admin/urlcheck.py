"""Where a provider (or JWKS) URL may point: the SSRF guard of admin writes.

``check_url`` judges the URL text: literal IP addresses (every form the
resolver accepts, e.g. ``2852039166`` or ``0xa9.0xfe.0xa9.0xfe``, and IPv6
forms embedding an IPv4 address, see ``gandalf_common.netguard``) and
well-known metadata host names. ``check_resolved`` then resolves a host name
and judges every address it has now. DNS can change after the check
(rebinding), so the workers check again right before connecting; a name that
does not resolve here is accepted (the admin may not see the workers' DNS).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

from gandalf_common.config import SecurityConfig
from gandalf_common.netguard import forbidden

from .errors import bad_request

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Seconds a validation-time lookup may take before the host is accepted.
RESOLVE_TIMEOUT_S = 3.0
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
    if security.block_metadata and host in _BLOCKED_NAMES:
        raise bad_request(f"{param} points at a link-local or cloud metadata address", param)
    reason = forbidden(ip, security) if ip is not None else None
    if reason is not None:
        raise bad_request(f"{param} points at {reason}", param)
    if use_allowlist and security.upstream_allowlist and not _allowed(
            host, ip, security.upstream_allowlist):
        raise bad_request(f"{param} host {host!r} is not in security.upstream_allowlist",
                          param)


async def check_resolved(url: str, security: SecurityConfig, param: str) -> None:
    """400 naming ``param`` when the URL's host name resolves, now, to an
    address the policy refuses (call after ``check_url``)."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if not host or literal_ip(host) is not None:
        return
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError, UnicodeError):
        return  # unresolvable here: the workers' connect-time guard decides
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        reason = forbidden(ip, security)
        if reason is not None:
            raise bad_request(f"{param} host {host!r} resolves to {reason}", param)
