"""JWT settings in their three forms: the YAML ``auth.jwt`` (``JwtConfig``),
the replicated record (``records.JwtSettings``) and the JSON document stored
in ``auth_settings`` and shown by the API (every field, defaults included)."""

from __future__ import annotations

from typing import Any

import msgspec

from gandalf_common.config import JwtClaimsConfig, JwtConfig
from gandalf_common.live import jwt_settings
from gandalf_common.records import JwtSettings

_decode = msgspec.json.Decoder(JwtSettings).decode


def jwt_from_config(j: JwtConfig) -> JwtSettings:
    return jwt_settings(j)


def config_from_jwt(s: JwtSettings) -> JwtConfig:
    c = s.claims
    return JwtConfig(
        enabled=s.enabled, issuer=s.issuer, audience=list(s.audience), jwks_url=s.jwks_url,
        algorithms=list(s.algorithms), leeway=s.leeway_s,
        claims=JwtClaimsConfig(user=c.user, org=c.org, team=c.team, role=c.role),
        default_role=s.default_role, default_org=s.default_org,
        allow_unknown_orgs=s.allow_unknown_orgs)


def jwt_from_json(raw: bytes) -> JwtSettings:
    return _decode(raw)


def jwt_to_json(s: JwtSettings) -> bytes:
    return msgspec.json.encode(jwt_view(s))


def jwt_view(s: JwtSettings) -> dict[str, Any]:
    """Every field, defaults included (the record's encoding omits them)."""
    c = s.claims
    return {
        "enabled": s.enabled, "issuer": s.issuer, "audience": list(s.audience),
        "jwks_url": s.jwks_url, "algorithms": list(s.algorithms), "leeway_s": s.leeway_s,
        "claims": {"user": c.user, "org": c.org, "team": c.team, "role": c.role},
        "default_role": s.default_role, "default_org": s.default_org,
        "allow_unknown_orgs": s.allow_unknown_orgs,
    }


def is_configured(j: JwtConfig) -> bool:
    """Whether the YAML says anything about JWT (the defaults are not bootstrapped)."""
    return j.enabled or bool(j.issuer or j.jwks_url)
