"""The admin service. Today it owns the database schema (migrations run on
start, safe with several replicas) and answers readiness pings; the admin API
and KV replication come with the governance work."""

from __future__ import annotations

import logging
import os

from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from gandalf_common import contract
from gandalf_common.bus import serve_pings, unsubscribe_all
from gandalf_common.contract import Pong, encode
from gandalf_common.pg import migrate

log = logging.getLogger("gandalf.admin")


class AdminService:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._subs: list[Subscription] = []

    async def start(self, nc: NATS) -> None:
        if self.dsn:
            applied = await migrate(self.dsn)
            log.info("database schema up to date (applied: %s)", ", ".join(applied) or "none")
        pong = encode(Pong(service="admin", pid=os.getpid()))
        self._subs.append(await serve_pings(nc, contract.PING_ADMIN, "admin", pong))

    async def stop(self, timeout: float) -> None:
        await unsubscribe_all(self._subs)
