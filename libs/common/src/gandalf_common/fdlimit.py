"""Open-file limit: raised to the hard limit at process start, so a burst of
client connections does not run the process out of descriptors first."""

from __future__ import annotations

import logging

try:
    import resource
except ImportError:  # not POSIX
    resource = None  # type: ignore[assignment]

log = logging.getLogger("gandalf")

#: Descriptors kept back from client connections: NATS, Redis, Postgres,
#: upstream pools, log files.
RESERVED = 256


def raise_nofile_limit() -> int:
    """Set the soft RLIMIT_NOFILE to the hard limit; return the soft limit now
    in force (0 when unknown)."""
    if resource is None:
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 0
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d: %s", soft, exc)
    return int(soft)


def nofile_limit() -> int:
    if resource is None:
        return 0
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 0 if soft == resource.RLIM_INFINITY else int(soft)


def connection_cap(configured: int) -> int:
    """``configured`` client connections, capped below the open-file limit."""
    limit = nofile_limit()
    cap = max(limit - RESERVED, 32) if limit else 0
    if not configured:
        return cap
    return min(configured, cap) if cap else configured
