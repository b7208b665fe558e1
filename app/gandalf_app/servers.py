"""The embedded servers of ``gandalf up``: started when the config names
none, watched, and restarted when one dies.

NATS keeps its port and JetStream store across a restart, PostgreSQL its
data directory, and Valkey its port (its contents are short-lived by design:
rate windows, reservations and cache entries), so the gateway processes
reconnect to the same addresses and nothing needs to be told.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from gandalf_common.restart_metrics import FILE_NAME, write_counts
from gandalf_common.startup import StartupError

from .embedded import EmbeddedNats, EmbeddedPostgres, EmbeddedRedis, EmbeddedServerError
from .lifeline import PgWatchdog

__all__ = ["EmbeddedServers"]

log = logging.getLogger("gandalf.up")

#: Restart backoff: first retry after this, doubling up to the cap.
_BACKOFF_FIRST_S = 0.5
_BACKOFF_CAP_S = 10.0


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


class _Watched:
    """One server: how to tell it is alive, how to start it again, and when
    the next try is due."""

    def __init__(self, name: str, label: str, alive: Callable[[], bool],
                 restart: Callable[[], object], say: Callable[[str], None]) -> None:
        self.name = name
        #: The ``server`` label of gandalf_embedded_restarts_total.
        self.label = label
        self.alive = alive
        self.restart = restart
        self.say = say
        self.restarts = 0
        self._backoff = _BACKOFF_FIRST_S
        self._due = 0.0
        self._down_since = 0.0

    def check(self) -> None:
        if self.alive():
            if self._down_since:
                self.say(f"embedded {self.name} is back after "
                         f"{time.monotonic() - self._down_since:.1f}s")
                self._down_since = 0.0
                self._backoff = _BACKOFF_FIRST_S
            return
        now = time.monotonic()
        if not self._down_since:
            self._down_since = now
            self._due = now
            self.say(f"embedded {self.name} exited; restarting it")
        if now < self._due:
            return
        try:
            self.restart()
            self.restarts += 1
        except (EmbeddedServerError, OSError, subprocess.SubprocessError) as exc:
            self.say(f"embedded {self.name} did not start ({_first_line(exc)}); "
                     f"next try in {self._backoff:.1f}s")
            self._due = now + self._backoff
            self._backoff = min(self._backoff * 2, _BACKOFF_CAP_S)


class EmbeddedServers:
    """Starts what the config leaves out, in order NATS, PostgreSQL, Valkey."""

    def __init__(self, state: Path, say: Callable[[str], None]) -> None:
        self.state = state
        self.say = say
        self.nats: EmbeddedNats | None = None
        self.pg: EmbeddedPostgres | None = None
        self.redis: EmbeddedRedis | None = None
        self._watchdog: PgWatchdog | None = None
        self._watched: list[_Watched] = []

    def start_nats(self, max_payload: int) -> str:
        """Start NATS with a password (kept 0600 in the state directory):
        only the gateway's own processes may use the bus. Returns the URL
        with the credentials."""
        self.nats = nats = EmbeddedNats(self.state, max_payload=max_payload,
                                        die_with_parent=True,
                                        password=secret_file(self.state / "nats-password"))
        url = _started(nats.start)
        self._watched.append(_Watched("NATS", "nats", lambda: nats.pid is not None,
                                      nats.restart, self.say))
        self.say(f"embedded NATS with JetStream at {nats.address} (password in "
                 f"{self.state / 'nats-password'}; data in {self.state / 'nats'})")
        return url

    def start_postgres(self) -> str:
        self.pg = pg = EmbeddedPostgres(self.state)
        # A server left running by a gandalf up that was killed is adopted
        # here (and stopped by us at the end).
        dsn = _started(pg.start)
        self._watchdog = PgWatchdog(pg.pgdata)
        self._watchdog.start()
        self._watched.append(_Watched("PostgreSQL", "postgres",
                                      lambda: pg.postmaster_pid() is not None, pg.restart,
                                      self.say))
        self.say(f"embedded PostgreSQL started (data in {self.state / 'pg'})")
        return dsn

    def start_redis(self) -> str:
        self.redis = redis = EmbeddedRedis(self.state, die_with_parent=True)
        url = _started(redis.start)
        self._watched.append(_Watched("Valkey", "valkey", lambda: redis.pid is not None,
                                      redis.start, self.say))
        self.say(f"embedded Valkey at {url}: rate limits, budgets and the cache are shared "
                 "by the gateway processes")
        return url

    @property
    def restarts_file(self) -> Path:
        """Restart counts for the gateway processes' /metrics (restart_metrics.py)."""
        return self.state / FILE_NAME

    def check(self) -> None:
        """Restart whatever died (called from the launcher's loop)."""
        before = sum(w.restarts for w in self._watched)
        for watched in self._watched:
            watched.check()
        if sum(w.restarts for w in self._watched) != before:
            self.write_restarts()

    def write_restarts(self) -> None:
        try:
            write_counts(self.restarts_file, {w.label: w.restarts for w in self._watched})
        except OSError as exc:
            log.warning("cannot write %s: %s", self.restarts_file, exc)

    def stop(self) -> None:
        """Gateway processes first (the caller's), then these, NATS last."""
        if self.redis is not None:
            self.redis.stop()
        if self.pg is not None:
            self.pg.stop()
        if self._watchdog is not None:
            self._watchdog.stop()
        if self.nats is not None:
            self.nats.stop()


def secret_file(path: Path) -> str:
    """A random secret kept in ``path`` (0600), made on first use."""
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value


def _started(start: Callable[[], str]) -> str:
    """Start an embedded server; its failure is a startup error (one line)."""
    try:
        return start()
    except (EmbeddedServerError, OSError, subprocess.SubprocessError) as exc:
        raise StartupError(f"cannot start an embedded server: {_first_line(exc)}") from None
