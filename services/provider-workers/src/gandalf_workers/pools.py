"""Provider pools that follow the live configuration.

One :class:`~gandalf_workers.handlers.ProviderPool` per served provider id,
each subscribed to its queue group and ping subject. Changes from
:class:`~gandalf_common.live.LiveConfig` are applied one at a time, in order,
by a single task (listeners are synchronous; they only enqueue the id):

- added or enabled: build the adapter (secrets decrypted here, in the
  worker, and nowhere else) and subscribe;
- updated (any field): subscribe the new pool first, then drain the old
  subscriptions (the queue group always has a member, so the router never
  sees "no responders"), then let the old pool's in-flight calls finish
  (bounded by the drain timeout) and close its adapter;
- removed or disabled: drain the subscriptions, the in-flight calls, close.

A provider whose configuration cannot be built (a secret sealed with another
key, an unsupported type or hosting) is logged without its secrets and
skipped; an update that cannot be built keeps the previous pool serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from gandalf_common import contract
from gandalf_common.bus import BodyStore, serve_pings
from gandalf_common.config import (
    DEFAULT_AZURE_API_VERSION,
    CircuitBreakerConfig,
    ProviderConfig,
    RetriesConfig,
)
from gandalf_common.contract import Pong, encode
from gandalf_common.crypto import SecretBox, SecretError
from gandalf_common.endpoints import endpoint_problem
from gandalf_common.live import LiveConfig
from gandalf_common.records import ProviderRecord

from .breaker import CircuitBreaker
from .handlers import ProviderPool
from .providers.registry import build_provider
from .retry import RetryBudget, RetryPolicy
from .siblings import Siblings

log = logging.getLogger("gandalf.worker")

#: Which provider types each hosting can carry (as the YAML loader checks).
_HOSTED_TYPES = {"": tuple(contract.PROVIDER_OPS), "azure": ("openai",),
                 "vertex": ("anthropic", "gemini"), "bedrock": ("anthropic",)}
#: Seconds to wait for a subscription to drain, or for a flush.
_BUS_TIMEOUT = 5.0


def safe_url(url: str) -> str:
    """The URL without credentials or query (some put keys there)."""
    parsed = urlsplit(url)
    host = parsed.hostname or ""
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{host}{port}{parsed.path}"


def runnable(cfg: ProviderConfig) -> ProviderConfig:
    """``cfg`` with the loader's defaults; ``ValueError`` when no adapter fits.

    YAML providers went through the loader already (a no-op for them); KV
    records are written by the admin service, checked again here because a
    worker must never crash on a record it cannot run.
    """
    if cfg.type not in contract.PROVIDER_OPS:
        raise ValueError(f"unsupported provider type {cfg.type!r}")
    problem = endpoint_problem(cfg)
    if problem is not None:
        raise ValueError(problem)
    if cfg.type not in _HOSTED_TYPES.get(cfg.hosting, ()):
        raise ValueError(f"unsupported hosting {cfg.hosting!r} for type {cfg.type!r}")
    return msgspec.structs.replace(
        cfg, max_concurrency=cfg.max_concurrency or 256, timeout_ms=cfg.timeout_ms or 60000,
        api_version=cfg.api_version or (DEFAULT_AZURE_API_VERSION
                                        if cfg.hosting == "azure" else ""))


def _reason(exc: Exception) -> str:
    """Why a provider could not be built, never quoting a secret: our own
    messages say what is wrong; anything else is named by its type only."""
    if isinstance(exc, SecretError | ValueError) and not isinstance(
            exc, msgspec.DecodeError):
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__


def make_breaker(cfg: CircuitBreakerConfig) -> CircuitBreaker | None:
    """One breaker per provider instance and worker (None: disabled)."""
    if not cfg.enabled:
        return None
    return CircuitBreaker(window_seconds=cfg.window_seconds or 60,
                          min_samples=cfg.min_samples or 10,
                          threshold=cfg.error_threshold or 0.30,
                          open_timeout=cfg.open_timeout or 30.0)


def retries(cfg: RetriesConfig) -> dict[str, Any]:
    """A retry policy and a retry budget per provider instance (none: 1 attempt)."""
    if cfg.max_attempts <= 1:
        return {}
    return {"retry_policy": RetryPolicy(base=cfg.base, cap=cfg.cap,
                                        max_attempts=cfg.max_attempts),
            "retry_budget": RetryBudget(ratio=cfg.budget_ratio,
                                        min_per_s=cfg.budget_min_per_s)}


@dataclass(eq=False)
class Served:
    """One generation of a provider's pool: what it was built from, and the
    subscriptions that feed it."""

    record: ProviderRecord
    pool: ProviderPool
    subs: list[Subscription] = field(default_factory=list)


class LivePools:
    """The pools of the providers this worker serves, kept current."""

    def __init__(self, live: LiveConfig, *, wanted: set[str] | None, box: SecretBox | None,
                 drain_timeout: float) -> None:
        self.live = live
        self.wanted = wanted
        self.box = box
        self.drain_timeout = drain_timeout
        #: provider id -> the generation taking new requests.
        self.served: dict[str, Served] = {}
        #: Older generations finishing their in-flight calls.
        self.retiring: set[ProviderPool] = set()
        self._finishing: set[asyncio.Task[None]] = set()
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._applier: asyncio.Task[None] | None = None
        self._nc: NATS | None = None
        self._bodies: BodyStore | None = None
        self._stopped = False
        self.siblings = Siblings(lambda: [s.pool for s in self.served.values()])

    # ------------------------------------------------------------ lifecycle

    async def start(self, nc: NATS) -> None:
        """Serve every wanted, enabled provider; then follow changes."""
        self._nc = nc
        self._bodies = BodyStore(nc)
        await self.siblings.start(nc)
        self.live.on_change(self._on_change)
        for ident in list(self.live.providers):
            await self._reconcile(ident)
        if self.wanted:
            for ident in sorted(self.wanted - set(self.served)):
                log.warning("worker: provider %s is not configured (or disabled) yet; it "
                            "will be served once it is", ident)
        await self._flush()
        self._applier = asyncio.create_task(self._apply_changes(), name="worker-pools")

    def _on_change(self, kind: str, ident: str, _record: object) -> None:
        if kind == "provider" and not self._stopped:
            self._queue.put_nowait(ident)

    async def settled(self) -> None:
        """Returns once every change notified so far has been applied."""
        await self._queue.join()

    def pools(self) -> list[ProviderPool]:
        """Every pool with calls that may be running: serving and retiring."""
        return [s.pool for s in self.served.values()] + list(self.retiring)

    async def stop(self, timeout: float) -> None:
        """Stop taking work, let in-flight calls finish up to ``timeout``."""
        self._stopped = True
        if self._applier is not None:
            self._applier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._applier
        await self.siblings.stop()
        for served in self.served.values():
            await self.siblings.announce(served.pool, leaving=True)
            for sub in served.subs:
                with contextlib.suppress(Exception):  # the connection may be gone
                    await sub.unsubscribe()
            served.subs.clear()
        finishing = list(self._finishing)
        for task in finishing:  # their pools stay in ``retiring``: waited for below
            task.cancel()
        await asyncio.gather(*finishing, return_exceptions=True)
        pools = self.pools()
        self.served.clear()
        self.retiring.clear()
        await _finish_calls(pools, timeout)
        for pool in pools:
            await pool.provider.aclose()

    # -------------------------------------------------------------- changes

    async def _apply_changes(self) -> None:
        while True:
            ident = await self._queue.get()
            try:
                await self._reconcile(ident)
            except Exception:
                log.exception("worker: applying the change of provider %s failed", ident)
            finally:
                self._queue.task_done()

    async def _reconcile(self, ident: str) -> None:
        """Make what is served for ``ident`` match the live record."""
        record = self.live.providers.get(ident)
        current = self.served.get(ident)
        wanted = (record is not None and record.enabled
                  and (self.wanted is None or ident in self.wanted))
        if record is None or not wanted:
            if current is not None:
                del self.served[ident]
                log.info("worker: provider %s %s; draining its pool", ident,
                         "removed" if record is None else "disabled")
                await self._retire(current)
            return
        if current is not None and current.record == record:
            return  # nothing changed (or a duplicate notification)
        fresh = await self._open(ident, record)
        if fresh is None:
            if current is not None:
                log.warning("worker: provider %s keeps its previous configuration", ident)
            return
        # The new pool is subscribed: only now may the old one stop taking work.
        self.served[ident] = fresh
        if current is not None:
            log.info("worker: provider %s reconfigured; draining the previous pool", ident)
            await self._retire(current)
        elif self._applier is not None:
            await self._flush()  # subscribed at the server before we say so

    async def _open(self, ident: str, record: ProviderRecord) -> Served | None:
        """Build and subscribe one pool; ``None`` (logged) when it cannot be."""
        nc, bodies = self._nc, self._bodies
        assert nc is not None and bodies is not None
        try:
            # Synchronous right after reading ``record``: the same version.
            pcfg = self.live.provider_config(ident, self.box)
            if pcfg is None:
                return None
            pcfg = runnable(pcfg)
            provider = build_provider(pcfg, self.live.cfg.security)
        except Exception as exc:  # noqa: BLE001 - logged without secrets, skipped
            log.error("worker: provider %s skipped: cannot build it (%s)", ident,
                      _reason(exc))
            return None
        pool = ProviderPool(nc, provider, max_concurrency=pcfg.max_concurrency,
                            ttfb_timeout=pcfg.timeout_ms / 1000, bodies=bodies,
                            provider_type=pcfg.type,
                            breaker=make_breaker(self.live.cfg.circuit_breaker),
                            max_rps=pcfg.max_rps, **retries(self.live.cfg.retries))
        served = Served(record, pool)
        queue = contract.provider_queue(ident)
        pong = encode(Pong(service="worker", instance=ident, pid=os.getpid()))
        try:
            served.subs.append(await nc.subscribe(
                contract.provider_wildcard(ident), queue=queue, cb=pool.on_exec,
                pending_msgs_limit=65536, pending_bytes_limit=256 * 1024 * 1024))
            served.subs.append(await serve_pings(nc, contract.ping_provider(ident), queue,
                                                 pong))
            # This pool's own subject: coalescable requests whose key it owns.
            served.subs.append(await nc.subscribe(
                contract.worker_wildcard(pool.worker_id, ident), cb=pool.on_exec,
                pending_msgs_limit=65536, pending_bytes_limit=256 * 1024 * 1024))
        except Exception as exc:  # noqa: BLE001 - e.g. the connection is closing
            log.error("worker: provider %s: cannot subscribe (%s)", ident,
                      type(exc).__name__)
            for sub in served.subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            await provider.aclose()
            return None
        log.info("worker serving provider %s (%s) at %s", ident, pcfg.type,
                 safe_url(pcfg.base_url))
        await self.siblings.announce(pool)
        return served

    async def _retire(self, served: Served) -> None:
        """Stop feeding ``served`` (messages already delivered are still
        handled), then finish its calls and close it in the background so
        the next change need not wait for long streams."""
        self.retiring.add(served.pool)
        await self.siblings.announce(served.pool, leaving=True)
        for sub in served.subs:
            await _drain(sub)
        served.subs.clear()
        task = asyncio.create_task(self._finish(served.pool),
                                   name=f"worker-retire-{served.record.id}")
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _finish(self, pool: ProviderPool) -> None:
        await _finish_calls([pool], self.drain_timeout)
        await pool.provider.aclose()
        self.retiring.discard(pool)  # only now: a stop() meanwhile closes it instead

    async def _flush(self) -> None:
        if self._nc is None:
            return
        with contextlib.suppress(Exception):  # reconnecting: the SUBs follow
            # nats-py annotates int seconds; it waits for the float it is given.
            await self._nc.flush(timeout=_BUS_TIMEOUT)  # type: ignore[arg-type]


async def _drain(sub: Subscription) -> None:
    """Unsubscribe, but handle the messages already delivered to ``sub``."""
    try:
        await asyncio.wait_for(sub.drain(), _BUS_TIMEOUT)  # type: ignore[no-untyped-call]
    except Exception:  # noqa: BLE001 - closed connection or slow server: drop interest
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _finish_calls(pools: list[ProviderPool], timeout: float) -> None:
    """Wait for the pools' in-flight calls up to ``timeout``, cancel the rest."""
    tasks = [t for p in pools for _, t in p.inflight.values()]
    if not tasks:
        return
    _done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:  # let them unwind (close their upstream streams) before aclose
        await asyncio.wait(pending, timeout=1.0)
