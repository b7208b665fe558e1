"""Usage events: one per finished request, published to the USAGE stream.

Publishing never delays the client: the event is queued after the response
is complete and a background task publishes it to JetStream (async acks,
``Nats-Msg-Id`` = request id, so a retry after a lost ack is dropped by the
stream as a duplicate). Unacknowledged events are retried with backoff until
they are stored; a full queue makes the finished request's task wait (its
client already has the answer) rather than drop the event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from prometheus_client import Counter, Gauge

from gandalf_common import contract
from gandalf_common.contract import UsageEvent, UsageStarted, usage_json_encode
from gandalf_common.errors import GatewayError
from gandalf_common.metrics_hub import REGISTRY
from gandalf_common.pricing import PriceBook
from gandalf_common.usage_stream import ensure_usage_stream

if TYPE_CHECKING:
    from .auth import Identity

log = logging.getLogger("gandalf.usage")

EVENTS = Counter("gandalf_usage_events_total", "Usage events stored in the USAGE stream",
                 registry=REGISTRY)
RETRIES = Counter("gandalf_usage_publish_retries_total", "Usage publishes retried (no ack "
                  "in time, NATS down)", registry=REGISTRY)
QUEUED = Gauge("gandalf_usage_queue_depth", "Usage events waiting to be published",
               registry=REGISTRY)

UNCONFIRMED = Counter("gandalf_usage_unconfirmed_total", "Responses whose last byte went "
                      "out before their usage event was stored (NATS slow or down); the "
                      "event is retried from memory", registry=REGISTRY)
BACKLOG_REFUSALS = Counter("gandalf_usage_backlog_refusals_total", "Requests refused with "
                           "503 because too many usage events wait in memory",
                           registry=REGISTRY)

QUEUE_SIZE = 20_000
#: Above this many events in memory, new requests are refused (503) rather
#: than risk events: a full queue would otherwise stall answered requests.
BACKLOG_LIMIT = 10_000
ACK_TIMEOUT_S = 5.0
MAX_BACKOFF_S = 5.0
#: Longest the last byte of a response waits for its event's ack.
DURABLE_WAIT_S = 2.0


@dataclass(slots=True)
class Outcome:
    """What the relay learned about a request while answering it."""

    status: int = 0
    usage: contract.Usage | None = None
    provider: str = ""
    provider_model: str = ""
    ttft_ms: int | None = None
    error_code: str = ""
    #: Chunks relayed to the client (a disconnect's completion estimate).
    chunks: int = 0
    #: The whole JSON answer of a non-streaming request (for the cache).
    body: bytes | None = None
    #: The answer came from another identical request's upstream call.
    coalesced: bool = False
    #: What the upstream stored (a Responses API id), from the worker's ``End``.
    ref: str = ""


class _Item(NamedTuple):
    """One message for the USAGE stream (a finished or a started event)."""

    subject: str
    msg_id: str
    data: bytes

    @classmethod
    def finished(cls, event: UsageEvent) -> _Item:
        return cls(contract.USAGE_SUBJECT, event.request_id, usage_json_encode(event))

    @classmethod
    def started(cls, event: UsageStarted) -> _Item:
        return cls(contract.USAGE_STARTED_SUBJECT,
                   event.request_id + contract.USAGE_STARTED_MSG_ID_SUFFIX,
                   usage_json_encode(event))


class UsagePublisher:
    def __init__(self, nc: NATS, *, workers: int = 4) -> None:
        self.nc = nc
        self._queue: asyncio.Queue[tuple[_Item, int]] = asyncio.Queue(QUEUE_SIZE)
        self._workers = workers
        self._tasks: list[asyncio.Task[None]] = []
        self._backing_off = 0  # events waiting for their retry timer
        self.backlog_limit = BACKLOG_LIMIT
        self._publishing = 0  # taken off the queue, ack not yet in
        self._js: JetStreamContext | None = None

    async def start(self) -> None:
        await ensure_usage_stream(self.nc)
        self._tasks = [asyncio.create_task(self._run(), name=f"usage-publisher-{i}")
                       for i in range(self._workers)]

    async def record(self, event: UsageEvent) -> None:
        await self._queue.put((_Item.finished(event), 0))
        QUEUED.set(self._queue.qsize())

    @property
    def backlog(self) -> int:
        """Events held in memory, not yet stored in JetStream."""
        return self._queue.qsize() + self._backing_off + self._publishing

    def backlogged(self) -> bool:
        return self.backlog >= self.backlog_limit

    async def record_durably(self, event: UsageEvent, wait: float = DURABLE_WAIT_S) -> bool:
        """Store the event in JetStream before returning: called before a
        response's last byte, so a process that dies after it loses no usage.
        False when NATS did not ack within ``wait``: the event is then retried
        from memory like any other (a duplicate is dropped by its msg id)."""
        return await self._durably(_Item.finished(event), wait)

    async def record_started(self, event: UsageStarted, wait: float = DURABLE_WAIT_S) -> bool:
        """Store a request's started event (awaited before its first response
        byte, see started.py); on failure kept in memory as above."""
        return await self._durably(_Item.started(event), wait)

    async def _durably(self, item: _Item, wait: float) -> bool:
        if self.nc.is_connected:
            try:
                await self._store(item, wait)
                return True
            except asyncio.CancelledError:
                self._backing_off += 1
                self._requeue(item, 0)  # never lose it on the way out
                raise
            except Exception as exc:  # noqa: BLE001 - no ack in time: keep it in memory
                log.warning("usage message %s not stored in time (%s); retrying from memory",
                            item.msg_id, type(exc).__name__)
        UNCONFIRMED.inc()
        await self._queue.put((item, 0))
        QUEUED.set(self._queue.qsize())
        return False

    async def _store(self, item: _Item, timeout: float) -> None:
        """Publish and wait for the stream's ack (the msg id makes a retry
        after a lost ack a duplicate the stream drops)."""
        # One context for the process: each new one subscribes its own ack
        # inbox (a NATS subscription and a task per request, never freed).
        if self._js is None:
            self._js = self.nc.jetstream()
        # One deadline over the stall and the ack: no task per publish
        # (wait_for with a coroutine and a timeout makes one).
        async with asyncio.timeout(timeout):
            ack = await self._js.publish_async(
                item.subject, item.data, headers={"Nats-Msg-Id": item.msg_id})
            await ack
        EVENTS.inc()

    async def _run(self) -> None:
        while True:
            item, attempt = await self._queue.get()
            QUEUED.set(self._queue.qsize())
            self._publishing += 1
            try:
                await self._store(item, ACK_TIMEOUT_S)
            except asyncio.CancelledError:
                self._queue.put_nowait((item, attempt))  # kept for the final drain
                raise
            except Exception as exc:  # noqa: BLE001 - no ack, NATS down, no stream: retry
                RETRIES.inc()
                if attempt == 0 or attempt % 20 == 0:
                    log.warning("usage message %s not stored yet (%s); retrying",
                                item.msg_id, type(exc).__name__)
                self._backing_off += 1
                asyncio.get_running_loop().call_later(
                    min(MAX_BACKOFF_S, 0.1 * 2 ** min(attempt, 6)),
                    self._requeue, item, attempt + 1)
            finally:
                self._publishing -= 1

    def _requeue(self, item: _Item, attempt: int) -> None:
        self._backing_off -= 1
        try:
            self._queue.put_nowait((item, attempt))
        except asyncio.QueueFull:
            task = asyncio.ensure_future(self._queue.put((item, attempt)))
            _PENDING.add(task)
            task.add_done_callback(_PENDING.discard)

    async def stop(self, timeout: float) -> None:
        """Publish what is queued (up to ``timeout``), then stop."""
        deadline = time.monotonic() + timeout
        while self.backlog and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        left = self.backlog
        if left:
            log.error("%d usage events could not be stored before shutdown", left)


_PENDING: set[asyncio.Future[None]] = set()


class UsageRecorder:
    """Builds the event of a finished request and hands it to the publisher
    (``publisher`` None: static mode, nothing is recorded)."""

    def __init__(self, publisher: UsagePublisher | None, prices: PriceBook) -> None:
        self.publisher = publisher
        self.prices = prices

    @property
    def enabled(self) -> bool:
        return self.publisher is not None

    def admit(self) -> None:
        """Refuse new work (503) while too many usage events wait in memory
        (NATS slow or away): better than holding events without bound."""
        if self.publisher is not None and self.publisher.backlogged():
            BACKLOG_REFUSALS.inc()
            raise GatewayError("too many usage events are waiting to be stored; retry shortly",
                               status=503, code="usage_backlog", type="api_error",
                               retry_after=1)

    async def finished(self, *, request_id: str, started: float, identity: Identity,
                       endpoint: str, model: str, stream: bool, status: int,
                       outcome: Outcome | None = None, body_size: int = 0,
                       error: str = "", cached: bool = False) -> None:
        if self.publisher is None:
            return
        out = outcome or Outcome(status=status)
        usage = out.usage
        estimated = False
        if usage is None and status == 499 and out.chunks:
            # The client left mid-stream: the upstream never reported usage.
            # Estimate what was consumed: ~4 bytes of request per prompt token,
            # one token per relayed chunk.
            prompt = max(1, body_size // 4)
            usage = contract.Usage(prompt_tokens=prompt, completion_tokens=out.chunks,
                                   total_tokens=prompt + out.chunks)
            estimated = True
        # A cache hit or a coalesced answer bills nothing: the provider was
        # paid once, by the request whose call it was (tokens still reported).
        cost = 0.0 if cached or out.coalesced else self.prices.cost(
            usage, model, out.provider, out.provider_model)
        event = UsageEvent(
            request_id=request_id, ts=started, org_id=identity.org_id,
            team_id=identity.team_id, key_id=identity.key_id, user_id=identity.user_id,
            auth=identity.auth, endpoint=endpoint, model=model, provider=out.provider,
            provider_model=out.provider_model, status=status, stream=stream, cached=cached,
            coalesced=out.coalesced, prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            cached_tokens=usage.cached_tokens if usage else 0,
            total_tokens=usage.total_tokens if usage else 0, estimated=estimated,
            cost_usd=cost, latency_ms=int((time.time() - started) * 1000),
            ttft_ms=out.ttft_ms, error_class=error or out.error_code)
        # Stored before the response ends (see holdend.py).
        await self.publisher.record_durably(event)
