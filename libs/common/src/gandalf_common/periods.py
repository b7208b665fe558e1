"""Budget periods in UTC: daily, weekly (from Monday), monthly, lifetime."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def period_start(period: str | None, now: float) -> float:
    """Unix time at which the current ``period`` began (0 for lifetime)."""
    if not period or period == "lifetime":
        return 0.0
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        start = day
    elif period == "weekly":
        start = day - timedelta(days=day.weekday())
    elif period == "monthly":
        start = day.replace(day=1)
    else:
        raise ValueError(f"unknown budget period {period!r}")
    return start.timestamp()
