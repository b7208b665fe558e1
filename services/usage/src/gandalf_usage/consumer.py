"""The pull loop over the USAGE stream's durable consumer.

Fetch a batch, decode it (malformed messages are terminated), commit it in
one transaction, and only then ack it. A failed commit is retried with
backoff for as long as it takes (the messages stay un-acked in JetStream;
``in_progress`` keeps JetStream from handing them to another replica in the
meantime); a crash between commit and ack means a redelivery, which the
writer turns into "already stored". Every replica binds the same durable,
so JetStream gives each message to one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncpg
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from gandalf_common.contract import (
    USAGE_DURABLE,
    USAGE_STARTED_SUBJECT,
    USAGE_STREAM,
    USAGE_SUBJECTS,
    UsageEvent,
    UsageStarted,
)
from gandalf_common.usage_stream import ensure_usage_stream

from . import metrics
from .db import UsageDatabase
from .events import MalformedEventError, decode_event, decode_started
from .writer import WriteResult

log = logging.getLogger("gandalf.usage")

#: The database refused these values: retrying the same event cannot help.
REJECT_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)

#: Called with the messages of a committed batch before they are acked
#: (tests use it to simulate a crash between commit and ack).
AfterCommit = Callable[[Sequence[Msg]], Awaitable[None]]
OnWritten = Callable[[WriteResult], None]
#: A finished request, or an admitted one (its started event, pending.py).
Event = UsageEvent | UsageStarted


@dataclass(frozen=True, slots=True)
class ConsumerOptions:
    batch_size: int = 500
    #: Longest wait for a batch to fill (the latency a lone event can get).
    max_wait_s: float = 0.25
    #: Un-acked messages are redelivered after this long: the delay a dead
    #: replica's batch adds. A live replica holds its batch with in_progress
    #: every third of it, however long the write takes.
    ack_wait_s: float = 5.0
    #: Messages delivered and not yet acked, over every replica.
    max_ack_pending: int = 10_000
    max_backoff_s: float = 10.0
    #: While idle, look at the durable this often: it refreshes the lag gauge
    #: and notices a deleted consumer or stream (a pull on a missing consumer
    #: just times out, like an empty one).
    idle_check_s: float = 5.0


def consumer_config(options: ConsumerOptions) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=USAGE_DURABLE, name=USAGE_DURABLE, ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL, ack_wait=options.ack_wait_s,
        # Never give up on a message: billing data is only dropped on purpose (term).
        max_deliver=-1, max_ack_pending=options.max_ack_pending,
        filter_subject=USAGE_SUBJECTS)


class UsageConsumer:
    def __init__(self, nc: NATS, db: UsageDatabase, *, options: ConsumerOptions | None = None,
                 on_written: OnWritten | None = None,
                 after_commit: AfterCommit | None = None) -> None:
        self.nc = nc
        self.db = db
        self.options = options or ConsumerOptions()
        self._on_written = on_written
        self._after_commit = after_commit
        self._psub: JetStreamContext.PullSubscription | None = None
        self._stopping = False
        self._db_failing_since: float | None = None
        self._nats_failing = False
        self._last_check = time.monotonic()

    async def setup(self) -> None:
        """The stream and the durable (created, or brought to this config), then bind."""
        await ensure_usage_stream(self.nc)
        js = self.nc.jetstream()
        # add_consumer creates, or updates a durable whose config drifted.
        await js.add_consumer(USAGE_STREAM, config=consumer_config(self.options))
        self._psub = await js.pull_subscribe_bind(durable=USAGE_DURABLE, stream=USAGE_STREAM)

    def request_stop(self) -> None:
        """Stop fetching; the batch in progress is still committed and acked."""
        self._stopping = True

    async def run(self) -> None:
        try:
            while not self._stopping:
                msgs = await self._fetch()
                if not msgs:
                    continue
                try:
                    await self._handle(msgs)
                except Exception:  # a bug must not stop billing for good
                    # Un-acked messages come back after ack_wait; rebind to
                    # drop anything buffered for this subscription.
                    log.exception("usage: batch failed; its messages will be redelivered")
                    await self._unbind()
                    await asyncio.sleep(1.0)
        finally:
            # The acks are fire-and-forget publishes: make sure they left.
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=1)
            await self._unbind()

    # ------------------------------------------------------------- fetch

    async def _fetch(self) -> list[Msg]:
        try:
            if self._psub is None:
                await self.setup()
            assert self._psub is not None
            msgs = await self._psub.fetch(self.options.batch_size,
                                          timeout=self.options.max_wait_s)
        except TimeoutError:
            # Nothing to do (or NATS is away: the client reconnects by itself).
            await self._idle_check()
            return []
        except Exception as exc:  # noqa: BLE001 - the loop must survive anything NATS does
            if self.nc.is_closed:
                log.warning("usage consumer: NATS connection closed; stopping")
                self._stopping = True
                return []
            if not self._nats_failing:
                log.warning("usage consumer: cannot fetch (%r); retrying", exc)
                self._nats_failing = True
            # Rebind from scratch: the stream or the consumer may be gone.
            await self._unbind()
            await asyncio.sleep(1.0)
            return []
        if self._nats_failing:
            log.info("usage consumer: fetching again")
            self._nats_failing = False
        return msgs

    async def _idle_check(self) -> None:
        now = time.monotonic()
        if now - self._last_check < self.options.idle_check_s or not self.nc.is_connected:
            return
        self._last_check = now
        try:
            info = await self.nc.jetstream().consumer_info(USAGE_STREAM, USAGE_DURABLE)
        except NotFoundError:
            log.warning("usage consumer: the durable or the stream is gone; recreating")
            await self._unbind()  # the next fetch sets everything up again
            return
        except Exception:  # noqa: BLE001 - NATS trouble shows in the fetches
            return
        metrics.PENDING.set(info.num_pending)

    async def _unbind(self) -> None:
        psub, self._psub = self._psub, None
        if psub is not None:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    # ------------------------------------------------------------ batches

    async def _handle(self, msgs: list[Msg]) -> None:
        started = time.monotonic()
        events: list[Event] = []
        good: list[Msg] = []
        for msg in msgs:
            meta = msg.metadata
            if meta.num_delivered > 1:
                metrics.REDELIVERIES.inc()
            try:
                events.append(decode_started(msg.data) if msg.subject == USAGE_STARTED_SUBJECT
                              else decode_event(msg.data))
            except MalformedEventError as exc:
                metrics.DECODE_FAILURES.inc()
                log.warning("usage: terminating malformed message (stream seq %s): %s",
                            meta.sequence.stream, exc)
                await _settle(msg.term)
                continue
            good.append(msg)
        metrics.PENDING.set(msgs[-1].metadata.num_pending)
        if not events:
            return
        result, accepted = await self._commit(events, good)
        if self._after_commit is not None:
            await self._after_commit(accepted)
        for msg in accepted:
            await _settle(msg.ack)
        metrics.BATCHES.inc()
        metrics.WRITTEN.inc(result.inserted)
        metrics.DUPLICATES.inc(result.duplicates)
        metrics.LAST_WRITE.set(time.time())
        metrics.BATCH_SECONDS.observe(time.monotonic() - started)
        if self._on_written is not None and result.inserted:
            self._on_written(result)

    async def _commit(self, events: list[Event], msgs: list[Msg]
                      ) -> tuple[WriteResult, list[Msg]]:
        """Commit the batch; return what was written and the messages to ack."""
        try:
            return await self._write_retrying(events, msgs), msgs
        except REJECT_ERRORS as exc:
            log.warning("usage: the database refused a batch (%r); writing its %d events "
                        "one by one", exc, len(events))
        # Find the event(s) the database refuses; the rest are written as usual.
        result = WriteResult()
        accepted: list[Msg] = []
        for event, msg in zip(events, msgs, strict=True):
            try:
                result.merge(await self._write_retrying([event], [msg]))
            except REJECT_ERRORS as exc:
                metrics.REJECTED.inc()
                # Still in the stream (kept for its retention period) for a replay.
                log.error("usage: terminating request %s (stream seq %s): the database "
                          "refuses it: %r", event.request_id, msg.metadata.sequence.stream, exc)
                await _settle(msg.term)
                continue
            accepted.append(msg)
        return result, accepted

    async def _write_retrying(self, events: list[Event], msgs: list[Msg]) -> WriteResult:
        """Write until it works (or the database refuses the values)."""
        keepalive = asyncio.create_task(_hold(msgs, self.options.ack_wait_s / 3))
        try:
            return await self._write_until_it_works(events)
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive

    async def _write_until_it_works(self, events: list[Event]) -> WriteResult:
        delay = 0.1
        finished = [e for e in events if isinstance(e, UsageEvent)]
        started = [e for e in events if isinstance(e, UsageStarted)]
        while True:
            try:
                result = await self.db.write(finished, started)
            except REJECT_ERRORS:
                raise
            except Exception as exc:  # noqa: BLE001 - any other failure: wait and retry
                metrics.DB_FAILURES.inc()
                if self._db_failing_since is None:
                    self._db_failing_since = time.monotonic()
                    log.warning("usage: cannot write to the database (%r); events wait in "
                                "JetStream, retrying with backoff", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.options.max_backoff_s)
                continue
            if self._db_failing_since is not None:
                log.info("usage: database writes work again (after %.1fs)",
                         time.monotonic() - self._db_failing_since)
                self._db_failing_since = None
            return result


async def _hold(msgs: list[Msg], every: float) -> None:
    """Tell JetStream the batch is still being worked on, well before
    ack_wait runs out, for as long as its write takes (slow or failing)."""
    while True:
        await asyncio.sleep(every)
        for msg in msgs:
            await _settle(msg.in_progress)


async def _settle(action: Callable[[], Awaitable[None]]) -> None:
    """ack/term/in_progress: a failure only means JetStream redelivers later,
    which the writer absorbs, so it is logged and not raised."""
    try:
        await action()
    except Exception as exc:  # noqa: BLE001
        log.debug("usage: cannot settle a message: %r", exc)
