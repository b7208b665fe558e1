"""Where the billing tools find NATS and PostgreSQL: the port, and the part
any deployment has (flags, environment, config).

For each server they need, the first of: the flag (``--nats-url``,
``--database-url``), ``GANDALF_NATS_URL``/``GANDALF_DATABASE_URL``, the
config (``nats.url``, ``database.url``). The ``gandalf`` command passes a
:class:`Resolver` that goes on to ``gandalf up``'s state directory and its
embedded servers (``gandalf_app.usage_servers``); this package knows nothing
of them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from gandalf_common.config import GatewayConfig


class ServerError(Exception):
    """No server to use, or one that could not be started (one line)."""


@dataclass(frozen=True, slots=True)
class Wanted:
    """The servers a command needs, with the flags it was given."""

    nats: bool
    database: bool
    nats_flag: str | None = None
    database_flag: str | None = None
    data_dir_flag: str | None = None


@dataclass(slots=True)
class Servers:
    nats_url: str = ""
    database_url: str = ""
    #: True: embedded servers were started for this command.
    started: bool = False


class Resolver(Protocol):
    def __call__(self, wanted: Wanted,
                 cfg: GatewayConfig | None) -> AbstractContextManager[Servers]:
        """The URLs to use while the ``with`` block runs."""
        ...


def configured(wanted: Wanted, cfg: GatewayConfig | None) -> Servers:
    """What flags, environment and config say (empty where they say nothing)."""
    out = Servers()
    if wanted.nats:
        out.nats_url = (wanted.nats_flag or os.environ.get("GANDALF_NATS_URL", "")
                        or (cfg.nats.url if cfg else ""))
    if wanted.database:
        out.database_url = (wanted.database_flag or os.environ.get("GANDALF_DATABASE_URL", "")
                            or (cfg.database.url if cfg else ""))
    return out


@contextlib.contextmanager
def resolve_configured(wanted: Wanted, cfg: GatewayConfig | None) -> Iterator[Servers]:
    """The resolver of a deployment without ``gandalf up``: configured servers only."""
    out = configured(wanted, cfg)
    if wanted.database and not out.database_url:
        raise ServerError(nothing("database", "none configured"))
    if wanted.nats and not out.nats_url:
        raise ServerError(nothing("NATS server", "none configured"))
    yield out


def nothing(what: str, why: str) -> str:
    if what == "database":
        how = "pass --database-url, set GANDALF_DATABASE_URL or database.url in the config"
    else:
        how = "pass --nats-url, set GANDALF_NATS_URL or nats.url in the config"
    return f"no {what}: {how}, or run it next to gandalf up ({why})"
