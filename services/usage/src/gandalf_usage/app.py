"""The usage service: the USAGE stream -> PostgreSQL raw rows and hourly and
daily rollups (exactly once in effect), spend per budget scope -> NATS KV,
and readiness pings.

Pieces: :mod:`.consumer` (pull loop, ack after commit, backoff),
:mod:`.writer` (one batch, one transaction), :mod:`.spend` (spend -> KV),
:mod:`.db` (lazy pool), :mod:`.metrics`. Any number of replicas may run:
they share the durable consumer and race safely on the database and KV.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from gandalf_common import contract
from gandalf_common.bus import serve_pings, unsubscribe_all
from gandalf_common.config import GatewayConfig
from gandalf_common.contract import Pong, encode
from gandalf_common.live import LiveConfig
from gandalf_common.startup import DEPENDENCY_WAIT_S

from .consumer import AfterCommit, ConsumerOptions, UsageConsumer
from .db import UsageDatabase
from .spend import SpendPublisher
from .sweeper import Sweeper

log = logging.getLogger("gandalf.usage")


class UsageService:
    def __init__(self, dsn: str, cfg: GatewayConfig | None = None, *,
                 live: LiveConfig | None = None, options: ConsumerOptions | None = None,
                 spend_refresh_s: float = 60.0, after_commit: AfterCommit | None = None,
                 started_deadline_s: float = 180.0) -> None:
        """``dsn``: PostgreSQL (empty: answer pings only). Budgets come from
        ``live`` when given (it must mirror keys: ``start(nc, keys=True)``,
        started by its owner); otherwise the service mirrors the managed
        configuration itself (``cfg`` is only carried along). ``options``,
        ``spend_refresh_s`` and ``after_commit`` exist for tests and tuning;
        ``started_deadline_s`` is ``usage.started_deadline`` (sweeper.py)."""
        self.dsn = dsn
        self.cfg = cfg or GatewayConfig()
        self.options = options or ConsumerOptions()
        self._live = live
        self._spend_refresh_s = spend_refresh_s
        self._after_commit = after_commit
        self._subs: list[Subscription] = []
        self.db: UsageDatabase | None = None
        self.spend: SpendPublisher | None = None
        self.consumer: UsageConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._started_deadline_s = started_deadline_s
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, nc: NATS) -> None:
        pong = encode(Pong(service="usage", pid=os.getpid()))
        if not self.dsn:
            log.warning("no database configured (database.url): usage events stay in "
                        "the USAGE stream until a usage service with a database runs")
            self._subs.append(await serve_pings(nc, contract.PING_USAGE, "usage", pong))
            return
        self.db = UsageDatabase(self.dsn)
        # Ready means able to bill: wait (boundedly, a stop signal ends it)
        # for the database and its schema before taking events.
        await self.db.pool(wait_s=DEPENDENCY_WAIT_S)
        own_live = self._live is None
        live = self._live or LiveConfig(self.cfg, managed=True)
        self.spend = SpendPublisher(self.db, live, refresh_s=self._spend_refresh_s,
                                    start_live=own_live)
        try:
            await self.spend.start(nc)
            self.consumer = UsageConsumer(nc, self.db, options=self.options,
                                          on_written=self.spend.touched,
                                          after_commit=self._after_commit)
            await self.consumer.setup()  # a JetStream problem shows at start, not later
        except BaseException:
            await self.stop(0)
            raise
        self._task = asyncio.create_task(self.consumer.run(), name="usage-consumer")
        sweeper = Sweeper(self.db, self._started_deadline_s, on_written=self.spend.touched)
        self._sweeper = asyncio.create_task(sweeper.run(), name="usage-sweeper")
        self._subs.append(await serve_pings(nc, contract.PING_USAGE, "usage", pong))

    async def stop(self, timeout: float) -> None:
        """Stop fetching, commit and ack the batch in progress (for up to
        ``timeout`` seconds; after that it is abandoned un-acked, and
        JetStream redelivers it to another replica), then close."""
        await unsubscribe_all(self._subs)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self.consumer is not None and self._task is not None:
            self.consumer.request_stop()
            done, _pending = await asyncio.wait({self._task}, timeout=timeout)
            if not done:
                log.warning("usage: batch not finished within %.1fs; left to redelivery",
                            timeout)
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self.spend is not None:
            await self.spend.stop()
            self.spend = None
        if self.db is not None:
            await self.db.close()
            self.db = None
