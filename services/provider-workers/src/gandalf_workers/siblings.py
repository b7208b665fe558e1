"""What the worker pools of one process tell, and hear from, the other
workers of the same provider instances.

- Presence: every serving pool announces itself on
  ``gandalf.presence.<instance>`` every ``PRESENCE_INTERVAL`` seconds (at
  once when it starts or when a router says hello, and a last time when it
  leaves). Routers use it to send a coalescable request to the owner of its
  key; pools use the count of live workers to split ``max_rps``.
- Breaker: a transition published by a sibling on ``gandalf.health.<instance>``
  is adopted by this process's pool of that instance, so all replicas of an
  instance open together and close together (see ``ProviderPool.adopt``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from gandalf_common import contract
from gandalf_common.contract import Presence, encode, health_decoder, presence_decoder
from gandalf_common.presence import Membership

from .handlers import ProviderPool

log = logging.getLogger("gandalf.worker")


class Siblings:
    def __init__(self, pools: Callable[[], Iterable[ProviderPool]]) -> None:
        #: The pools taking new requests (retiring ones do not announce).
        self._pools = pools
        self._nc: NATS | None = None
        self._subs: list[Subscription] = []
        self._beat: asyncio.Task[None] | None = None
        #: The live workers of every instance, this process's own included.
        self.members = Membership()

    async def start(self, nc: NATS) -> None:
        self._nc = nc
        self._subs = [
            await nc.subscribe(contract.PRESENCE_WILDCARD, cb=self._on_presence),
            await nc.subscribe(contract.HEALTH_WILDCARD, cb=self._on_health),
            await nc.subscribe(contract.PRESENCE_HELLO, cb=self._on_hello),
        ]
        self._beat = asyncio.create_task(self._heartbeats(), name="worker-presence")

    async def stop(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()

    async def announce(self, pool: ProviderPool, *, leaving: bool = False) -> None:
        if self._nc is None:
            return
        with contextlib.suppress(Exception):  # reconnecting: the next beat will do
            await self._nc.publish(contract.presence_subject(pool.provider.name), encode(
                Presence(instance=pool.provider.name, worker=pool.worker_id,
                         leaving=leaving)))

    async def _heartbeats(self) -> None:
        while True:
            await self._on_hello(None)
            self._recount()
            await asyncio.sleep(contract.PRESENCE_INTERVAL)

    async def _on_hello(self, _msg: Msg | None) -> None:
        for pool in list(self._pools()):
            await self.announce(pool)

    async def _on_presence(self, msg: Msg) -> None:
        presence = presence_decoder.decode(msg.data)
        if self.members.heard(presence):
            self._recount(presence.instance)

    def _recount(self, only: str | None = None) -> None:
        """Give each pool its share of ``max_rps`` (expired workers drop out)."""
        for instance in [only] if only is not None else self.members.instances():
            count = len(self.members.live(instance))
            for pool in self._pools():
                if pool.provider.name == instance:
                    pool.set_workers(count)

    async def _on_health(self, msg: Msg) -> None:
        health = health_decoder.decode(msg.data)
        for pool in list(self._pools()):
            if pool.provider.name == health.instance:
                pool.adopt(health)
