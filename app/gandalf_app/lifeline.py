"""Children that do not outlive ``gandalf up``, even when it dies by SIGKILL.

Linux delivers a chosen signal to a process whose parent dies
(``PR_SET_PDEATHSIG``): the gateway processes and nats-server get SIGTERM
and stop cleanly. PostgreSQL cannot be covered that way (``pg_ctl``
daemonizes it), so a tiny shell watchdog holds the read end of a pipe whose
write end only ``gandalf up`` has: when that closes, however the launcher
ended, the watchdog runs ``pg_ctl stop``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from pathlib import Path

__all__ = ["PARENT_ENV", "PgWatchdog", "die_with_parent", "pdeathsig"]

#: Set by ``gandalf up`` for its children: the pid they must not outlive.
PARENT_ENV = "GANDALF_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def _set_pdeathsig(sig: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0
    except (OSError, AttributeError):  # not Linux: nothing to ask for
        return False


def pdeathsig() -> None:
    """``preexec_fn`` for a child that should get SIGTERM when its parent dies.

    The signal fires when the *thread* that forked exits, so only spawn from
    the launcher's main thread with this."""
    _set_pdeathsig(signal.SIGTERM)


def die_with_parent() -> None:
    """In a gateway process: ask for SIGTERM when ``gandalf up`` dies, and
    stop now if it already has (it may have died before we got here)."""
    expected = os.environ.get(PARENT_ENV, "")
    if not expected.isdigit():
        return
    _set_pdeathsig(signal.SIGTERM)
    if os.getppid() != int(expected):
        os.kill(os.getpid(), signal.SIGTERM)


class PgWatchdog:
    """Stops a daemonized PostgreSQL when the launcher's pipe closes."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self._proc: subprocess.Popen[bytes] | None = None
        self._write_fd = -1

    def start(self) -> None:
        read_fd, write_fd = os.pipe()
        os.set_inheritable(read_fd, True)
        # `cat` returns at EOF: the launcher closed the pipe by stopping or by
        # dying. SIGINT is PostgreSQL's fast shutdown; the postmaster's pid is
        # the first line of postmaster.pid (a signal works whatever user the
        # server runs as, where pg_ctl would need that user). Its own session,
        # so a terminal's Ctrl-C reaches the launcher only.
        script = ('cat >/dev/null; pid=$(head -n 1 "$0/postmaster.pid" 2>/dev/null); '
                  '[ -n "$pid" ] && kill -INT "$pid" 2>/dev/null; exit 0')
        self._proc = subprocess.Popen(
            ["/bin/sh", "-c", script, str(self.pgdata)],
            stdin=read_fd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True)
        os.close(read_fd)
        os.set_inheritable(write_fd, False)
        self._write_fd = write_fd

    def stop(self) -> None:
        """After the launcher stopped PostgreSQL itself: end the watchdog."""
        fd, self._write_fd = self._write_fd, -1
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
