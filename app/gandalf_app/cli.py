"""The ``gandalf`` command.

``gandalf up`` runs everything on one machine; the other subcommands run one
service each (for compose/Kubernetes). Service packages are imported lazily,
so an image that only carries the worker can still run ``gandalf worker``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import sys
from pathlib import Path

import msgspec

from gandalf_common import __version__, servicemain
from gandalf_common.callersig import BUS_SECRET_ENV, load_bus_secret
from gandalf_common.config import ConfigError, GatewayConfig
from gandalf_common.crypto import SecretError
from gandalf_common.startup import NotReadyError, StartupError

DEFAULT_CONFIG = servicemain.DEFAULT_CONFIG


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help=f"YAML config (default {DEFAULT_CONFIG})")
    common.add_argument("--data-dir", default=argparse.SUPPRESS,
                        help="state directory (default ./.gandalf, or $GANDALF_DATA_DIR)")
    common.add_argument("--nats-url", default=argparse.SUPPRESS,
                        help="NATS URL (overrides nats.url)")
    common.add_argument("--log-level", default=argparse.SUPPRESS,
                        choices=["debug", "info", "warning", "error"])
    parser = argparse.ArgumentParser(prog="gandalf", parents=[common],
                                     description="Gandalf LLM gateway")
    # An explicit metavar keeps the hidden `node` out of the listing.
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser("up", parents=[common], help="run everything on this machine")
    up.add_argument("--processes", type=int, default=0,
                    help="gateway processes (default: server.processes, else CPU count)")
    up.add_argument("--addr", default=argparse.SUPPRESS,
                    help="listen address, e.g. :9090 or 127.0.0.1:8080 (overrides server.addr)")
    ingress = sub.add_parser("ingress", parents=[common], help="run the HTTP edge")
    ingress.add_argument("--addr", default=argparse.SUPPRESS,
                         help="listen address (overrides server.addr)")
    sub.add_parser("router", parents=[common], help="run a router")
    worker = sub.add_parser("worker", parents=[common], help="run provider workers")
    worker.add_argument("--provider", action="append", default=[],
                        help="serve only this provider instance (repeatable)")
    sub.add_parser("usage", parents=[common],
                   help="run the usage service; `usage replay` and `usage export` are the "
                        "billing tools",
                   formatter_class=argparse.RawDescriptionHelpFormatter,
                   description="Run the usage service (USAGE stream -> PostgreSQL).",
                   epilog="billing tools:\n"
                          "  gandalf usage replay --from T [--to T] [--verify]\n"
                          "      re-apply the USAGE stream to the usage tables, or check them\n"
                          "  gandalf usage export --from T --to T --format csv|jsonl\n"
                          "      write the raw usage rows of a window\n"
                          "they find the servers of gandalf up's state directory by "
                          "themselves\n"
                          "see `gandalf usage replay --help` and `gandalf usage export --help`")
    sub.add_parser("admin", parents=[common], help="run the admin service")
    sub.add_parser("version", help="print the version")
    node = sub.add_parser("node", parents=[common])  # gandalf up's own; not listed
    node.add_argument("--fd", type=int, default=-1)
    node.add_argument("--aux", action="store_true", help="also run usage and admin")
    node.add_argument("--database-url", default="")
    return parser


def _normalize(argv: list[str]) -> list[str]:
    """Accept the original's Go-style flags: ``-config PATH`` and ``-version``."""
    out: list[str] = []
    for arg in argv:
        if arg == "-config" or arg.startswith("-config="):
            out.append("-" + arg)
        elif arg in ("-version", "--version"):
            out.append("version")
        else:
            out.append(arg)
    return out


def load(args: argparse.Namespace) -> GatewayConfig:
    return servicemain.load(getattr(args, "config", None))


_fail = servicemain.fail
admin_key_sha256 = servicemain.admin_key_sha256


def data_dir(args: argparse.Namespace, cfg: GatewayConfig) -> Path:
    value = (getattr(args, "data_dir", None) or os.environ.get("GANDALF_DATA_DIR")
             or cfg.data_dir or ".gandalf")
    return Path(value).resolve()


def nats_url(args: argparse.Namespace, cfg: GatewayConfig) -> str:
    return servicemain.nats_url(getattr(args, "nats_url", None), cfg)


