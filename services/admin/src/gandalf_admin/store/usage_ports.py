"""The usage store's port: read-only queries over ``usage_records`` (one row
per billed request) and ``usage_rollups`` (hourly and daily aggregates),
both written by the usage service. The asyncpg adapter is ``pg_usage.py``.

Only columns of migration 001 are read, so the queries work whatever the
usage service adds later.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol

from msgspec import Struct

from .ports import Page

PERIODS: Final = ("hourly", "daily")


@dataclass(frozen=True, slots=True)
class UsageFilter:
    """Every field is optional (None: no condition). ``since``/``until`` are
    instants: ``created_at`` (records) or ``bucket`` (rollups) ``>= since``
    and ``< until``."""

    #: None = every org (global admins only).
    org_id: str | None = None
    team_id: str | None = None
    key_id: str | None = None
    model: str | None = None
    provider: str | None = None
    #: Inclusive status range (records only): 429 is (429, 429), 5xx (500, 599).
    status_min: int | None = None
    status_max: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    #: Members: only rows of the caller's own key or user (see ``api.usage``).
    owned_only: bool = False
    owner_key_id: str | None = None
    owner_user_id: str | None = None


class UsageRecordRow(Struct, kw_only=True, frozen=True):
    """One row of ``usage_records`` as the API shows it (behaviour-spec §9,
    plus ``provider_model``, ``cached_tokens``, ``stream``, ``ttft_ms`` and
    ``error_class``)."""

    id: int
    key_id: str | None
    user_id: str | None
    team_id: str | None
    org_id: str | None
    caller_jwt_sub: str | None
    caller_service: str | None
    model: str
    provider_id: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float
    cached: bool
    latency_ms: int
    status_code: int
    request_id: str
    created_at: datetime
    provider_model: str
    cached_tokens: int
    stream: bool
    ttft_ms: int | None
    error_class: str | None


class UsageRollupRow(Struct, kw_only=True, frozen=True):
    """One row of ``usage_rollups``; ``''`` in a dimension means "none"."""

    org_id: str
    team_id: str
    key_id: str
    model: str
    provider_id: str
    period: str
    bucket: datetime
    request_count: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    total_tokens: int
    cost_usd: float
    cached_count: int


RECORD_COLUMNS: Final = UsageRecordRow.__struct_fields__
ROLLUP_COLUMNS: Final = UsageRollupRow.__struct_fields__


class UsageRepo(Protocol):
    async def records(self, where: UsageFilter, page: Page
                      ) -> tuple[list[UsageRecordRow], int]:
        """One page, newest first, and the total count."""
        ...

    async def rollups(self, where: UsageFilter, period: str, limit: int
                      ) -> list[UsageRollupRow]:
        """At most ``limit`` rollups of one period, newest bucket first."""
        ...
