"""Where the billing tools find NATS and PostgreSQL, ``gandalf up`` included
(the resolver the ``gandalf`` command gives ``gandalf_usage.cli``).

For each server they need, the first of: the flag (``--nats-url``,
``--database-url``), ``GANDALF_NATS_URL``/``GANDALF_DATABASE_URL``, the
config (``nats.url``, ``database.url``), then the state directory of
``gandalf up`` (``--data-dir``, ``GANDALF_DATA_DIR``, ``data_dir`` of the
config, ``./.gandalf``):

- a running ``gandalf up`` there: the URLs of its ``runtime.json`` (its NATS
  URL carries the password the embedded server requires);
- none running but the directory exists: its embedded servers are started
  for the duration of the command, under the state lock (so ``gandalf up``
  cannot start on the same data meanwhile), and stopped after.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from gandalf_common.config import GatewayConfig
from gandalf_usage.servers import ServerError, Servers, Wanted, configured, nothing

from .embedded import (
    AlreadyRunningError,
    EmbeddedNats,
    EmbeddedPostgres,
    EmbeddedServerError,
    StateDirLock,
)
from .statefile import read_runtime


def state_dir(flag: str | None, cfg: GatewayConfig | None) -> Path:
    """The state directory as ``gandalf up`` resolves it."""
    value = (flag or os.environ.get("GANDALF_DATA_DIR") or (cfg.data_dir if cfg else "")
             or ".gandalf")
    return Path(value).resolve()


@contextlib.contextmanager
def resolve(wanted: Wanted, cfg: GatewayConfig | None) -> Iterator[Servers]:
    """The URLs to use while the ``with`` block runs (embedded servers
    started here are stopped when it ends)."""
    out = configured(wanted, cfg)
    need_nats = wanted.nats and not out.nats_url
    need_db = wanted.database and not out.database_url
    if not (need_nats or need_db):
        yield out
        return
    state = state_dir(wanted.data_dir_flag, cfg)
    what = "database" if need_db else "NATS server"
    if not state.is_dir():
        raise ServerError(nothing(what, f"no gandalf up state directory at {state}"))
    runtime = read_runtime(state)
    if runtime is not None:
        _take(out, need_nats, need_db, runtime.nats_url, runtime.database_url, state)
        yield out
        return
    lock = StateDirLock(state)
    try:
        lock.acquire()
    except AlreadyRunningError:
        # gandalf up starting there (runtime.json comes later), or another
        # billing command that started its servers.
        raise ServerError(f"state directory {state} is in use (gandalf up starting, or "
                          "another billing command); try again in a moment") from None
    nats_server: EmbeddedNats | None = None
    pg: EmbeddedPostgres | None = None
    try:
        nats_url = db_url = ""
        try:
            if need_nats:
                nats_server, nats_url = _start_nats(state, what)
            if need_db:
                pg, db_url = _start_postgres(state, what)
        except (EmbeddedServerError, OSError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ServerError(f"cannot start the embedded servers of {state}: {first}"
                              ) from None
        _take(out, need_nats, need_db, nats_url, db_url, state)
        out.started = True
        yield out
    finally:
        if pg is not None:
            pg.stop()
        if nats_server is not None:
            nats_server.stop()
        lock.release()


def _start_nats(state: Path, what: str) -> tuple[EmbeddedNats, str]:
    if not (state / "nats").is_dir():
        raise ServerError(nothing(what, f"{state} holds no embedded NATS store"))
    password_file = state / "nats-password"
    password = password_file.read_text().strip() if password_file.exists() else ""
    # die_with_parent: killed with us, it cannot outlive the command.
    server = EmbeddedNats(state, die_with_parent=True, password=password)
    return server, server.start()


def _start_postgres(state: Path, what: str) -> tuple[EmbeddedPostgres, str]:
    if not (state / "pg").is_dir():
        raise ServerError(nothing(what, f"{state} holds no embedded PostgreSQL"))
    pg = EmbeddedPostgres(state)
    return pg, pg.start()


def _take(out: Servers, need_nats: bool, need_db: bool, nats_url: str, db_url: str,
          state: Path) -> None:
    if need_nats:
        if not nats_url:
            raise ServerError(nothing("NATS server", f"gandalf up in {state} has none"))
        out.nats_url = nats_url
    if need_db:
        if not db_url:
            raise ServerError(nothing("database", f"gandalf up in {state} has none"))
        out.database_url = db_url