def _run_node(args: argparse.Namespace, cfg: GatewayConfig, *, ingress: bool, router: bool,
              workers: bool, aux: bool, providers: list[str] | None = None) -> None:
    from gandalf_common.runtime import (
        BusService,
        HttpService,
        configure_logging,
        install_uvloop,
        run_services,
    )

    configure_logging(getattr(args, "log_level", None) or "info")
    from gandalf_common.live import LiveConfig, LiveService

    url = nats_url(args, cfg)
    if aux and ingress and not os.environ.get(BUS_SECRET_ENV):
        # Ingress and admin in this one process: a secret of its own will do.
        os.environ[BUS_SECRET_ENV] = secrets.token_urlsafe(32)
    if aux:
        load_bus_secret(required=True)  # before any wait: a startup error of one line
    services: list[BusService] = []
    http: HttpService | None = None
    if aux:
        # First: the admin service creates and fills the KV buckets the
        # others wait for.
        from gandalf_admin.app import AdminService
        from gandalf_usage.app import UsageService

        dsn = getattr(args, "database_url", "") or cfg.database.url
        services += [AdminService(cfg, dsn), UsageService(
            dsn, started_deadline_s=cfg.usage.deadline_s(cfg.server))]
    # One mirror of the configuration per process, shared by its services.
    live = LiveConfig(cfg)
    services.append(LiveService(live, keys=ingress))
    if router:
        from gandalf_router.app import RouterService

        services.append(RouterService(cfg, live))
    if workers:
        from gandalf_workers.app import WorkerService

        try:
            services.append(WorkerService(cfg, providers, live=live))
        except ValueError as exc:
            raise SystemExit(f"gandalf: {exc}") from None
    if ingress:
        from gandalf_ingress.app import IngressService

        fd = getattr(args, "fd", -1)
        if fd >= 0:
            sock = socket.socket(fileno=fd)
        else:
            # Bound here, before anything starts: a taken port is a startup
            # error of one line, not a server that connects and then dies.
            from gandalf_common.listen import bind_socket

            try:
                sock = bind_socket(cfg.server.addr)
            except OSError as exc:
                _fail(f"cannot listen on {cfg.server.addr}: {exc.strerror or exc}")
        http = IngressService(cfg, admin_key_sha256=admin_key_sha256(cfg), sock=sock,
                              live=live)
    run = install_uvloop()
    run(run_services(url, f"gandalf-{args.command}", services, http,
                     shutdown_timeout=cfg.server.shutdown_timeout))


def _honour_stop_signals() -> None:
    """A shell starts background jobs with SIGINT ignored, and a supervisor
    may hand down an ignored SIGTERM; a server must still stop when told."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(sig) == signal.SIG_IGN:
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT
                          else signal.SIG_DFL)


def main(argv: list[str] | None = None) -> None:
    _honour_stop_signals()
    from gandalf_common.fdlimit import raise_nofile_limit

    raise_nofile_limit()
    raw = _normalize(sys.argv[1:] if argv is None else argv)
    tool = _usage_tool(raw)
    if tool is not None:
        from gandalf_usage.cli import main as usage_main

        from .usage_servers import resolve

        raise SystemExit(usage_main(tool, resolve=resolve))
    args = _parser().parse_args(raw)
    if args.command == "version":
        print(f"gandalf {__version__}")
        return
    cfg = load(args)
    addr = getattr(args, "addr", None)
    if addr:
        cfg = msgspec.structs.replace(cfg, server=msgspec.structs.replace(cfg.server, addr=addr))
    try:
        _dispatch(args, cfg)
    except NotReadyError as exc:
        raise SystemExit(f"gandalf {args.command}: {exc}") from None
    except (StartupError, ConfigError, SecretError) as exc:
        print(f"gandalf {args.command}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def _dispatch(args: argparse.Namespace, cfg: GatewayConfig) -> None:
    command = args.command
    if command == "up":
        from .launcher import up

        up(args, cfg)
    elif command == "node":
        from .lifeline import die_with_parent

        die_with_parent()
        _run_node(args, cfg, ingress=True, router=True, workers=True, aux=args.aux)
    elif command == "ingress":
        _run_node(args, cfg, ingress=True, router=False, workers=False, aux=False)
    elif command == "router":
        _run_node(args, cfg, ingress=False, router=True, workers=False, aux=False)
    elif command == "worker":
        _run_node(args, cfg, ingress=False, router=False, workers=True, aux=False,
                  providers=args.provider or None)
    elif command == "usage":
        from gandalf_usage.app import UsageService

        _run_single(args, cfg, UsageService(
            cfg.database.url, started_deadline_s=cfg.usage.deadline_s(cfg.server)))
    elif command == "admin":
        from gandalf_admin.app import AdminService

        load_bus_secret(required=True)  # before any wait: a startup error of one line
        _run_single(args, cfg, AdminService(cfg, cfg.database.url))


#: Flags of ``gandalf`` that the billing tools take too, when given before ``usage``.
_FORWARDED = ("--config", "--data-dir", "--nats-url")


def _usage_tool(argv: list[str]) -> list[str] | None:
    """``gandalf [global flags] usage replay|export ...``: the billing tools'
    own arguments. Global flags before ``usage`` are passed along, or refused
    when the tool has no use for them; never dropped silently."""
    if "usage" not in argv:
        return None
    at = argv.index("usage")
    rest = argv[at + 1:]
    if not rest or rest[0] not in ("replay", "export"):
        return None
    before = argv[:at]
    forwarded: list[str] = []
    i = 0
    while i < len(before):
        flag, eq, value = before[i].partition("=")
        if flag not in _FORWARDED:
            raise SystemExit(f"gandalf usage {rest[0]}: {before[i]} is not an option of the "
                             f"billing tools (they take {', '.join(_FORWARDED)})")
        if not eq:
            if i + 1 >= len(before):
                raise SystemExit(f"gandalf: {flag} needs a value")
            i += 1
            value = before[i]
        if flag not in rest:
            forwarded += [flag, value]
        i += 1
    return [*rest, *forwarded]


def _run_single(args: argparse.Namespace, cfg: GatewayConfig, service: object) -> None:
    from gandalf_common.runtime import configure_logging, install_uvloop, run_services

    configure_logging(getattr(args, "log_level", None) or "info")
    install_uvloop()(run_services(nats_url(args, cfg), f"gandalf-{args.command}",
                                  [service],  # type: ignore[list-item]
                                  shutdown_timeout=cfg.server.shutdown_timeout))


if __name__ == "__main__":
    main()
