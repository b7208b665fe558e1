"""Budgets: spend per key, team and org in the current period, as the usage
service publishes it to the ``gandalf_spend`` KV bucket, checked before a
request is routed. Exhausted: 429 ``insufficient_quota`` (OpenAI's shape).

Concurrent requests near the limit: each also *reserves* its estimated cost
(memory, or Redis shared by every ingress) and releases it when done, so
recorded spend + open reservations + the new estimate must fit the budget;
an overshoot is bounded by one request's estimate.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gandalf_common.contract import SPEND_BUCKET, Spend, spend_decoder
from gandalf_common.errors import GatewayError
from gandalf_common.kv import KVMirror
from gandalf_common.periods import period_start
from gandalf_common.pricing import PriceBook
from gandalf_common.records import spend_key

if TYPE_CHECKING:
    from .auth import Identity
    from .ratelimit.ports import BudgetReservations


class Budgets:
    def __init__(self, reservations: BudgetReservations | None = None,
                 prices: PriceBook | None = None) -> None:
        self._mirror: KVMirror[Spend] | None = None
        self.reservations = reservations
        self.prices = prices or PriceBook()

    async def start(self, nc: Any) -> None:
        """Managed mode: mirror the spend bucket (created here if missing)."""
        js = nc.jetstream()
        try:
            await js.key_value(SPEND_BUCKET)
        except Exception:  # noqa: BLE001 - absent: create it (idempotent with the usage service)
            await js.create_key_value(bucket=SPEND_BUCKET, history=1)
        self._mirror = KVMirror(SPEND_BUCKET, lambda _k, v: spend_decoder.decode(v))
        await self._mirror.start(nc)

    async def stop(self) -> None:
        if self._mirror is not None:
            await self._mirror.stop()

    def spent(self, scope: str, ident: str, period: str | None, now: float) -> float:
        if self._mirror is None:
            return 0.0
        spend = self._mirror.entries.get(spend_key(scope, ident))
        if spend is None:
            return 0.0
        # A spend record from an earlier period (not yet rolled over) is stale.
        if spend.period != (period or "lifetime") or (
                spend.period_start < period_start(period, now) - 1):
            return 0.0
        return spend.spend_usd

    def check(self, identity: Identity) -> None:
        if not identity.budgets or self._mirror is None:
            return
        now = time.time()
        for scope, ident, limit, period in identity.budgets:
            if limit > 0 and self.spent(scope, ident, period, now) >= limit:
                raise GatewayError(
                    f"You exceeded your current quota: the {scope} budget of "
                    f"${limit:g} ({period or 'lifetime'}) is spent.", status=429,
                    type="insufficient_quota", code="insufficient_quota")

    async def reserve(self, identity: Identity, model: str,
                      tokens: int) -> list[tuple[str, str, float]]:
        """Reserve the estimated cost at every budget level; 429 when it does
        not fit. Returns what to release after the call."""
        if not identity.budgets or self._mirror is None or self.reservations is None:
            return []
        price = self.prices.price(model, "", model)
        if price is None:
            return []
        estimate = tokens * max(price.input, price.output) / 1_000_000
        if estimate <= 0:
            return []
        now = time.time()
        held: list[tuple[str, str, float]] = []
        for scope, ident, limit, period in identity.budgets:
            key = spend_key(scope, ident)
            period_key = f"{period or 'lifetime'}:{int(period_start(period, now))}"
            spent = self.spent(scope, ident, period, now)
            # An estimate above what is left is capped at it (as TPM caps at
            # the capacity): one request can always use the rest of a budget.
            amount = min(estimate, max(0.0, limit - spent))
            if not await self.reservations.reserve(key, limit, spent, amount, period_key):
                await self.release(held)
                raise GatewayError(
                    f"You exceeded your current quota: the {scope} budget of ${limit:g} "
                    f"({period or 'lifetime'}) is spent or reserved by requests in flight.",
                    status=429, type="insufficient_quota", code="insufficient_quota")
            held.append((key, period_key, amount))
        return held

    async def release(self, held: list[tuple[str, str, float]]) -> None:
        if self.reservations is None:
            return
        for key, period_key, amount in held:
            # The real cost reaches ``spent`` through the usage pipeline.
            await self.reservations.release(key, period_key, amount, 0.0)
