"""Where a budget period starts. All periods are in UTC, so every replica
(and every ingress reading the spend) agrees on the boundaries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

DAILY: Final = "daily"
WEEKLY: Final = "weekly"
MONTHLY: Final = "monthly"
LIFETIME: Final = "lifetime"
PERIODS: Final = (DAILY, WEEKLY, MONTHLY, LIFETIME)

#: "All time" as a timestamptz lower bound (no usage row is older).
BEGINNING: Final = datetime(1970, 1, 1, tzinfo=UTC)


def normalize(period: str | None) -> str:
    """The period a budget is counted over: unset or unknown means lifetime
    (the budget never resets), which is the safe reading of a typo."""
    return period if period in PERIODS else LIFETIME


def period_start(period: str | None, now: datetime) -> datetime:
    """Start of the period containing ``now`` (``now`` must be tz-aware):
    daily -> today 00:00, weekly -> Monday 00:00, monthly -> the 1st 00:00,
    lifetime -> :data:`BEGINNING`."""
    now = now.astimezone(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    match normalize(period):
        case "daily":
            return midnight
        case "weekly":
            return midnight - timedelta(days=midnight.weekday())
        case "monthly":
            return midnight.replace(day=1)
        case _:
            return BEGINNING


def epoch(start: datetime) -> float:
    """``Spend.period_start``: Unix seconds, 0 for lifetime."""
    return 0.0 if start <= BEGINNING else start.timestamp()
