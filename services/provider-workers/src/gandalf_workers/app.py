"""Composition root of the provider workers: config -> adapters -> queue groups.

Providers come from :class:`~gandalf_common.live.LiveConfig` (the YAML in
static mode, the admin's NATS KV buckets in managed mode) and are followed at
runtime by :class:`~gandalf_workers.pools.LivePools`.
"""

from __future__ import annotations

import logging

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from gandalf_common import contract
from gandalf_common.bus import unsubscribe_all
from gandalf_common.config import GatewayConfig
from gandalf_common.crypto import SecretBox, SecretError
from gandalf_common.live import LiveConfig

from .handlers import ProviderPool
from .pools import LivePools
from .pools import safe_url as safe_url

log = logging.getLogger("gandalf.worker")


class WorkerService:
    """Serves the queue groups of the selected provider instances.

    ``providers``: serve only these ids (all enabled ones when None). In
    static mode an unknown or disabled id is a ``ValueError`` at once; in
    managed mode it is served as soon as it is configured and enabled.

    ``live``: a :class:`LiveConfig` shared with other services of the
    process; its owner (the process runtime) starts and stops it. Without
    one the service builds its own from ``cfg`` (static from the YAML, or
    managed when the deployment has a database) and starts/stops it itself.
    """

    def __init__(self, cfg: GatewayConfig, providers: list[str] | None = None,
                 live: LiveConfig | None = None) -> None:
        self.cfg = cfg
        self._owns_live = live is None
        self.live = LiveConfig(cfg) if live is None else live
        wanted = set(providers) if providers else None
        if wanted and not self.live.managed:
            enabled = {name for name, p in self.live.providers.items() if p.enabled}
            missing = wanted - enabled
            if missing:
                raise ValueError(f"unknown or disabled provider(s): {', '.join(sorted(missing))}")
        box: SecretBox | None = None
        if self.live.managed:
            try:
                box = SecretBox.from_env()
            except SecretError as exc:  # providers with secrets are skipped, logged
                log.error("worker: %s; providers with secrets cannot be served", exc)
        self._pools = LivePools(self.live, wanted=wanted, box=box,
                                drain_timeout=cfg.server.shutdown_timeout)
        self._subs: list[Subscription] = []

    @property
    def pools(self) -> dict[str, ProviderPool]:
        """Provider id -> the pool taking its new requests."""
        return {ident: served.pool for ident, served in self._pools.served.items()}

    async def start(self, nc: NATS) -> None:
        if self._owns_live:
            await self.live.start(nc)
        # Before the pools: a cancel must find every call (pools may come later).
        self._subs.append(await nc.subscribe(contract.CANCEL, cb=self._on_cancel))
        await self._pools.start(nc)

    async def settled(self) -> None:
        """Returns once every configuration change seen so far is applied."""
        await self._pools.settled()

    async def _on_cancel(self, msg: Msg) -> None:
        for pool in self._pools.pools():  # retiring pools too: their calls still run
            await pool.on_cancel(msg)

    def inflight(self) -> int:
        return sum(len(p.inflight) for p in self._pools.pools())

    async def stop(self, timeout: float) -> None:
        """Stop taking work, let in-flight calls finish up to ``timeout``."""
        await self._pools.stop(timeout)
        # Last: a client that leaves while its call drains still cancels it.
        await unsubscribe_all(self._subs)
        if self._owns_live:
            await self.live.stop()
