"""YAML -> database, on every start (behaviour-spec §2 "Bootstrap", §15.16).

Providers (id = name), routes (by alias), keys (by SHA-256 of the plaintext)
and ``auth.jwt``. ``bootstrap: insert`` (default) creates what is missing and
never changes an existing row; ``bootstrap: sync`` also updates existing rows
to match the YAML. Neither deletes anything.

Fixes of the original: YAML keys keep their ``name`` and ``allowed_models``;
a key's org is created when missing (name = id) instead of failing start.
A YAML key's id is the first 16 hex characters of its hash, as the ingress
names it in static mode, so usage records agree in both modes.
"""

from __future__ import annotations

import logging

import asyncpg

from gandalf_common.config import GatewayConfig, ProviderConfig, RouteConfig
from gandalf_common.crypto import ENV_KEY, SecretBox, SecretError
from gandalf_common.ids import uuid7
from gandalf_common.live import provider_record
from gandalf_common.records import ProviderSecrets, secrets_decoder
from gandalf_common.startup import StartupError

from . import secrets
from .jwt_settings import is_configured, jwt_from_config, jwt_from_json, jwt_to_json
from .keygen import PREFIX_LEN, hash_key, yaml_key_id
from .store import PgRepos
from .store.rows import KeyRow, OrgRow, ProviderRow, RouteRow, TargetRow, replace

log = logging.getLogger("gandalf.admin.bootstrap")


class BootstrapError(StartupError):
    """The YAML cannot be bootstrapped (the service must not start)."""


def _secrets_of(p: ProviderConfig) -> ProviderSecrets:
    return ProviderSecrets(api_key=p.api_key, client_secret=p.auth.client_secret,
                           secret_access_key=p.auth.secret_access_key,
                           session_token=p.auth.session_token)


def check_secrets(cfg: GatewayConfig, box: SecretBox | None) -> None:
    if box is not None:
        return
    for p in cfg.providers:
        if _secrets_of(p) != ProviderSecrets():
            raise BootstrapError(
                f"provider {p.name!r} has a secret in the config, and secrets are stored "
                f"encrypted: set {ENV_KEY} to base64 of 32 random bytes "
                "(e.g. `openssl rand -base64 32`); `gandalf up` generates one")


def provider_row(p: ProviderConfig, box: SecretBox | None,
                 current: ProviderRow | None = None) -> ProviderRow:
    """The row for a YAML provider; an unchanged secret keeps its ciphertext
    (sealing again would change the KV record on every start)."""
    plain = _secrets_of(p)
    record = provider_record(p, box)
    sealed = record.secrets_enc
    if current is not None and box is not None and current.secrets_enc:
        try:
            if secrets_decoder.decode(box.open(current.secrets_enc,
                                               secrets.purpose(p.name))) == plain:
                sealed = current.secrets_enc
        except SecretError:
            pass  # sealed with another key: replace it
    hints = {n: secrets.mask(getattr(plain, n)) for n in secrets.SECRET_FIELDS
             if getattr(plain, n)}
    a = p.auth
    return ProviderRow(
        id=p.name, name=p.name, type=record.type, base_url=record.base_url,
        models=list(record.models), priority=record.priority, weight=record.weight,
        enabled=record.enabled, max_rps=record.max_rps,
        max_concurrency=record.max_concurrency, timeout_ms=record.timeout_ms,
        hosting=record.hosting, region=record.region, project=record.project,
        api_version=record.api_version, model_map=dict(record.model_map),
        auth_type=record.auth_type,
        auth={"tenant_id": a.tenant_id, "client_id": a.client_id,
              "authority_host": a.authority_host, "scope": a.scope,
              "credentials_file": a.credentials_file, "access_key_id": a.access_key_id},
        secrets_enc=sealed, secret_hints=hints)


def route_row(r: RouteConfig, route_id: str) -> RouteRow:
    return RouteRow(
        id=route_id, model_alias=r.model_alias, strategy=r.strategy,
        cache_ttl_s=r.cache_ttl_s,
        targets=[TargetRow(provider_id=t.provider, model=t.model, priority=t.priority,
                           weight=t.weight) for t in r.targets])


def _same(a: object, b: object, *ignore: str) -> bool:
    fields = a.__struct_fields__  # type: ignore[attr-defined]
    return all(getattr(a, f) == getattr(b, f) for f in fields if f not in ignore)


_STAMPS = ("created_at", "updated_at", "last_used_at")


async def bootstrap(conn: asyncpg.Connection, cfg: GatewayConfig,
                    box: SecretBox | None) -> None:
    """Apply the YAML in one transaction (the caller holds the replication lock)."""
    check_secrets(cfg, box)
    sync = cfg.bootstrap == "sync"
    repos = PgRepos(conn)
    changed = 0
    async with conn.transaction():
        for p in cfg.providers:
            current = await repos.providers.get(p.name)
            row = provider_row(p, box, current)
            if current is None:
                changed += await repos.providers.insert(row, if_missing=True) is not None
            elif sync and not _same(row, current, *_STAMPS):
                await repos.providers.update(row)
                changed += 1
        for r in cfg.routes:
            current_route = await repos.routes.by_alias(r.model_alias)
            if current_route is None:
                changed += await repos.routes.insert(route_row(r, uuid7()),
                                                     if_missing=True) is not None
            elif sync:
                wanted = route_row(r, current_route.id)
                if not _same(wanted, current_route, *_STAMPS):
                    await repos.routes.update(wanted)
                    changed += 1
        for k in cfg.keys:
            changed += await _key(repos, k.key, k.name, k.org_id, k.role,
                                  list(k.allowed_models), sync)
        changed += await _jwt(repos, cfg, sync)
    log.info("bootstrap (%s): %d row(s) created or updated from the config",
             cfg.bootstrap, changed)


async def _key(repos: PgRepos, plaintext: str, name: str, org_id: str, role: str,
               allowed_models: list[str], sync: bool) -> int:
    digest = hash_key(plaintext)
    changed = 0
    if await repos.orgs.insert(OrgRow(id=org_id, name=org_id), if_missing=True) is not None:
        log.info("bootstrap: created organization %r for a config key", org_id)
        changed += 1
    current = await repos.keys.by_hash(digest)
    models = allowed_models or None
    if current is None:
        row = KeyRow(id=yaml_key_id(digest), key_hash=digest, key_prefix=plaintext[:PREFIX_LEN],
                     org_id=org_id, role=role, name=name or None, allowed_models=models,
                     created_by="config")
        return changed + (await repos.keys.insert(row, if_missing=True) is not None)
    if not sync:
        return changed
    wanted = replace(current, name=name or None, org_id=org_id, role=role,
                     allowed_models=models)
    if wanted.org_id != current.org_id:
        wanted = replace(wanted, team_id=None)  # its team belongs to the old org
    if wanted != current:
        await repos.keys.update(wanted)
        changed += 1
    return changed


async def _jwt(repos: PgRepos, cfg: GatewayConfig, sync: bool) -> int:
    j = cfg.auth.jwt
    if not is_configured(j):
        return 0  # defaults say nothing: leave the database (and the API's settings) alone
    settings = jwt_from_config(j)
    if not sync:
        return int(await repos.auth.put("jwt", jwt_to_json(settings), if_missing=True))
    current = await repos.auth.get("jwt")
    if current is not None and jwt_from_json(current) == settings:
        return 0
    await repos.auth.put("jwt", jwt_to_json(settings))
    return 1
