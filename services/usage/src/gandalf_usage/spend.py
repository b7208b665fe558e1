"""Spend per budget scope (key, team, org) in its current period -> NATS KV.

The ingress refuses requests over budget by reading ``SPEND_BUCKET``; this
module keeps it current. A scope is published when it has a budget
(``max_budget`` > 0 on its own record) and: a committed batch touched it, its
record changed, or the periodic refresh finds a different value (a new
period began, or a write went missing). Spend is the sum of the scope's
daily rollups since its period start, so it is exact, whatever batching or
redelivery happened.

Replicas race: two of them may compute a key's spend at about the same time
and put in either order. Within a period spend only grows, so a put is a
compare-and-set that never replaces a larger value of the same period with
a smaller one; the last commit's reader sees every commit, so the largest
value wins and is the right one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from gandalf_common.contract import SPEND_BUCKET, Spend, encode, spend_decoder
from gandalf_common.live import LiveConfig
from gandalf_common.periods import period_start
from gandalf_common.records import KeyRecord, OrgRecord, TeamRecord, spend_key

from . import metrics
from .db import SpendQuery, UsageDatabase
from .writer import WriteResult

log = logging.getLogger("gandalf.usage.spend")

KEY: str = "key"
TEAM: str = "team"
ORG: str = "org"
#: (scope, id)
Scope = tuple[str, str]

LIFETIME = "lifetime"
#: KV round trips in flight while publishing.
KV_CONCURRENCY = 32
#: Attempts of one compare-and-set before leaving the scope to the next round.
CAS_ATTEMPTS = 5


async def open_spend_bucket(nc: NATS) -> KeyValue:
    """The spend bucket, created when missing (history 1: only now matters)."""
    js = nc.jetstream()
    try:
        return await js.key_value(SPEND_BUCKET)
    except BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(bucket=SPEND_BUCKET, history=1)
    except Exception:  # noqa: BLE001 - another replica created it first
        return await js.key_value(SPEND_BUCKET)


def newer(new: Spend, old: Spend) -> bool:
    """Whether ``new`` should replace ``old`` (see the module docstring)."""
    if new.period != old.period:
        return True  # the budget's period changed: the old value is meaningless
    if new.period_start != old.period_start:
        return new.period_start > old.period_start
    return new.spend_usd > old.spend_usd


@dataclass(frozen=True, slots=True)
class Budget:
    max_budget: float
    period: str


class BudgetIndex:
    """Which scopes have a budget, from the LiveConfig mirror. Keys are
    mirrored by hash; this keeps them by id (kept current by the change
    listener). Each scope is counted over its own ``budget_period`` (none:
    lifetime), exactly as the ingress checks it (``Identity.budgets``)."""

    def __init__(self, live: LiveConfig) -> None:
        self.live = live
        self._keys: dict[str, KeyRecord] = {}
        self._key_ids: dict[str, str] = {}  # key hash -> key id
        self.reindex()

    def reindex(self) -> None:
        for key_hash, record in list(self.live.keys.items()):
            self.key_changed(key_hash, record)

    def key_changed(self, key_hash: str, record: KeyRecord | None) -> None:
        old = self._key_ids.pop(key_hash, None)
        if old is not None:
            self._keys.pop(old, None)
        if record is not None:
            self._key_ids[key_hash] = record.id
            self._keys[record.id] = record

    def budget(self, scope: Scope) -> Budget | None:
        kind, ident = scope
        record: KeyRecord | TeamRecord | OrgRecord | None
        if kind == KEY:
            record = self._keys.get(ident)
        elif kind == TEAM:
            record = self.live.teams.get(ident)
        else:
            record = self.live.orgs.get(ident)
        if record is None:
            return None
        limits = record.limits
        if limits.max_budget is None or limits.max_budget <= 0:  # None: inherit, 0: unlimited
            return None
        return Budget(limits.max_budget, limits.budget_period or LIFETIME)

    def budgeted(self) -> list[Scope]:
        """Every scope with a budget."""
        scopes: list[Scope] = [(KEY, i) for i in self._keys]
        scopes += [(TEAM, i) for i in self.live.teams]
        scopes += [(ORG, i) for i in self.live.orgs]
        return [s for s in scopes if self.budget(s) is not None]


class SpendPublisher:
    """Computes and publishes spend; runs as one background task."""

    def __init__(self, db: UsageDatabase, live: LiveConfig, *, refresh_s: float = 60.0,
                 min_interval_s: float = 0.25, start_live: bool = False) -> None:
        self.db = db
        self.live = live
        self.refresh_s = refresh_s
        self.min_interval_s = min_interval_s
        self._start_live = start_live
        self.index = BudgetIndex(live)
        self._dirty: set[Scope] = set()
        self._wake = asyncio.Event()
        #: What this replica last saw in KV per scope: a value equal to it is not re-put.
        self._known: dict[str, Spend] = {}
        self._kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None
        live.on_change(self._on_change)

    async def start(self, nc: NATS) -> None:
        self._kv = await open_spend_bucket(nc)
        self._task = asyncio.create_task(self._run(nc), name="usage-spend")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._start_live:
            await self.live.stop()

    def touched(self, result: WriteResult) -> None:
        """A batch committed: its scopes' spend changed (called by the consumer)."""
        self.mark([(KEY, i) for i in result.keys] + [(TEAM, i) for i in result.teams]
                  + [(ORG, i) for i in result.orgs])

    def mark(self, scopes: Iterable[Scope]) -> None:
        """Recompute (and publish, if changed) these scopes soon."""
        self._dirty.update(scopes)
        self._wake.set()

    def _on_change(self, kind: str, ident: str, value: Any) -> None:
        if kind == "key":
            self.index.key_changed(ident, value)
            if value is not None:
                self._dirty.add((KEY, value.id))
        elif kind in (TEAM, ORG):
            self._dirty.add((kind, ident))
        else:
            return
        self._wake.set()

    # ---------------------------------------------------------------- loop

    async def _run(self, nc: NATS) -> None:
        if self._start_live:
            # Waits (without limit) for the admin service to create the
            # buckets; writing usage does not wait for this.
            await self.live.start(nc, keys=True, wait=math.inf)
        self.index.reindex()
        self.mark(self.index.budgeted())  # publish everything once at start
        next_refresh = time.monotonic() + self.refresh_s
        delay = 0.5
        failing = False
        while True:
            timeout = max(0.0, next_refresh - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            # Let a burst of batches coalesce: one query per interval, however
            # many batches touched a scope (an org's sum reads many rollups).
            await asyncio.sleep(self.min_interval_s)
            self._wake.clear()
            if time.monotonic() >= next_refresh:
                # Periods roll over and lost puts get repaired here: forget
                # what KV was believed to hold, so each scope is checked there.
                self._known.clear()
                self._dirty.update(self.index.budgeted())
                next_refresh = time.monotonic() + self.refresh_s
            try:
                await self.flush()
            except Exception as exc:  # noqa: BLE001 - dirty scopes stay dirty; try again
                if not failing:
                    log.warning("spend: cannot publish (%r); retrying with backoff", exc)
                    failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                self._wake.set()
                continue
            if failing:
                log.info("spend: publishing again")
                failing = False
            delay = 0.5

    async def flush(self) -> int:
        """Publish every dirty scope that has a budget; return how many changed."""
        scopes, self._dirty = self._dirty, set()
        now = time.time()
        plan: dict[Scope, tuple[str, float]] = {}
        for scope in scopes:
            budget = self.index.budget(scope)
            if budget is None:
                continue
            try:
                # The ingress's own period math (gandalf_common.periods): both
                # sides must agree on where a period starts.
                plan[scope] = (budget.period, period_start(budget.period, now))
            except ValueError:
                log.warning("spend: %s %s has an unknown budget period %r; not published",
                            scope[0], scope[1], budget.period)
        if not plan:
            return 0
        queries: list[SpendQuery] = [(s[0], s[1], datetime.fromtimestamp(start, UTC))
                                     for s, (_p, start) in plan.items()]
        try:
            totals = await self.db.spend(queries)
        except BaseException:
            self._dirty |= scopes
            raise
        changed = 0
        failed: set[Scope] = set()
        error: BaseException | None = None
        stamp = time.time()
        items = list(plan.items())
        for i in range(0, len(items), KV_CONCURRENCY):
            chunk = items[i:i + KV_CONCURRENCY]
            results = await asyncio.gather(*(
                self._put(spend_key(*scope), Spend(period=period, period_start=start,
                                                   spend_usd=totals.get(scope, 0.0),
                                                   updated_at=stamp))
                for scope, (period, start) in chunk), return_exceptions=True)
            for (scope, _plan), result in zip(chunk, results, strict=True):
                if isinstance(result, BaseException):
                    failed.add(scope)  # the others still go out
                    error = result
                else:
                    changed += result
        if failed:
            self._dirty |= failed
            raise RuntimeError(f"{len(failed)} spend records not written to KV") from error
        return changed

    async def _put(self, key: str, record: Spend) -> bool:
        """Compare-and-set ``record`` unless KV already holds the same or a
        newer value. True when written."""
        known = self._known.get(key)
        if known is not None and not newer(record, known):
            return False
        kv = self._kv
        assert kv is not None
        for _ in range(CAS_ATTEMPTS):
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:  # also: deleted
                entry = None
            current: Spend | None = None
            if entry is not None and entry.value:
                with contextlib.suppress(Exception):
                    current = spend_decoder.decode(entry.value)
            if current is not None and not newer(record, current):
                self._known[key] = current
                return False
            try:
                if entry is None:
                    await kv.create(key, encode(record))
                else:
                    await kv.update(key, encode(record), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue  # another replica wrote meanwhile: look again
            self._known[key] = record
            metrics.SPEND_PUBLISHED.inc()
            return True
        raise RuntimeError(f"spend {key}: compare-and-set kept losing")
