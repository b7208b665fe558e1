"""``gandalf usage replay``: rebuild (or check) billing from the USAGE stream.

The stream keeps every :class:`~gandalf_common.contract.UsageEvent` for its
retention (30 days), so Postgres can be repaired from it:

- **replay** reads a window of the stream with an ephemeral consumer, drops
  duplicate request ids, inserts the raw rows (``ON CONFLICT (request_id) DO
  NOTHING``) and rebuilds, from the raw rows, every rollup bucket the window
  touches: its rows are deleted and the ``GROUP BY`` aggregates re-inserted,
  in one transaction. Running it twice changes nothing.
- **verify** (:mod:`.verify`) writes nothing: it checks the window's events
  against the raw rows and the rollups against the raw rows.

Window: ``--from`` and ``--to`` are a stream sequence (digits) or an RFC 3339
time; ``--to`` is exclusive and defaults to the end of the stream. A time
bound applies to the event's ``ts`` (when the request arrived), not to when
it was published: the consumer starts a little before ``--from`` and, with
a time ``--to``, reads until an event starts ``max_latency`` after it (a
request is published when it ends, so later messages can still belong to
the window).

Clock skew between the ingress hosts and the NATS server is assumed small.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any, Final, TextIO

import asyncpg
import msgspec
from msgspec import Meta
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from gandalf_common.contract import USAGE_STARTED_SUBJECT, USAGE_STREAM, UsageEvent

from .events import MalformedEventError, decode_event
from .writer import ROLLUP_LOCK_ID, write_batch

#: How much earlier than ``--from`` a time-started consumer begins (clock skew).
START_SKEW: Final = timedelta(seconds=60)
#: How long a request may run between arriving (``ts``) and being published.
DEFAULT_MAX_LATENCY: Final = timedelta(minutes=10)
PERIODS: Final = ("hourly", "daily")
STEP: Final = {"hourly": timedelta(hours=1), "daily": timedelta(days=1)}
_CENT_FRACTION = Decimal("0.00000001")  # numeric(18, 8)
_FETCH_BATCH = 500
_FETCH_TIMEOUT = 2.0
_INSERT_BATCH = 1000

_Instant = Annotated[datetime, Meta(tz=True)]
_SPACED_OFFSET = re.compile(r"^(?P<head>.*\d) (?P<offset>\d{2}:?\d{2})$")


class ReplayError(Exception):
    """A mistake the operator can fix (bad window, missing stream...)."""


# --------------------------------------------------------------------- window


def parse_time(text: str, name: str) -> datetime:
    """An RFC 3339 time with an offset, as UTC."""
    raw = text.strip()
    m = _SPACED_OFFSET.match(raw)  # "+05:30" that went through a shell/URL as " 05:30"
    if m:
        raw = f"{m.group('head')}+{m.group('offset')}"
    try:
        return msgspec.convert(raw, _Instant).astimezone(UTC)
    except msgspec.ValidationError:
        raise ReplayError(f"{name}: {text!r} is not an RFC 3339 time with an offset "
                          "(e.g. 2026-03-01T10:00:00Z)") from None


@dataclass(frozen=True, slots=True)
class Bound:
    """One edge of the window: a stream sequence or a time."""

    seq: int | None = None
    time: datetime | None = None

    @classmethod
    def parse(cls, text: str, name: str) -> Bound:
        if text.strip().isdigit():
            seq = int(text)
            if seq < 1:
                raise ReplayError(f"{name}: stream sequences start at 1")
            return cls(seq=seq)
        return cls(time=parse_time(text, name))

    def __str__(self) -> str:
        return f"sequence {self.seq}" if self.seq is not None else rfc3339(self.time)


@dataclass(frozen=True, slots=True)
class Window:
    start: Bound
    end: Bound | None = None
    max_latency: timedelta = DEFAULT_MAX_LATENCY

    def __post_init__(self) -> None:
        s, e = self.start, self.end
        if e is None:
            return
        if s.seq is not None and e.seq is not None and e.seq <= s.seq:
            raise ReplayError("--to must be after --from")
        if s.time is not None and e.time is not None and e.time <= s.time:
            raise ReplayError("--to must be after --from")


@dataclass(slots=True)
class Replayed:
    """What :func:`read_window` read."""

    #: Deduplicated by request id (the first one wins), in stream order.
    events: list[UsageEvent] = field(default_factory=list)
    messages: int = 0
    duplicates: int = 0
    malformed: int = 0
    #: Read but outside the time window (``ts`` before --from or after --to).
    outside: int = 0
    first_seq: int = 0
    last_seq: int = 0
    #: Why reading stopped: "end" (of the stream), "to" (the --to bound).
    stop: str = "end"
    #: The time range every one of whose requests was read: ``(L, U)``, L
    #: None = since the beginning; None = nothing can be verified.
    covered: tuple[datetime | None, datetime] | None = None


def rfc3339(t: datetime | None) -> str:
    if t is None:
        return "-inf"
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def event_time(ev: UsageEvent) -> datetime:
    return datetime.fromtimestamp(ev.ts, UTC)


async def read_window(nc: NATS, window: Window, *, stream: str = USAGE_STREAM,
                      now: datetime | None = None) -> Replayed:
    """Read ``window`` of ``stream`` with an ephemeral consumer (no acks).

    The covered range ``[L, U)``:

    - ``L``: ``--from`` when it is a time; the stream time of the first
      message read when it is a sequence (every earlier message was
      published, hence its request arrived, before it), or the time the
      stream was created when that is sequence 1. If retention already
      dropped messages the window wanted, ``L`` is at least the stream time
      of the first message read.
    - ``U``: ``--to`` when it is a time and reading stopped on it; otherwise
      (a sequence ``--to``, or the end of the stream) the stream time of the
      first message after the window (or the time the end was reached) minus
      ``max_latency``, and at most a time ``--to``.
    """
    js = nc.jetstream()
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        raise ReplayError(f"JetStream stream {stream} not found") from None
    subjects = info.config.subjects or []
    if len(subjects) != 1:
        raise ReplayError(f"stream {stream} must have exactly one subject filter")
    state = info.state
    out = Replayed()
    start, end = window.start, window.end
    if state.messages == 0 or (start.seq is not None and start.seq > state.last_seq):
        return out
    config = ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=60.0,
                            mem_storage=True)
    if start.seq is not None:
        config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = start.seq
    else:
        assert start.time is not None
        config.deliver_policy = DeliverPolicy.BY_START_TIME
        config.opt_start_time = start.time - START_SKEW
    psub = await js.pull_subscribe(subjects[0], durable=None, stream=stream, config=config)
    seen: set[str] = set()
    first_time: datetime | None = None
    end_time: datetime | None = None  # stream time just past the window
    try:
        done = False
        while not done:
            try:
                msgs = await psub.fetch(_FETCH_BATCH, timeout=_FETCH_TIMEOUT)
            except (NatsTimeoutError, TimeoutError):
                break  # nothing more (messages deleted meanwhile)
            for msg in msgs:
                md = msg.metadata
                seq = md.sequence.stream
                if end is not None and end.seq is not None and seq >= end.seq:
                    out.stop, end_time, done = "to", md.timestamp, True
                    break
                out.messages += 1
                out.first_seq = out.first_seq or seq
                out.last_seq = seq
                if first_time is None:
                    first_time = md.timestamp
                # Started events bill nothing by themselves (pending.py).
                if msg.subject != USAGE_STARTED_SUBJECT and \
                        not _take(msg.data, window, out, seen):
                    out.stop, done = "to", True
                    break
                if seq >= state.last_seq or md.num_pending == 0:
                    done = True
                    break
    finally:
        await _drop_consumer(js, psub, stream)
    if out.stop == "end":
        end_time = now or datetime.now(UTC)
    out.covered = _coverage(window, out, state.first_seq, info.created, first_time, end_time)
    return out


def _take(data: bytes, window: Window, out: Replayed, seen: set[str]) -> bool:
    """Keep one message's event if it belongs to the window; False: past it."""
    try:
        ev = decode_event(data)  # the usage writer's checks: same events billed
    except MalformedEventError:
        out.malformed += 1
        return True
    t = event_time(ev)
    start, end = window.start.time, window.end.time if window.end is not None else None
    if end is not None and t >= end + window.max_latency:
        out.outside += 1
        return False  # later messages are later requests still
    if (start is not None and t < start) or (end is not None and t >= end):
        out.outside += 1
    elif ev.request_id in seen:
        out.duplicates += 1
    else:
        seen.add(ev.request_id)
        out.events.append(ev)
    return True


