"""Waiting for dependencies at startup, in a way that a stop signal and a
deadline both cut short, and that can say afterwards what it waited for.

Services may start before NATS or PostgreSQL (compose, Kubernetes), so a
start retries; but it must never outlive SIGTERM, and when it gives up the
operator gets one line naming the address, not a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["DependencyUnavailableError", "NotReadyError", "StartupError", "retry_until",
           "waiting_on"]

log = logging.getLogger("gandalf.startup")
T = TypeVar("T")

#: How long a starting service waits for NATS or PostgreSQL before giving up.
DEPENDENCY_WAIT_S = 30.0
#: How often a waiting service says what it waits for.
_LOG_EVERY_S = 5.0

#: What each dependency wait is blocked on right now (name -> reason).
_waiting: dict[str, str] = {}


class StartupError(Exception):
    """A configuration or startup problem: one line for the operator, exit 2."""


class NotReadyError(Exception):
    """Stopped (by a signal) before the service was ready; says what it waited for."""


class DependencyUnavailableError(NotReadyError):
    """A dependency did not answer within the startup wait."""


def waiting_on() -> str:
    """What the process is waiting for now, or '' when nothing."""
    return "; ".join(_waiting.values())


async def retry_until(name: str, attempt: Callable[[], Awaitable[T]], *,
                      wait_s: float = DEPENDENCY_WAIT_S, pause_s: float = 0.25) -> T:
    """``attempt()`` until it returns; it raises ``OSError``/``ConnectionError``
    (or ``TimeoutError``) with a reason while the dependency is away. After
    ``wait_s`` raise :class:`DependencyUnavailableError` with the last reason.
    Cancellation (a stop signal) ends the wait at once."""
    deadline = time.monotonic() + wait_s
    next_log = time.monotonic()  # the first failure is said at once
    while True:
        try:
            result = await attempt()
        except (OSError, ConnectionError, TimeoutError) as exc:
            # The reason stays recorded if a stop signal cancels the wait:
            # the "not ready" line names it.
            reason = str(exc) or type(exc).__name__
            _waiting[name] = reason
            now = time.monotonic()
            if now >= deadline:
                _waiting.pop(name, None)
                raise DependencyUnavailableError(f"{reason} (gave up after {wait_s:g}s)") from None
            if now >= next_log:
                log.warning("waiting: %s", reason)
                next_log = now + _LOG_EVERY_S
            await asyncio.sleep(min(pause_s, max(0.0, deadline - now)))
            continue
        _waiting.pop(name, None)
        return result
