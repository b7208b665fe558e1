"""``python -m gandalf_<service>``: one service in one process, without the
``gandalf`` command (whose app package depends on every service).

Each service's ``__main__`` passes a builder; this module does what they
share: flags, the config (errors as one line, exit 2), logging, the NATS
connection, signals and the drain. ``gandalf_app.cli`` uses the same helpers.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

import msgspec

from .config import ConfigError, GatewayConfig, load_config
from .crypto import SecretError
from .runtime import BusService, HttpService
from .startup import NotReadyError, StartupError

DEFAULT_CONFIG = "configs/gandalf.yaml"


def fail(message: str, status: int = 2, prog: str = "gandalf") -> NoReturn:
    """A configuration or startup problem: one line on stderr, status 2."""
    print(f"{prog}: {message}", file=sys.stderr, flush=True)  # noqa: T201
    raise SystemExit(status)


def load(path: str | None, prog: str = "gandalf") -> GatewayConfig:
    """The config with the environment's overrides; warnings on stderr."""
    path = path or DEFAULT_CONFIG
    try:
        cfg, warnings = load_config(path)
    except FileNotFoundError:
        fail(f"config file not found: {path}", prog=prog)
    except ConfigError as exc:
        fail(f"invalid config: {exc}", prog=prog)
    for warning in warnings:
        print(f"{prog}: warning: {warning}", file=sys.stderr)  # noqa: T201
    redis = os.environ.get("GANDALF_REDIS_URL", "")
    if redis and not cfg.redis.url:
        # As GANDALF_NATS_URL does for NATS; `gandalf up` hands its embedded
        # Valkey to its processes this way.
        cfg = msgspec.structs.replace(cfg, redis=msgspec.structs.replace(cfg.redis, url=redis))
    return cfg


def nats_url(flag: str | None, cfg: GatewayConfig, prog: str = "gandalf") -> str:
    url = flag or os.environ.get("GANDALF_NATS_URL") or cfg.nats.url
    if not url:
        fail("nats.url is not set (or pass --nats-url); "
             "`gandalf up` starts an embedded NATS for you", prog=prog)
    return url


def admin_key_sha256(cfg: GatewayConfig) -> str:
    """The bootstrap admin key, as a hash: from GANDALF_ADMIN_KEY or a hash
    handed down by ``gandalf up`` (which may have generated the key)."""
    digest = os.environ.get("GANDALF_ADMIN_KEY_SHA256", "")
    if digest:
        return digest
    key = os.environ.get("GANDALF_ADMIN_KEY", "") or cfg.auth.admin_key
    if not key:
        return ""
    if not key.startswith("gnd_"):
        fail("GANDALF_ADMIN_KEY must start with gnd_")
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Context:
    cfg: GatewayConfig
    args: argparse.Namespace
    prog: str


#: What a service's ``__main__`` builds: the bus services (in start order) and
#: the HTTP edge, if it has one.
Built = tuple[list[BusService], HttpService | None]


def run(service: str, build: Callable[[Context], Built], *,
        add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
        argv: Sequence[str] | None = None) -> None:
    from .runtime import configure_logging, install_uvloop, run_services

    prog = f"python -m gandalf_{service}"
    parser = argparse.ArgumentParser(prog=prog, description=f"Run the Gandalf {service}.")
    parser.add_argument("--config", help=f"YAML config (default {DEFAULT_CONFIG})")
    parser.add_argument("--nats-url", help="NATS URL (overrides nats.url)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    cfg = load(args.config, prog)
    url = nats_url(args.nats_url, cfg, prog)
    configure_logging(args.log_level)
    try:
        services, http = build(Context(cfg, args, prog))
        install_uvloop()(run_services(url, f"gandalf-{service}", services, http,
                                      shutdown_timeout=cfg.server.shutdown_timeout))
    except NotReadyError as exc:
        raise SystemExit(f"{prog}: {exc}") from None
    except (StartupError, ConfigError, SecretError, ValueError) as exc:
        fail(str(exc), prog=prog)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
