"""The usage service. Today it answers readiness pings; the JetStream usage
stream -> Postgres raw rows and rollups come with the usage work."""

from __future__ import annotations

import os

from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from gandalf_common import contract
from gandalf_common.bus import serve_pings, unsubscribe_all
from gandalf_common.contract import Pong, encode


class UsageService:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._subs: list[Subscription] = []

    async def start(self, nc: NATS) -> None:
        pong = encode(Pong(service="usage", pid=os.getpid()))
        self._subs.append(await serve_pings(nc, contract.PING_USAGE, "usage", pong))

    async def stop(self, timeout: float) -> None:
        await unsubscribe_all(self._subs)
