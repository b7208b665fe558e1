"""``/admin/v1/auth/configure`` (JWT/OIDC settings) and ``/admin/v1/cache/purge``.

JWT settings pass ``config.JwtConfig``'s validation (asymmetric algorithms
only: ``none`` and HS* are refused) and are replicated to KV ``auth.jwt``.
POST replaces the whole document; an absent field takes its default, and
``enabled`` defaults to on once issuer and jwks_url are set (as in the YAML).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from gandalf_common import contract
from gandalf_common.config import JwtClaimsConfig, JwtConfig
from gandalf_common.contract import AdminResponse, CachePurge
from gandalf_common.records import JwtSettings

from ..access import Access
from ..cfgcheck import check_jwt
from ..deps import Deps
from ..errors import bad_request
from ..jwt_settings import jwt_from_config, jwt_from_json, jwt_to_json, jwt_view
from ..urlcheck import check_resolved, check_url
from ..validate import ModelName
from ..wire import Request, decode_body, json_response, no_content

Text = Annotated[str, Meta(max_length=2048)]


class ClaimsBody(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    user: Text = "sub"
    org: Text = "org_id"
    team: Text = "team_id"
    role: Text = "role"


class JwtBody(Struct, kw_only=True, forbid_unknown_fields=True):
    enabled: bool | UnsetType = UNSET
    issuer: Text = ""
    audience: Annotated[list[Text], Meta(max_length=100)] = []
    jwks_url: Text = ""
    algorithms: Annotated[list[Text], Meta(max_length=20)] = msgspec.field(
        default_factory=lambda: ["RS256", "ES256"])
    leeway_s: Annotated[float, Meta(ge=0, le=86400)] = 60.0
    claims: ClaimsBody = ClaimsBody()
    default_role: Text = "member"
    #: "" (the default): tokens without an org claim are refused.
    default_org: Annotated[str, Meta(max_length=128,
                                     pattern=r"^([A-Za-z0-9][A-Za-z0-9._:@-]*)?$")] = ""
    allow_unknown_orgs: bool = False


class PurgeBody(Struct, kw_only=True, forbid_unknown_fields=True):
    model: ModelName | UnsetType = UNSET
    key_id: Annotated[str, Meta(max_length=128)] | UnsetType = UNSET


async def get_jwt(req: Request, access: Access, deps: Deps) -> AdminResponse:
    async with deps.store.read() as repos:
        raw = await repos.auth.get("jwt")
    settings = jwt_from_json(raw) if raw is not None else JwtSettings()
    return json_response(200, jwt_view(settings))


async def configure_jwt(req: Request, access: Access, deps: Deps) -> AdminResponse:
    body = decode_body(req, JwtBody)
    c = body.claims
    cfg = check_jwt(JwtConfig(
        enabled=body.enabled is True, issuer=body.issuer, audience=list(body.audience),
        jwks_url=body.jwks_url, algorithms=list(body.algorithms), leeway=body.leeway_s,
        claims=JwtClaimsConfig(user=c.user, org=c.org, team=c.team, role=c.role),
        default_role=body.default_role, default_org=body.default_org,
        allow_unknown_orgs=body.allow_unknown_orgs))
    if body.enabled is False:
        cfg = JwtConfig(**{**{f: getattr(cfg, f) for f in cfg.__struct_fields__},
                           "enabled": False})
    if cfg.jwks_url:
        # The ingress fetches it: no metadata addresses (the upstream allowlist
        # is for providers, not identity providers).
        check_url(cfg.jwks_url, deps.cfg.security, "jwks_url", use_allowlist=False)
        await check_resolved(cfg.jwks_url, deps.cfg.security, "jwks_url")
    settings = jwt_from_config(cfg)
    async with deps.repl.write() as w:
        if settings.default_org and await w.repos.orgs.get(settings.default_org) is None:
            raise bad_request(f"organization {settings.default_org!r} does not exist",
                              "default_org")
        await w.repos.auth.put("jwt", jwt_to_json(settings))
        w.put_jwt(settings)
    return json_response(200, jwt_view(settings))


async def purge_cache(req: Request, access: Access, deps: Deps) -> AdminResponse:
    body = decode_body(req, PurgeBody, empty_ok=True)
    purge = CachePurge(model=body.model or "", key_id=body.key_id or "")
    await deps.nc.publish(contract.CACHE_PURGE, contract.encode(purge))
    await deps.nc.flush(timeout=5)
    return no_content()
