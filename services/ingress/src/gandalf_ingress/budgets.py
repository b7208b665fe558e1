"""Budgets: spend per key, team and org in the current period, as the usage
service publishes it to the ``gandalf_spend`` KV bucket, checked before a
request is routed. Exhausted: 429 ``insufficient_quota`` (OpenAI's shape).

This check is against recorded spend; concurrent requests near the limit
can each pass it (reservations come with the rate-limit work).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gandalf_common.contract import SPEND_BUCKET, Spend, spend_decoder
from gandalf_common.errors import GatewayError
from gandalf_common.kv import KVMirror
from gandalf_common.periods import period_start
from gandalf_common.records import spend_key

if TYPE_CHECKING:
    from .auth import Identity


class Budgets:
    def __init__(self) -> None:
        self._mirror: KVMirror[Spend] | None = None

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
