"""Composition root of the provider workers: config -> adapters -> queue groups."""

from __future__ import annotations

import asyncio
import logging
import os
from urllib.parse import urlsplit

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from gandalf_common import contract
from gandalf_common.bus import BodyStore, serve_pings, unsubscribe_all
from gandalf_common.config import GatewayConfig
from gandalf_common.contract import Pong, encode

from .handlers import ProviderPool
from .providers.registry import build_provider

log = logging.getLogger("gandalf.worker")

def safe_url(url: str) -> str:
    """The URL without credentials or query (some put keys there)."""
    parsed = urlsplit(url)
    host = parsed.hostname or ""
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{host}{port}{parsed.path}"


class WorkerService:
    """Serves the queue groups of the selected provider instances."""

    def __init__(self, cfg: GatewayConfig, providers: list[str] | None = None) -> None:
        self.cfg = cfg
        wanted = set(providers) if providers else None
        self.providers = [p for p in cfg.providers
                          if p.enabled and (wanted is None or p.name in wanted)]
        if wanted:
            missing = wanted - {p.name for p in self.providers}
            if missing:
                raise ValueError(f"unknown or disabled provider(s): {', '.join(sorted(missing))}")
        self.pools: dict[str, ProviderPool] = {}
        self._subs: list[Subscription] = []

    async def start(self, nc: NATS) -> None:
        bodies = BodyStore(nc)
        for pcfg in self.providers:
            pool = ProviderPool(nc, build_provider(pcfg),
                                max_concurrency=pcfg.max_concurrency,
                                ttfb_timeout=pcfg.timeout_ms / 1000, bodies=bodies,
                                provider_type=pcfg.type)
            self.pools[pcfg.name] = pool
            queue = contract.provider_queue(pcfg.name)
            self._subs.append(await nc.subscribe(
                contract.provider_wildcard(pcfg.name), queue=queue, cb=pool.on_exec,
                pending_msgs_limit=65536, pending_bytes_limit=256 * 1024 * 1024))
            pong = encode(Pong(service="worker", instance=pcfg.name, pid=os.getpid()))
            self._subs.append(await serve_pings(nc, contract.ping_provider(pcfg.name), queue,
                                                pong))
            log.info("worker serving provider %s (%s) at %s", pcfg.name, pcfg.type,
                     safe_url(pcfg.base_url))
        if self.pools:
            self._subs.append(await nc.subscribe(contract.CANCEL, cb=self._on_cancel))

    async def _on_cancel(self, msg: Msg) -> None:
        for pool in self.pools.values():
            await pool.on_cancel(msg)

    def inflight(self) -> int:
        return sum(len(p.inflight) for p in self.pools.values())

    async def stop(self, timeout: float) -> None:
        """Stop taking work, let in-flight calls finish up to ``timeout``."""
        await unsubscribe_all(self._subs)
        tasks = [t for p in self.pools.values() for _, t in p.inflight.values()]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
        for pool in self.pools.values():
            await pool.provider.aclose()
