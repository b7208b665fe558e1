"""``gandalf usage replay|export``: billing tools over the USAGE stream and
the usage tables (see :mod:`.replay` and :mod:`.export`).

    gandalf usage replay --from <RFC 3339 | seq> [--to <RFC 3339 | seq>] [--verify]
    gandalf usage export --from <RFC 3339> --to <RFC 3339> --format csv|jsonl [--output FILE]

Connections (see :mod:`.servers`): ``--database-url``/``--nats-url``, else
``GANDALF_DATABASE_URL``/``GANDALF_NATS_URL``, else ``database.url``/``nats.url``
of the config (``--config``, default ``configs/gandalf.yaml`` when it exists),
else (through the ``gandalf`` command's resolver) those of ``gandalf up``'s
state directory (``--data-dir``): its running servers, or its embedded ones
started for the command.

Exit status: 0 done; 1 ``--verify`` found differences; 2 a usage, config or
connection error (the message says which); 3 ``--verify`` could compare
nothing yet (the window's events are all too recent).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TextIO

import asyncpg
import nats
from nats.aio.client import Client as NATS

from gandalf_common.config import ConfigError, GatewayConfig, load_config
from gandalf_common.contract import USAGE_STREAM

from .export import FORMATS, export
from .replay import (
    DEFAULT_MAX_LATENCY,
    Bound,
    ReplayError,
    Window,
    describe_read,
    parse_time,
    read_window,
)
from .replay import run as run_replay
from .servers import Resolver, ServerError, Wanted, resolve_configured
from .verify import verify, write_report

DEFAULT_CONFIG = "configs/gandalf.yaml"


class CliError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help=f"YAML config (default {DEFAULT_CONFIG} if present)")
    common.add_argument("--database-url", help="PostgreSQL URL (overrides database.url)")
    common.add_argument("--data-dir", help="state directory of gandalf up (default "
                                           "$GANDALF_DATA_DIR, else ./.gandalf)")
    parser = argparse.ArgumentParser(prog="gandalf usage",
                                     description="Usage billing tools")
    sub = parser.add_subparsers(dest="command", required=True)
    replay = sub.add_parser(
        "replay", parents=[common],
        help="re-apply the USAGE stream to the raw rows and rollups (or --verify them)",
        description="Read a window of the USAGE stream; insert missing raw rows and "
                    "rebuild the rollups of the buckets it touches from the raw rows "
                    "(idempotent), or with --verify check the raw rows against the "
                    "stream and the rollups against the raw rows.")
    replay.add_argument("--from", dest="start", required=True,
                        help="first stream sequence, or RFC 3339 time (event time)")
    replay.add_argument("--to", dest="end",
                        help="end (exclusive): stream sequence or RFC 3339 time "
                             "(default: the end of the stream)")
    replay.add_argument("--verify", action="store_true",
                        help="write nothing; exit 1 on any difference, 3 when everything "
                             "in the window is still too recent to compare")
    replay.add_argument("--nats-url", help="NATS URL (overrides nats.url)")
    replay.add_argument("--stream", default=USAGE_STREAM, help=argparse.SUPPRESS)
    replay.add_argument("--max-latency", type=float,
                        default=DEFAULT_MAX_LATENCY.total_seconds(),
                        help="longest request, in seconds, between arriving and being "
                             "published; --verify leaves what is more recent for later "
                             "(default %(default)s)")
    exp = sub.add_parser("export", parents=[common],
                         help="write the raw usage rows of a time window as CSV or JSONL")
    exp.add_argument("--from", dest="start", required=True, help="RFC 3339 (inclusive)")
    exp.add_argument("--to", dest="end", required=True, help="RFC 3339 (exclusive)")
    exp.add_argument("--format", choices=FORMATS, required=True)
    exp.add_argument("--output", help="file to write (default: standard output)")
    return parser


def _config(args: argparse.Namespace) -> GatewayConfig | None:
    path = args.config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else None)
    if path is None:
        return None
    try:
        cfg, _warnings = load_config(path)
    except FileNotFoundError:
        raise CliError(f"config file not found: {path}") from None
    except ConfigError as exc:
        raise CliError(f"invalid config: {exc}") from None
    return cfg


async def _replay(args: argparse.Namespace, out: TextIO, resolve: Resolver) -> int:
    if args.max_latency < 0:
        raise CliError("--max-latency must not be negative")
    window = Window(start=Bound.parse(args.start, "--from"),
                    end=Bound.parse(args.end, "--to") if args.end else None,
                    max_latency=timedelta(seconds=args.max_latency))
    wanted = Wanted(nats=True, database=True, nats_flag=args.nats_url,
                    database_flag=args.database_url, data_dir_flag=args.data_dir)
    with resolve(wanted, _config(args)) as servers:
        nc = await _connect_nats(servers.nats_url)
        try:
            conn = await _connect_db(servers.database_url)
            try:
                if not args.verify:
                    return await run_replay(nc, conn, window, out=out, stream=args.stream)
                replayed = await read_window(nc, window, stream=args.stream)
                out.write(describe_read(window, replayed) + "\n")
                report = await verify(conn, replayed, window)
                return write_report(report, window, out)
            finally:
                await conn.close()
        finally:
            await nc.close()


async def _connect_nats(url: str) -> NATS:
    errors: list[Exception] = []

    async def _quiet(exc: Exception) -> None:  # no traceback per attempt
        errors.append(exc)

    servers = [u.strip() for u in url.split(",") if u.strip()]
    try:
        # max_reconnect_attempts=1: each server is tried twice, then we give up
        # (0 would mean "forever" to nats-py's initial connect).
        return await nats.connect(servers=servers, name="gandalf-usage-replay",
                                  connect_timeout=5, allow_reconnect=False,
                                  max_reconnect_attempts=1, reconnect_time_wait=0.2,
                                  error_cb=_quiet)
    except Exception as exc:  # noqa: BLE001 - reported to the operator
        cause = errors[-1] if errors else exc
        raise CliError(f"cannot connect to NATS at {url}: {cause}") from None


async def _connect_db(dsn: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise CliError(f"cannot connect to the database: {exc}") from None


async def _export(args: argparse.Namespace, out: TextIO, err: TextIO,
                  resolve: Resolver) -> int:
    since, until = parse_time(args.start, "--from"), parse_time(args.end, "--to")
    if until <= since:
        raise CliError("--to must be after --from")
    wanted = Wanted(nats=False, database=True, database_flag=args.database_url,
                    data_dir_flag=args.data_dir)
    with resolve(wanted, _config(args)) as servers:
        conn = await _connect_db(servers.database_url)
        try:
            if not args.output:
                count = await export(conn, since, until, args.format, out)
            else:
                # Lines are written synchronously either way (a local file).
                with open(args.output, "w", encoding="utf-8",  # noqa: ASYNC230
                          newline="") as fh:
                    count = await export(conn, since, until, args.format, fh)
        finally:
            await conn.close()
    err.write(f"export: {count} rows\n")
    return 0


async def run(argv: Sequence[str], out: TextIO | None = None, err: TextIO | None = None,
              resolve: Resolver = resolve_configured) -> int:
    """``gandalf usage`` inside a running event loop; the exit status. ``resolve``
    finds the servers (the ``gandalf`` command's one knows ``gandalf up``)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit as exc:  # --help or a usage error, already printed
        return int(exc.code or 0)
    try:
        if args.command == "replay":
            return await _replay(args, out, resolve)
        return await _export(args, out, err, resolve)
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly, as cat does.
        _silence(out)
        return 141
    except (CliError, ReplayError, ServerError, OSError, asyncpg.PostgresError) as exc:
        err.write(f"gandalf usage {args.command}: error: {exc}\n")
        return 2


def _silence(out: TextIO) -> None:
    """No second broken-pipe error when the interpreter flushes ``out`` at exit."""
    try:
        fd = out.fileno()
    except (OSError, ValueError, AttributeError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def main(argv: Sequence[str] | None = None, resolve: Resolver = resolve_configured) -> int:
    """Entry point of ``gandalf usage replay|export``: ``sys.exit(main(argv))``
    with the arguments after ``usage``."""
    # SIGTERM as Ctrl-C: embedded servers started for the command are stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return asyncio.run(run(sys.argv[1:] if argv is None else argv, resolve=resolve))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