async def _drop_consumer(js: Any, psub: Any, stream: str) -> None:
    try:
        info = await psub.consumer_info()
        await psub.unsubscribe()
        await js.delete_consumer(stream, info.name)
    except Exception:  # noqa: BLE001 - it expires by itself (inactive_threshold)
        return


def _coverage(window: Window, out: Replayed, stream_first_seq: int,
              created: datetime | None, first_time: datetime | None,
              end_time: datetime | None) -> tuple[datetime | None, datetime] | None:
    if out.messages == 0 or first_time is None:
        return None
    start, end = window.start, window.end
    lower: datetime | None
    if start.time is not None:
        lower = start.time
        if stream_first_seq > 1 and out.first_seq == stream_first_seq:
            lower = max(lower, first_time)  # retention may have dropped some
    else:
        # From sequence 1: nothing was published before the stream existed.
        lower = created if out.first_seq == 1 else first_time
    if out.stop == "to" and end is not None and end.time is not None:
        upper = end.time
    else:
        assert end_time is not None
        upper = end_time - window.max_latency
        if end is not None and end.time is not None:
            upper = min(upper, end.time)
    if lower is not None and upper <= lower:
        return None
    return lower, upper


# --------------------------------------------------------------------- rollups


def bucket_of(t: datetime, period: str) -> datetime:
    t = t.astimezone(UTC)
    if period == "hourly":
        return t.replace(minute=0, second=0, microsecond=0)
    return t.replace(hour=0, minute=0, second=0, microsecond=0)


