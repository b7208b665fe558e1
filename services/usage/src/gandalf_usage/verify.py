"""``gandalf usage replay --verify``: check billing without writing.

Two checks, on one database snapshot:

- **events**: every request of the window's stream events has its raw row
  (by request id), with the same time, dimensions, tokens and cost;
- **buckets**: every hourly and daily rollup row equals the sums of the raw
  rows of its bucket, and every group of raw rows has its rollup row.

What is too recent is not compared yet: an event that arrived within
``max_latency`` of now (the usage writer may not have written it), and a
bucket that ends within ``max_latency`` of now (requests for it may still be
published). The report says how many of each were compared and how many
were not yet; :func:`exit_status` turns it into 0 (all compared match),
1 (differences) or 3 (the window holds events but nothing could be compared).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TextIO

import asyncpg

from gandalf_common.contract import UsageEvent

from .replay import (
    PERIODS,
    STEP,
    TOTAL_COLUMNS,
    Replayed,
    RollupKey,
    Totals,
    Window,
    bucket_of,
    event_time,
    money,
    rfc3339,
)

#: Nothing could be compared (the window's events are all too recent).
NOTHING_COMPARED: Final = 3
_TIME_TOLERANCE = timedelta(milliseconds=1)  # ts is a float; created_at microseconds
_DIMS = ("org_id", "team_id", "key_id", "model", "provider_id")


@dataclass(slots=True)
class Report:
    events_compared: int = 0
    events_not_yet: int = 0
    buckets_compared: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PERIODS, 0))
    buckets_not_yet: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PERIODS, 0))
    #: ``[first bucket, end of the last closed bucket)`` per period, if any.
    ranges: dict[str, tuple[datetime, datetime]] = field(default_factory=dict)
    differences: list[str] = field(default_factory=list)
    events: int = 0  # in the window

    def exit_status(self) -> int:
        if self.differences:
            return 1
        compared = self.events_compared + sum(self.buckets_compared.values())
        return NOTHING_COMPARED if self.events and not compared else 0


def _ceil(t: datetime, period: str) -> datetime:
    b = bucket_of(t, period)
    return b if b == t else b + STEP[period]


async def verify(conn: asyncpg.Connection, replayed: Replayed, window: Window, *,
                 now: datetime | None = None) -> Report:
    now = now or datetime.now(UTC)
    cutoff = now - window.max_latency
    report = Report(events=len(replayed.events))
    ready = [e for e in replayed.events if event_time(e) < cutoff]
    report.events_not_yet = report.events - len(ready)
    # Lower edge: --from as a time, else the earliest request read.
    lower = window.start.time
    if lower is None and replayed.events:
        lower = min(event_time(e) for e in replayed.events)
    upper = window.end.time if window.end is not None else None
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        report.events_compared = len(ready)
        report.differences += await _check_events(conn, ready)
        if lower is None:
            return report
        for period in PERIODS:
            first = bucket_of(lower, period)
            last_end = bucket_of(cutoff, period)  # buckets before it are closed
            if upper is not None:
                last_end = min(last_end, _ceil(upper, period))
            open_ = {bucket_of(event_time(e), period) for e in replayed.events}
            report.buckets_not_yet[period] = sum(b >= last_end for b in open_)
            if first >= last_end:
                continue
            report.ranges[period] = (first, last_end)
            count, diffs = await _check_buckets(conn, period, first, last_end)
            report.buckets_compared[period] = count
            report.differences += diffs
    return report


# --------------------------------------------------------------------- events


async def _check_events(conn: asyncpg.Connection, events: list[UsageEvent]) -> list[str]:
    if not events:
        return []
    rows = await conn.fetch(
        "SELECT request_id, created_at, coalesce(org_id, '') AS org_id, "
        "coalesce(team_id, '') AS team_id, coalesce(key_id, '') AS key_id, model, "
        "provider_id, prompt_tokens, completion_tokens, total_tokens, cost_usd "
        "FROM usage_records WHERE request_id = ANY($1::text[])",
        [e.request_id for e in events])
    found = {r["request_id"]: r for r in rows}
    out: list[str] = []
    for ev in events:
        row = found.get(ev.request_id)
        if row is None:
            out.append(f"MISSING raw row of request {ev.request_id} "
                       f"({rfc3339(event_time(ev))}, key={ev.key_id or '-'}, "
                       f"model={ev.model or '-'})")
            continue
        wrong = _event_mismatch(ev, row)
        if wrong:
            out.append(f"DIFF raw row of request {ev.request_id}: {', '.join(wrong)}")
    return out


def _event_mismatch(ev: UsageEvent, row: Any) -> list[str]:
    expected: dict[str, Any] = {
        "org_id": ev.org_id, "team_id": ev.team_id, "key_id": ev.key_id, "model": ev.model,
        "provider_id": ev.provider, "prompt_tokens": ev.prompt_tokens,
        "completion_tokens": ev.completion_tokens, "total_tokens": ev.total_tokens,
        "cost_usd": money(ev.cost_usd)}
    wrong = [f"{name} {row[name]} (stream: {want})" for name, want in expected.items()
             if row[name] != want]
    if abs(row["created_at"] - event_time(ev)) > _TIME_TOLERANCE:
        wrong.append(f"created_at {rfc3339(row['created_at'])} "
                     f"(stream: {rfc3339(event_time(ev))})")
    return wrong


# --------------------------------------------------------------------- buckets

_UNIT: Final = {"hourly": "hour", "daily": "day"}


async def _check_buckets(conn: asyncpg.Connection, period: str, first: datetime,
                         end: datetime) -> tuple[int, list[str]]:
    """Rollups vs sums of the raw rows of ``[first, end)``: (buckets, diffs)."""
    sums = ", ".join(f"sum({c})" for c in TOTAL_COLUMNS[1:-1])
    raw_rows = await conn.fetch(
        f"SELECT date_trunc($1, created_at, 'UTC') AS bucket, coalesce(org_id, '') AS org_id, "
        "coalesce(team_id, '') AS team_id, coalesce(key_id, '') AS key_id, model, "
        f"provider_id, count(*) AS request_count, {sums}, "
        "count(*) FILTER (WHERE cached) AS cached_count FROM usage_records "
        "WHERE created_at >= $2 AND created_at < $3 GROUP BY 1, 2, 3, 4, 5, 6",
        _UNIT[period], first, end)
    rollup_rows = await conn.fetch(
        f"SELECT bucket, {', '.join(_DIMS)}, {', '.join(TOTAL_COLUMNS)} FROM usage_rollups "
        "WHERE period = $1 AND bucket >= $2 AND bucket < $3", period, first, end)
    raw = {_key(period, r): Totals(*r[6:]) for r in raw_rows}
    rolled = {_key(period, r): Totals(**{c: r[c] for c in TOTAL_COLUMNS})
              for r in rollup_rows}
    diffs = []
    for key in sorted(raw.keys() | rolled.keys()):
        want, got = raw.get(key), rolled.get(key)
        if want is None or got is None or want.differs(got):
            diffs.append(_describe(key, want, got))
    return len({k[1] for k in raw.keys() | rolled.keys()}), diffs


def _key(period: str, r: Any) -> RollupKey:
    return (period, r["bucket"], r["org_id"], r["team_id"], r["key_id"], r["model"],
            r["provider_id"])


def _describe(key: RollupKey, raw: Totals | None, rollup: Totals | None) -> str:
    period, bucket, org, team, k, model, provider = key
    dims = (f"{period} {rfc3339(bucket)} org={org or '-'} team={team or '-'} key={k or '-'} "
            f"model={model or '-'} provider={provider or '-'}")
    return (f"DIFF {dims}\n  raw rows: {raw.describe() if raw else 'none'}\n"
            f"  rollup:   {rollup.describe() if rollup else 'no rollup row'}")


# --------------------------------------------------------------------- report


def write_report(report: Report, window: Window, out: TextIO) -> int:
    """Print ``report``; the exit status."""
    latency = f"{window.max_latency.total_seconds():g}s"
    out.write(f"verify: compared {report.events_compared} of {report.events} events with "
              f"the raw rows; not yet: {report.events_not_yet} (arrived within "
              f"--max-latency {latency} of now)\n")
    spans = ", ".join(f"{p} [{rfc3339(a)}, {rfc3339(b)})" for p, (a, b) in
                      report.ranges.items())
    out.write(f"verify: compared {report.buckets_compared['hourly']} hourly and "
              f"{report.buckets_compared['daily']} daily buckets' rollups with the raw rows"
              f"{' (' + spans + ')' if spans else ''}; not yet: "
              f"{report.buckets_not_yet['hourly']} hourly and "
              f"{report.buckets_not_yet['daily']} daily buckets still open (ending within "
              f"--max-latency {latency} of now)\n")
    for diff in report.differences:
        out.write(diff + "\n")
    status = report.exit_status()
    if status == 1:
        out.write(f"verify: {len(report.differences)} differences\n")
    elif status == NOTHING_COMPARED:
        out.write("verify: nothing could be compared yet: every event of the window is "
                  "too recent; run it again later\n")
    elif report.events or any(report.buckets_compared.values()):
        out.write("verify: OK, the raw rows and rollups match the stream\n")
    else:
        out.write("verify: OK, no usage in the window\n")
    return status
