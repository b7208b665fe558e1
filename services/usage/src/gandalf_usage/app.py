"""The usage service. Today it answers readiness pings; the JetStream usage
stream -> Postgres raw rows and rollups come with the usage work."""

from __future__ import annotations

import os

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from gandalf_common import contract
from gandalf_common.contract import Pong, encode


class UsageService:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._subs: list[Subscription] = []

    async def start(self, nc: NATS) -> None:
        pong = encode(Pong(service="usage", pid=os.getpid()))

        async def on_ping(msg: Msg) -> None:
            if msg.reply:
                await nc.publish(msg.reply, pong)

        self._subs.append(await nc.subscribe(contract.PING_USAGE, queue="usage", cb=on_ping))

    async def stop(self, timeout: float) -> None:
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - the connection may be gone already
                pass
