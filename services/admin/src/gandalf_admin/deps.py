"""What handlers need besides the request: one object built at start."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.client import Client as NATS

from gandalf_common.config import GatewayConfig
from gandalf_common.contract import AdminResponse
from gandalf_common.crypto import SecretBox

from .access import Access
from .replicate import Replicator
from .store import Store
from .store.pg_usage import PgUsageRepo
from .store.usage_ports import UsageRepo
from .wire import Request


@dataclass(slots=True)
class Deps:
    cfg: GatewayConfig
    store: Store
    repl: Replicator
    box: SecretBox | None
    nc: NATS

    @property
    def usage(self) -> UsageRepo:
        """Usage queries (read-only, on the store's pool)."""
        return PgUsageRepo(self.store.pool)


Handler = Callable[[Request, Access, Deps], Awaitable[AdminResponse]]
