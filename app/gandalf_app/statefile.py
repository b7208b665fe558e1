"""Where a running ``gandalf up`` tells other commands (``gandalf usage
replay|export``) how to reach its embedded servers: ``<state>/runtime.json``
(0600: the URLs may carry credentials), written once the servers are up and
removed at the end. The state-directory lock says whether it is current."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import msgspec

__all__ = ["Runtime", "clear_runtime", "read_runtime", "write_runtime"]

_NAME = "runtime.json"


class Runtime(msgspec.Struct, kw_only=True):
    pid: int
    nats_url: str = ""
    database_url: str = ""


def write_runtime(state: Path, *, nats_url: str, database_url: str) -> None:
    data = msgspec.json.encode(Runtime(pid=os.getpid(), nats_url=nats_url,
                                       database_url=database_url))
    tmp = state / (_NAME + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, state / _NAME)


def clear_runtime(state: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (state / _NAME).unlink()


def read_runtime(state: Path) -> Runtime | None:
    """The running ``gandalf up``'s servers, or None when none runs there
    (no file, or a file left by one that was killed: its lock is free)."""
    from .embedded import AlreadyRunningError, StateDirLock

    try:
        record = msgspec.json.decode((state / _NAME).read_bytes(), type=Runtime)
    except (OSError, msgspec.DecodeError, json.JSONDecodeError):
        return None
    probe = StateDirLock(state)
    try:
        probe.acquire()
    except AlreadyRunningError:
        return record  # held: that gandalf up is alive
    probe.release()
    return None