def money(value: float) -> Decimal:
    """A float cost as ``numeric(18, 8)`` stores it."""
    return Decimal(repr(value)).quantize(_CENT_FRACTION, rounding=ROUND_HALF_UP)


@dataclass(slots=True)
class Totals:
    request_count: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    total_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    cached_count: int = 0

    def add(self, ev: UsageEvent) -> None:
        self.request_count += 1
        self.prompt_tokens += ev.prompt_tokens
        self.completion_tokens += ev.completion_tokens
        self.cached_tokens += ev.cached_tokens
        self.total_tokens += ev.total_tokens
        self.cost_usd += money(ev.cost_usd)
        self.cached_count += int(ev.cached)

    def differs(self, other: Totals) -> bool:
        # Costs: a writer that sums floats may be off by rounding, never by more.
        tolerance = _CENT_FRACTION * max(self.request_count, other.request_count, 1)
        return any(getattr(self, f.name) != getattr(other, f.name)
                   for f in fields(self) if f.name != "cost_usd"
                   ) or abs(self.cost_usd - other.cost_usd) > tolerance

    def describe(self) -> str:
        return (f"requests={self.request_count} prompt_tokens={self.prompt_tokens} "
                f"completion_tokens={self.completion_tokens} "
                f"cached_tokens={self.cached_tokens} total_tokens={self.total_tokens} "
                f"cost_usd={self.cost_usd:f} cached={self.cached_count}")


TOTAL_COLUMNS: Final = tuple(f.name for f in fields(Totals))
#: (period, bucket, org, team, key, model, provider)
RollupKey = tuple[str, datetime, str, str, str, str, str]


def touched(events: Iterable[UsageEvent]) -> dict[str, set[datetime]]:
    out: dict[str, set[datetime]] = {p: set() for p in PERIODS}
    for ev in events:
        t = event_time(ev)
        for period in PERIODS:
            out[period].add(bucket_of(t, period))
    return out


# --------------------------------------------------------------------- raw rows


async def table_columns(conn: asyncpg.Connection, table: str) -> dict[str, str]:
    """Column name -> type name (``udt_name``) of ``table`` in the current schema."""
    rows = await conn.fetch(
        "SELECT column_name, udt_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = $1", table)
    return {r["column_name"]: r["udt_name"] for r in rows}


async def insert_records(conn: asyncpg.Connection, events: list[UsageEvent]) -> int:
    """Insert the raw rows that are missing, exactly as the usage writer
    does (same columns, same conversions); the number inserted. The
    writer's incremental rollups are recomputed by :func:`rebuild` after."""
    inserted = 0
    for i in range(0, len(events), _INSERT_BATCH):
        inserted += (await write_batch(conn, events[i:i + _INSERT_BATCH])).inserted
    return inserted


# --------------------------------------------------------------------- rebuild

