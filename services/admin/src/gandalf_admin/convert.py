"""Rows -> the records every service mirrors from NATS KV (``records``)."""

from __future__ import annotations

from gandalf_common.records import (
    ORG_PREFIX,
    PROVIDER_PREFIX,
    ROUTE_PREFIX,
    TEAM_PREFIX,
    KeyRecord,
    Limits,
    OrgRecord,
    ProviderRecord,
    RouteRecord,
    RouteTargetRecord,
    TeamRecord,
    config_key,
)

from .store.rows import KeyRow, OrgRow, ProviderRow, RouteRow, TeamRow


def limits_of(row: OrgRow | TeamRow | KeyRow) -> Limits:
    return Limits(allowed_models=list(row.allowed_models) if row.allowed_models else None,
                  rpm_limit=row.rpm_limit, tpm_limit=row.tpm_limit,
                  max_budget=row.max_budget, budget_period=row.budget_period)


def org_record(row: OrgRow) -> OrgRecord:
    return OrgRecord(id=row.id, name=row.name, limits=limits_of(row))


def team_record(row: TeamRow) -> TeamRecord:
    return TeamRecord(id=row.id, org_id=row.org_id, name=row.name, limits=limits_of(row))


def key_record(row: KeyRow) -> KeyRecord:
    return KeyRecord(
        id=row.id, key_hash=row.key_hash, key_prefix=row.key_prefix, org_id=row.org_id,
        role=row.role, name=row.name, user_id=row.user_id, team_id=row.team_id,
        limits=limits_of(row),
        expires_at=row.expires_at.timestamp() if row.expires_at is not None else None,
        blocked=row.blocked)


def provider_record(row: ProviderRow) -> ProviderRecord:
    a = row.auth
    return ProviderRecord(
        id=row.id, type=row.type, base_url=row.base_url, models=list(row.models),
        priority=row.priority, weight=row.weight, enabled=row.enabled, max_rps=row.max_rps,
        max_concurrency=row.max_concurrency, timeout_ms=row.timeout_ms, hosting=row.hosting,
        region=row.region, project=row.project, api_version=row.api_version,
        model_map=dict(row.model_map), auth_type=row.auth_type,
        tenant_id=a.get("tenant_id", ""), client_id=a.get("client_id", ""),
        authority_host=a.get("authority_host", ""), scope=a.get("scope", ""),
        credentials_file=a.get("credentials_file", ""),
        access_key_id=a.get("access_key_id", ""), secrets_enc=row.secrets_enc,
        allow_custom_endpoint=row.allow_custom_endpoint)


def route_record(row: RouteRow) -> RouteRecord:
    return RouteRecord(
        id=row.id, model_alias=row.model_alias, strategy=row.strategy,
        cache_ttl_s=row.cache_ttl_s,
        targets=[RouteTargetRecord(provider=t.provider_id, model=t.model, priority=t.priority,
                                   weight=t.weight) for t in row.targets])


def org_kv_key(org_id: str) -> str:
    return config_key(ORG_PREFIX, org_id)


def team_kv_key(team_id: str) -> str:
    return config_key(TEAM_PREFIX, team_id)


def provider_kv_key(provider_id: str) -> str:
    return config_key(PROVIDER_PREFIX, provider_id)


def route_kv_key(route_id: str) -> str:
    return config_key(ROUTE_PREFIX, route_id)
