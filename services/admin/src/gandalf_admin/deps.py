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
from .wire import Request


@dataclass(slots=True)
class Deps:
    cfg: GatewayConfig
    store: Store
    repl: Replicator
    box: SecretBox | None
    nc: NATS


Handler = Callable[[Request, Access, Deps], Awaitable[AdminResponse]]
