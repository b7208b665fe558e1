"""What the admin service replicates to every service through NATS KV.

Two buckets (history 1, file storage):

- ``gandalf_keys``: one entry per API key, keyed by the SHA-256 hex of the
  plaintext (the lookup the ingress does on every request);
- ``gandalf_config``: ``org.<id>``, ``team.<id>``, ``provider.<id>``,
  ``route.<id>`` and ``auth.jwt`` (ids are encoded with :func:`kv_token`,
  as KV keys allow only ``[-/_=.a-zA-Z0-9]``).

Values are msgpack-encoded Structs below. Same evolution rules as
``contract``: frozen, kw_only, new fields get defaults. Provider secrets
are AES-GCM ciphertext (:mod:`gandalf_common.crypto`); only workers decrypt.
``None`` in a limit means "inherit", ``0`` means "unlimited".
"""

from __future__ import annotations

import base64
from typing import Final

import msgspec
from msgspec import Struct

KEYS_BUCKET: Final = "gandalf_keys"
CONFIG_BUCKET: Final = "gandalf_config"

ORG_PREFIX: Final = "org."
TEAM_PREFIX: Final = "team."
PROVIDER_PREFIX: Final = "provider."
ROUTE_PREFIX: Final = "route."
JWT_KEY: Final = "auth.jwt"


def kv_token(value: str) -> str:
    """A KV-safe, reversible key part for any id (base64url, no padding)."""
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def config_key(prefix: str, ident: str) -> str:
    """The ``gandalf_config`` key of one record: ``config_key(ROUTE_PREFIX, id)``."""
    return prefix + kv_token(ident)


def spend_key(scope: str, ident: str) -> str:
    """The spend bucket's key of a budget scope: ``key.<id>``, ``team.<id>``,
    ``org.<id>`` (written by the usage service, read by the ingress)."""
    return f"{scope}.{kv_token(ident)}"


def from_kv_token(token: str) -> str:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()


class Limits(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Per-level limits; ``None`` inherits from the parent level."""

    allowed_models: list[str] | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_budget: float | None = None
    #: daily | weekly | monthly | lifetime
    budget_period: str | None = None


class OrgRecord(Struct, frozen=True, kw_only=True, omit_defaults=True):
    id: str
    name: str
    limits: Limits = Limits()


class TeamRecord(Struct, frozen=True, kw_only=True, omit_defaults=True):
    id: str
    org_id: str
    name: str
    limits: Limits = Limits()


class KeyRecord(Struct, frozen=True, kw_only=True, omit_defaults=True):
    id: str
    key_hash: str
    key_prefix: str
    org_id: str
    role: str = "member"
    name: str | None = None
    user_id: str | None = None
    team_id: str | None = None
    limits: Limits = Limits()
    #: Unix epoch seconds; None = never.
    expires_at: float | None = None
    blocked: bool = False


class RouteTargetRecord(Struct, frozen=True, kw_only=True, omit_defaults=True):
    provider: str
    model: str
    priority: int = 0
    weight: int = 1


class RouteRecord(Struct, frozen=True, kw_only=True, omit_defaults=True):
    id: str
    model_alias: str
    targets: list[RouteTargetRecord]
    strategy: str = "priority"
    cache_ttl_s: int = 0


class ProviderRecord(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A provider instance; secrets only as ciphertext in ``secrets_enc``
    (msgpack of :class:`ProviderSecrets`, sealed with the gateway's key)."""

    id: str
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
    tenant_id: str = ""
    client_id: str = ""
    authority_host: str = ""
    scope: str = ""
    credentials_file: str = ""
    access_key_id: str = ""
    secrets_enc: str = ""
    allow_custom_endpoint: bool = False


class ProviderSecrets(Struct, frozen=True, kw_only=True, omit_defaults=True):
    api_key: str = ""
    client_secret: str = ""
    secret_access_key: str = ""
    session_token: str = ""


class ClaimMapping(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Dot paths into the JWT claims (``resource_access.gandalf.roles``)."""

    user: str = "sub"
    org: str = "org_id"
    team: str = "team_id"
    role: str = "role"


class JwtSettings(Struct, frozen=True, kw_only=True, omit_defaults=True):
    enabled: bool = False
    issuer: str = ""
    audience: list[str] = []
    jwks_url: str = ""
    algorithms: list[str] = msgspec.field(default_factory=lambda: ["RS256", "ES256"])
    leeway_s: float = 60.0
    claims: ClaimMapping = ClaimMapping()
    #: Used when the token has no role / org claim ("" org: refuse the token).
    default_role: str = "member"
    default_org: str = ""
    allow_unknown_orgs: bool = False


encode_record = msgspec.msgpack.Encoder().encode
key_decoder = msgspec.msgpack.Decoder(KeyRecord)
org_decoder = msgspec.msgpack.Decoder(OrgRecord)
team_decoder = msgspec.msgpack.Decoder(TeamRecord)
provider_decoder = msgspec.msgpack.Decoder(ProviderRecord)
route_decoder = msgspec.msgpack.Decoder(RouteRecord)
jwt_decoder = msgspec.msgpack.Decoder(JwtSettings)
secrets_decoder = msgspec.msgpack.Decoder(ProviderSecrets)