_ROLLUP_DIMS = "org_id, team_id, key_id, model, provider_id"
_REBUILD = f"""
INSERT INTO usage_rollups ({_ROLLUP_DIMS}, period, bucket, {", ".join(TOTAL_COLUMNS)})
SELECT coalesce(r.org_id, ''), coalesce(r.team_id, ''), coalesce(r.key_id, ''), r.model,
       r.provider_id, $1, b.bucket, count(*), sum(r.prompt_tokens),
       sum(r.completion_tokens), sum(r.cached_tokens), sum(r.total_tokens), sum(r.cost_usd),
       count(*) FILTER (WHERE r.cached)
  FROM unnest($2::timestamptz[]) AS b(bucket)
  JOIN usage_records r ON r.created_at >= b.bucket AND r.created_at < b.bucket + $3::interval
 GROUP BY 1, 2, 3, 4, 5, 7
-- The writer lock keeps live batches out, so this never conflicts; if it
-- did, the existing row would hold requests this snapshot did not see.
ON CONFLICT ({_ROLLUP_DIMS}, period, bucket) DO UPDATE SET
{", ".join(f"{c} = usage_rollups.{c} + EXCLUDED.{c}" for c in TOTAL_COLUMNS)}
"""


async def rollup_buckets(conn: asyncpg.Connection, period: str,
                         covered: tuple[datetime | None, datetime] | None) -> set[datetime]:
    """Buckets of ``period`` fully inside ``covered`` that have rollup rows."""
    if covered is None:
        return set()
    lower, upper = covered
    rows = await conn.fetch(
        "SELECT DISTINCT bucket FROM usage_rollups WHERE period = $1 "
        "AND ($2::timestamptz IS NULL OR bucket >= $2) AND bucket <= $3",
        period, lower, upper - STEP[period])
    return {r["bucket"] for r in rows}


async def rebuild(conn: asyncpg.Connection, period: str, buckets: Iterable[datetime]) -> int:
    """Recompute these buckets of ``period`` from the raw rows; rows written."""
    wanted = sorted(buckets)
    if not wanted:
        return 0
    await conn.execute("DELETE FROM usage_rollups WHERE period = $1 "
                       "AND bucket = ANY($2::timestamptz[])", period, wanted)
    status = await conn.execute(_REBUILD, period, wanted, STEP[period])
    return int(status.rsplit(" ", 1)[-1])


async def apply(conn: asyncpg.Connection, replayed: Replayed) -> tuple[int, dict[str, int],
                                                                       int]:
    """Raw rows, then the rollups of every bucket the window touches (plus the
    buckets fully inside it that have rollup rows), in one transaction.
    Returns (raw rows inserted, buckets rebuilt per period, rollup rows)."""
    counts: dict[str, int] = {}
    rows = 0
    async with conn.transaction():
        # Live writer batches hold this lock shared: none can commit between
        # our DELETE and our re-insert (and be counted twice or not at all).
        await conn.execute("SELECT pg_advisory_xact_lock($1)", ROLLUP_LOCK_ID)
        inserted = await insert_records(conn, replayed.events)
        for period, buckets in touched(replayed.events).items():
            buckets |= await rollup_buckets(conn, period, replayed.covered)
            counts[period] = len(buckets)
            rows += await rebuild(conn, period, buckets)
    return inserted, counts, rows


# --------------------------------------------------------------------- command


def describe_read(window: Window, r: Replayed) -> str:
    to = f" to {window.end}" if window.end is not None else " to the end of the stream"
    seqs = f" (sequences {r.first_seq}..{r.last_seq})" if r.messages else ""
    return (f"replay: from {window.start}{to}: read {r.messages} messages{seqs}, "
            f"{len(r.events)} requests; skipped {r.duplicates} duplicate request ids, "
            f"{r.outside} outside the time window, {r.malformed} malformed")


async def run(nc: NATS, conn: asyncpg.Connection, window: Window, *, out: TextIO,
              stream: str = USAGE_STREAM) -> int:
    """Replay ``window`` into the usage tables; the exit status."""
    replayed = await read_window(nc, window, stream=stream)
    out.write(describe_read(window, replayed) + "\n")
    inserted, buckets, rows = await apply(conn, replayed)
    out.write(f"replay: inserted {inserted} raw rows ({len(replayed.events) - inserted} "
              f"already present); rebuilt {buckets.get('hourly', 0)} hourly and "
              f"{buckets.get('daily', 0)} daily buckets from the raw rows "
              f"({rows} rollup rows)\n")
    return 0
