"""``/admin/v1/providers``: provider instances (global admins only).

Bodies are ``ProviderConfig`` plus ``id`` (defaults to ``name``); they pass the
YAML loader's validation (``cfgcheck``) and the URL guard (``urlcheck``).
PUT is a full replace, except that secrets follow ``secrets.merge`` (absent
keeps the stored one), unless the destination changes (base_url, type,
hosting, region, project, auth type/authority/credentials file): then every
stored secret must be sent again (400 ``secret_required``). Responses never
carry a secret, only its mask.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from msgspec import UNSET, Meta, Struct, UnsetType

from gandalf_common.config import ProviderAuthConfig, ProviderConfig
from gandalf_common.contract import AdminResponse

from .. import secrets
from ..access import Access
from ..cfgcheck import check_provider
from ..deps import Deps
from ..errors import bad_request, conflict, not_found
from ..store.rows import ProviderRow
from ..urlcheck import check_resolved, check_url
from ..validate import Models
from ..wire import Request, decode_body, envelope, json_response, no_content, page_of

BASE = "/admin/v1/providers"
#: Provider ids are part of NATS subjects (``gandalf.provider.<id>.chat``).
_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_ID_RE = re.compile(_ID_PATTERN)
ProviderId = Annotated[str, Meta(pattern=_ID_PATTERN)]
Secret = Annotated[str, Meta(max_length=16384)] | None | UnsetType
Count = Annotated[int, Meta(ge=0, le=10**9)]
_AUTH_PLAIN = ("tenant_id", "client_id", "authority_host", "scope", "credentials_file",
               "access_key_id")


class AuthBody(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    type: str = ""
    api_key: Secret = UNSET
    tenant_id: str = ""
    client_id: str = ""
    client_secret: Secret = UNSET
    authority_host: str = ""
    scope: str = ""
    credentials_file: str = ""
    access_key_id: str = ""
    secret_access_key: Secret = UNSET
    session_token: Secret = UNSET


class ProviderBody(Struct, kw_only=True, forbid_unknown_fields=True):
    id: ProviderId | UnsetType = UNSET
    name: Annotated[str, Meta(min_length=1, max_length=256)] | UnsetType = UNSET
    type: str = ""
    base_url: Annotated[str, Meta(max_length=2048)] = ""
    api_key: Secret = UNSET
    models: Models = []
    priority: int = 0
    weight: Annotated[int, Meta(ge=1, le=10**6)] = 1
    enabled: bool = True
    max_rps: Count = 0
    max_concurrency: Count = 0
    timeout_ms: Count = 0
    hosting: str = ""
    region: str = ""
    project: str = ""
    api_version: str = ""
    model_map: dict[str, str] = {}
    auth: AuthBody = AuthBody()
    allow_custom_endpoint: bool = False
    created_at: Any = UNSET  # read-only, accepted in echoed bodies
    updated_at: Any = UNSET


def provider_view(row: ProviderRow) -> dict[str, Any]:
    hints = row.secret_hints
    auth: dict[str, Any] = {"type": row.auth_type}
    auth.update({k: row.auth.get(k, "") for k in _AUTH_PLAIN})
    auth.update({k: hints.get(k) for k in secrets.SECRET_FIELDS})
    return {
        "id": row.id, "name": row.name, "type": row.type, "base_url": row.base_url,
        "api_key": hints.get("api_key"), "models": row.models, "priority": row.priority,
        "weight": row.weight, "enabled": row.enabled, "max_rps": row.max_rps,
        "max_concurrency": row.max_concurrency, "timeout_ms": row.timeout_ms,
        "hosting": row.hosting, "region": row.region, "project": row.project,
        "api_version": row.api_version, "model_map": row.model_map, "auth": auth,
        "allow_custom_endpoint": row.allow_custom_endpoint,
        "created_at": row.created_at, "updated_at": row.updated_at,
    }


def _wanted_secrets(body: ProviderBody) -> dict[str, Any]:
    a = body.auth
    # auth.api_key wins over the top-level api_key, as in the YAML.
    api_key = a.api_key if a.api_key is not UNSET else body.api_key
    return {"api_key": api_key, "client_secret": a.client_secret,
            "secret_access_key": a.secret_access_key, "session_token": a.session_token}


def build_row(provider_id: str, body: ProviderBody, current: ProviderRow | None,
              deps: Deps) -> ProviderRow:
    """Validate the body (with its merged secrets) into the row to store."""
    sealed = secrets.merge(provider_id, _wanted_secrets(body), current, deps.box)
    a, s = body.auth, sealed.check
    cfg = ProviderConfig(
        name=provider_id, type=body.type, base_url=body.base_url, api_key=s.get("api_key", ""),
        models=list(body.models), priority=body.priority, weight=body.weight,
        enabled=body.enabled, max_rps=body.max_rps, max_concurrency=body.max_concurrency,
        timeout_ms=body.timeout_ms, hosting=body.hosting, region=body.region,
        project=body.project, api_version=body.api_version, model_map=dict(body.model_map),
        allow_custom_endpoint=body.allow_custom_endpoint,
        auth=ProviderAuthConfig(
            type=a.type, api_key=s.get("api_key", ""), tenant_id=a.tenant_id,
            client_id=a.client_id, client_secret=s.get("client_secret", ""),
            authority_host=a.authority_host or ProviderAuthConfig().authority_host,
            scope=a.scope, credentials_file=a.credentials_file, access_key_id=a.access_key_id,
            secret_access_key=s.get("secret_access_key", ""),
            session_token=s.get("session_token", "")))
    cfg = check_provider(cfg)
    security = deps.cfg.security
    check_url(cfg.base_url, security, "base_url")
    if cfg.auth.type == "azure_entra":
        # The client secret is sent there: the same guard as the base URL.
        check_url(cfg.auth.authority_host, security, "auth.authority_host")
    return ProviderRow(
        id=provider_id, name=body.name if body.name is not UNSET else provider_id,
        type=cfg.type, base_url=cfg.base_url, models=list(cfg.models), priority=cfg.priority,
        weight=cfg.weight, enabled=cfg.enabled, max_rps=cfg.max_rps,
        max_concurrency=cfg.max_concurrency, timeout_ms=cfg.timeout_ms, hosting=cfg.hosting,
        region=cfg.region, project=cfg.project, api_version=cfg.api_version,
        model_map=dict(cfg.model_map), auth_type=cfg.auth.type,
        auth={k: getattr(cfg.auth, k) for k in _AUTH_PLAIN},
        secrets_enc=sealed.secrets_enc, secret_hints=sealed.hints,
        allow_custom_endpoint=cfg.allow_custom_endpoint)


#: Where a provider's secrets are sent: changing any of these sends them to
#: someone else, so the change must come with the secrets again.
_DESTINATION = ("type", "base_url", "hosting", "region", "project", "auth_type",
                "allow_custom_endpoint")
_DESTINATION_AUTH = ("authority_host", "credentials_file")


def _check_secret_rebind(current: ProviderRow, row: ProviderRow,
                         wanted: dict[str, Any]) -> None:
    """400 ``secret_required`` when the destination changes but a stored secret
    would silently follow it (a base_url edit must not leak the api key)."""
    moved = [f for f in _DESTINATION if getattr(current, f) != getattr(row, f)]
    moved += [f"auth.{f}" for f in _DESTINATION_AUTH
              if current.auth.get(f, "") != row.auth.get(f, "")]
    if not moved:
        return
    kept = secrets.kept(wanted, current)
    if kept:
        raise bad_request(
            f"changing {', '.join(moved)} requires sending the provider's secrets again "
            f"({', '.join(kept)}): the stored ones are not sent to a new destination",
            kept[0], code="secret_required")


async def _check_hosts(row: ProviderRow, deps: Deps) -> None:
    """What the URLs' host names resolve to now (the workers check again
    before every connection)."""
    await check_resolved(row.base_url, deps.cfg.security, "base_url")
    if row.auth_type == "azure_entra":
        await check_resolved(row.auth.get("authority_host", ""), deps.cfg.security,
                             "auth.authority_host")


async def list_providers(req: Request, access: Access, deps: Deps) -> AdminResponse:
    page = page_of(req.query)
    async with deps.store.read() as repos:
        rows, total = await repos.providers.list(page)
    return json_response(200, envelope([provider_view(r) for r in rows], page, total))


async def get_provider(req: Request, access: Access, deps: Deps) -> AdminResponse:
    async with deps.store.read() as repos:
        row = await repos.providers.get(req.params["id"])
    if row is None:
        raise not_found("provider")
    return json_response(200, provider_view(row))


async def create_provider(req: Request, access: Access, deps: Deps) -> AdminResponse:
    body = decode_body(req, ProviderBody)
    if body.id is not UNSET:
        provider_id = body.id
    elif body.name is not UNSET:
        if not _ID_RE.match(body.name):
            raise bad_request("without an id, name is the id: letters, digits, _ and - "
                              "only (at most 64)", "name")
        provider_id = body.name
    else:
        raise bad_request("name is required", "name")
    row = build_row(provider_id, body, None, deps)
    await _check_hosts(row, deps)
    async with deps.repl.write() as w:
        saved = await w.repos.providers.insert(row)
        assert saved is not None
        w.put_provider(saved)
    return json_response(201, provider_view(saved), location=f"{BASE}/{saved.id}")


async def replace_provider(req: Request, access: Access, deps: Deps) -> AdminResponse:
    body = decode_body(req, ProviderBody)
    provider_id = req.params["id"]
    if body.id is not UNSET and body.id != provider_id:
        raise bad_request("id cannot be changed", "id")
    async with deps.repl.write() as w:
        current = await w.repos.providers.get(provider_id)
        if current is None:
            raise not_found("provider")
        row = build_row(provider_id, body, current, deps)
        _check_secret_rebind(current, row, _wanted_secrets(body))
        await _check_hosts(row, deps)
        saved = await w.repos.providers.update(row)
        assert saved is not None
        w.put_provider(saved)
    return json_response(200, provider_view(saved))


async def delete_provider(req: Request, access: Access, deps: Deps) -> AdminResponse:
    provider_id = req.params["id"]
    async with deps.repl.write() as w:
        if await w.repos.providers.get(provider_id) is None:
            raise not_found("provider")
        users = await w.repos.routes.using_provider(provider_id)
        if users:
            aliases = ", ".join(r.model_alias for r in users)
            raise conflict(f"provider is a target of route(s) {aliases}; change them first",
                           "id")
        await w.repos.providers.delete(provider_id)
        w.delete_provider(provider_id)
    return no_content()
