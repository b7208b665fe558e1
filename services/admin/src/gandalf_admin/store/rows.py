"""What the store reads and writes: one Struct per table row.

Rows are plain values (no behaviour) shared by the store ports, the API
modules and the KV conversions. Limits follow the records' convention:
``None`` inherits from the parent level, ``0`` means unlimited.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from msgspec import Struct


class OrgRow(Struct, kw_only=True, frozen=True):
    id: str
    name: str
    allowed_models: list[str] | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_budget: float | None = None
    budget_period: str | None = None
    created_at: datetime | None = None


class TeamRow(Struct, kw_only=True, frozen=True):
    id: str
    org_id: str
    name: str
    allowed_models: list[str] | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_budget: float | None = None
    budget_period: str | None = None
    created_at: datetime | None = None


class KeyRow(Struct, kw_only=True, frozen=True):
    id: str
    key_hash: str
    key_prefix: str
    org_id: str
    role: str = "member"
    name: str | None = None
    user_id: str | None = None
    team_id: str | None = None
    allowed_models: list[str] | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_budget: float | None = None
    budget_period: str | None = None
    expires_at: datetime | None = None
    blocked: bool = False
    last_used_at: datetime | None = None
    created_at: datetime | None = None
    #: ``user:<id>``, ``key:<id>`` or ``admin_key``: lets a member manage the
    #: keys it created even when they carry no user_id.
    created_by: str | None = None
    #: The key a member authenticated with when it minted this one; deleting
    #: or blocking the parent deletes or blocks this key too.
    parent_key_id: str | None = None


class ProviderRow(Struct, kw_only=True, frozen=True):
    id: str
    name: str
    type: str
    base_url: str
    models: list[str] = []
    priority: int = 0
    weight: int = 1
    enabled: bool = True
    max_rps: int = 0
    max_concurrency: int = 256
    timeout_ms: int = 60000
    hosting: str = ""
    region: str = ""
    project: str = ""
    api_version: str = ""
    model_map: dict[str, str] = {}
    auth_type: str = "api_key"
    #: Non-secret auth fields: tenant_id, client_id, authority_host, scope,
    #: credentials_file, access_key_id.
    auth: dict[str, str] = {}
    #: Sealed ProviderSecrets (AES-GCM, purpose ``provider:<id>``).
    secrets_enc: str = ""
    #: Secret field name -> masked form, for responses.
    secret_hints: dict[str, str] = {}
    allow_custom_endpoint: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None


class TargetRow(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    provider_id: str
    model: str
    priority: int = 0
    weight: int = 1


class RouteRow(Struct, kw_only=True, frozen=True):
    id: str
    model_alias: str
    targets: list[TargetRow]
    strategy: str = "priority"
    cache_ttl_s: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None


def replace(row: Any, **changes: Any) -> Any:
    """A copy of ``row`` with ``changes`` applied (rows are frozen)."""
    return msgspec.structs.replace(row, **changes)
