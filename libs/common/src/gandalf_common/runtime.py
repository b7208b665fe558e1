"""Run one or more services in one process: one NATS connection, signal
handling, and an orderly drain (HTTP edge first, then the bus services)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable
from typing import Any, Protocol, TypeVar

from nats.aio.client import Client as NATS

from .bus import connect
from .startup import NotReadyError, waiting_on

T = TypeVar("T")

log = logging.getLogger("gandalf")


class BusService(Protocol):
    """A service that lives on the bus (router, workers, usage, admin)."""

    async def start(self, nc: NATS) -> None: ...

    async def stop(self, timeout: float) -> None: ...


class HttpService(Protocol):
    """The HTTP edge: ``serve`` returns once it has stopped and drained."""

    async def serve(self, nc: NATS, stop: asyncio.Event) -> None: ...


def configure_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # nats-py logs every reconnect attempt at error level; ours are enough.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    logging.getLogger("httpx").setLevel(logging.WARNING)


async def run_services(nats_url: str, name: str, services: list[BusService],
                       http: HttpService | None = None, *, shutdown_timeout: float = 30.0,
                       ready: asyncio.Event | None = None) -> None:
    """Connect, start ``services`` in order, serve until SIGTERM/SIGINT, drain.

    A signal during startup (NATS or PostgreSQL not reachable yet) ends the
    wait at once and raises :class:`NotReadyError` naming what it waited for.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        nc = await _unless_stopped(connect(nats_url, name), stop)
        if nc is None:
            raise NotReadyError(_not_ready(name))
        started: list[BusService] = []
        try:
            for service in services:
                if await _unless_stopped(service.start(nc), stop, default=False) is False:
                    await asyncio.gather(*(_timed_stop(s, shutdown_timeout) for s in started))
                    raise NotReadyError(_not_ready(name))
                started.append(service)
            if ready is not None:
                ready.set()
            if http is not None:
                await http.serve(nc, stop)
            else:
                await stop.wait()
            log.info("%s: draining (up to %.0fs)", name, shutdown_timeout)
            await asyncio.gather(*(_timed_stop(s, shutdown_timeout) for s in started))
        finally:
            try:
                await asyncio.wait_for(nc.drain(), timeout=5)
            except Exception:  # noqa: BLE001 - closing anyway
                await nc.close()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _not_ready(name: str) -> str:
    what = waiting_on()
    return "stopped before it was ready" + (f": {what}" if what else f" ({name} starting)")


async def _unless_stopped(work: Awaitable[T], stop: asyncio.Event,
                          default: T | None = None) -> T | None:
    """``await work``, unless ``stop`` is set first: then cancel it and return
    ``default``. A failure of ``work`` raises here."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return default


async def _timed_stop(service: BusService, timeout: float) -> None:
    started = time.monotonic()
    try:
        # The service bounds its own drain; this bounds a service that does not.
        await asyncio.wait_for(service.stop(timeout), timeout + 1.0)
    except TimeoutError:
        log.warning("%s did not drain within %.0fs; leaving it", type(service).__name__, timeout)
        return
    took = time.monotonic() - started
    if took > 1:
        log.warning("%s took %.1fs to drain", type(service).__name__, took)


def install_uvloop() -> Any:
    """uvloop when available: it roughly halves the event loop's overhead."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run
