"""Run one or more services in one process: one NATS connection, signal
handling, and an orderly drain (HTTP edge first, then the bus services)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any, Protocol

from nats.aio.client import Client as NATS

from .bus import connect

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
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    nc = await connect(nats_url, name)
    started: list[BusService] = []
    try:
        for service in services:
            if not await _start_unless_stopped(service, nc, stop):
                break
            started.append(service)
        else:
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
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _start_unless_stopped(service: BusService, nc: NATS, stop: asyncio.Event) -> bool:
    """Start a service; a stop signal during a slow start (e.g. waiting for
    the configuration buckets) abandons it instead of hanging."""
    starting = asyncio.ensure_future(service.start(nc))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if starting.done():
        starting.result()  # a failed start raises here
        return True
    starting.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await starting
    return False


async def _timed_stop(service: BusService, timeout: float) -> None:
    started = time.monotonic()
    await service.stop(timeout)
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
