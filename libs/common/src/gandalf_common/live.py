"""The configuration the request path reads, as it is right now.

Static mode (no database: tests, a single process from YAML): providers,
routes and keys come from the YAML once. Managed mode (a database, as with
``gandalf up``): the admin service owns the configuration in PostgreSQL and
replicates it to NATS KV; :class:`LiveConfig` mirrors the buckets, so a
change made through the admin API reaches every service within a moment and
no request ever reads the database.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import msgspec

from .config import (
    GatewayConfig,
    JwtConfig,
    ProviderAuthConfig,
    ProviderConfig,
    RouteConfig,
    RouteTargetConfig,
)
from .crypto import SecretBox
from .kv import KVMirror
from .records import (
    CONFIG_BUCKET,
    JWT_KEY,
    KEYS_BUCKET,
    ORG_PREFIX,
    PROVIDER_PREFIX,
    ROUTE_PREFIX,
    TEAM_PREFIX,
    ClaimMapping,
    JwtSettings,
    KeyRecord,
    OrgRecord,
    ProviderRecord,
    ProviderSecrets,
    RouteRecord,
    RouteTargetRecord,
    TeamRecord,
    encode_record,
    jwt_decoder,
    key_decoder,
    org_decoder,
    provider_decoder,
    route_decoder,
    secrets_decoder,
    team_decoder,
)

log = logging.getLogger("gandalf.live")

#: Called with (kind, id, record or None) after a change: kind is one of
#: "provider", "route", "org", "team", "key", "jwt".
ChangeListener = Callable[[str, str, Any], None]

_DECODERS: list[tuple[str, str, Any]] = [
    (ORG_PREFIX, "org", org_decoder), (TEAM_PREFIX, "team", team_decoder),
    (PROVIDER_PREFIX, "provider", provider_decoder), (ROUTE_PREFIX, "route", route_decoder)]


def is_managed(cfg: GatewayConfig) -> bool:
    """Managed when the deployment has a database (``gandalf up`` always does)."""
    return bool(cfg.database.url) or os.environ.get("GANDALF_MANAGED") == "1"


# ------------------------------------------------------------- conversions


def provider_record(cfg: ProviderConfig, box: SecretBox | None) -> ProviderRecord:
    """A provider as replicated: secrets sealed (bound to the provider id)."""
    secrets = ProviderSecrets(api_key=cfg.api_key, client_secret=cfg.auth.client_secret,
                              secret_access_key=cfg.auth.secret_access_key,
                              session_token=cfg.auth.session_token)
    sealed = ""
    if secrets != ProviderSecrets():
        if box is None:
            raise ValueError("provider secrets need GANDALF_ENCRYPTION_KEY")
        sealed = box.seal(encode_record(secrets), f"provider:{cfg.name}")
    a = cfg.auth
    return ProviderRecord(
        id=cfg.name, type=cfg.type, base_url=cfg.base_url, models=list(cfg.models),
        priority=cfg.priority, weight=cfg.weight, enabled=cfg.enabled, max_rps=cfg.max_rps,
        max_concurrency=cfg.max_concurrency, timeout_ms=cfg.timeout_ms, hosting=cfg.hosting,
        region=cfg.region, project=cfg.project, api_version=cfg.api_version,
        model_map=dict(cfg.model_map), auth_type=a.type or "api_key", tenant_id=a.tenant_id,
        client_id=a.client_id, authority_host=a.authority_host, scope=a.scope,
        credentials_file=a.credentials_file, access_key_id=a.access_key_id,
        secrets_enc=sealed, allow_custom_endpoint=cfg.allow_custom_endpoint)


def provider_config(record: ProviderRecord, box: SecretBox | None) -> ProviderConfig:
    """The worker's view: secrets opened. Only workers call this."""
    secrets = ProviderSecrets()
    if record.secrets_enc:
        if box is None:
            raise ValueError(f"provider {record.id}: secrets are sealed and "
                             "GANDALF_ENCRYPTION_KEY is not set")
        secrets = secrets_decoder.decode(box.open(record.secrets_enc,
                                                  f"provider:{record.id}"))
    auth = ProviderAuthConfig(
        type=record.auth_type, api_key=secrets.api_key, tenant_id=record.tenant_id,
        client_id=record.client_id, client_secret=secrets.client_secret,
        authority_host=record.authority_host or ProviderAuthConfig().authority_host,
        scope=record.scope, credentials_file=record.credentials_file,
        access_key_id=record.access_key_id, secret_access_key=secrets.secret_access_key,
        session_token=secrets.session_token)
    return ProviderConfig(
        name=record.id, type=record.type, base_url=record.base_url, api_key=secrets.api_key,
        models=list(record.models), priority=record.priority, weight=record.weight,
        enabled=record.enabled, max_rps=record.max_rps, max_concurrency=record.max_concurrency,
        timeout_ms=record.timeout_ms, hosting=record.hosting, region=record.region,
        project=record.project, api_version=record.api_version,
        model_map=dict(record.model_map), auth=auth,
        allow_custom_endpoint=record.allow_custom_endpoint)


def route_record(cfg: RouteConfig, route_id: str = "") -> RouteRecord:
    return RouteRecord(
        id=route_id or cfg.model_alias, model_alias=cfg.model_alias, strategy=cfg.strategy,
        cache_ttl_s=cfg.cache_ttl_s,
        targets=[RouteTargetRecord(provider=t.provider, model=t.model, priority=t.priority,
                                   weight=t.weight) for t in cfg.targets])


def route_config(record: RouteRecord) -> RouteConfig:
    return RouteConfig(
        model_alias=record.model_alias, strategy=record.strategy,
        cache_ttl_s=record.cache_ttl_s,
        targets=[RouteTargetConfig(provider=t.provider, model=t.model, priority=t.priority,
                                   weight=t.weight) for t in record.targets])


def jwt_settings(j: JwtConfig) -> JwtSettings:
    """The YAML ``auth.jwt`` section as the replicated settings record."""
    c = j.claims
    return JwtSettings(
        enabled=j.enabled, issuer=j.issuer, audience=list(j.audience), jwks_url=j.jwks_url,
        algorithms=list(j.algorithms), leeway_s=float(j.leeway),
        claims=ClaimMapping(user=c.user, org=c.org, team=c.team, role=c.role),
        default_role=j.default_role, default_org=j.default_org,
        allow_unknown_orgs=j.allow_unknown_orgs)


# ---------------------------------------------------------------- the view


class LiveConfig:
    """Providers, routes, orgs, teams, keys and JWT settings, kept current."""

    def __init__(self, cfg: GatewayConfig, *, managed: bool | None = None) -> None:
        self.cfg = cfg
        self.managed = is_managed(cfg) if managed is None else managed
        self.providers: dict[str, ProviderRecord] = {}
        #: Static mode only: the YAML providers with their plaintext secrets.
        self.static_providers: dict[str, ProviderConfig] = {}
        self.routes: dict[str, RouteRecord] = {}  # by alias
        self.orgs: dict[str, OrgRecord] = {}
        self.teams: dict[str, TeamRecord] = {}
        self.keys: dict[str, KeyRecord] = {}  # by key hash
        self.jwt: JwtSettings | None = None
        self._route_aliases: dict[str, str] = {}  # route id -> alias
        self._listeners: list[ChangeListener] = []
        self._mirrors: list[KVMirror[Any]] = []
        if not self.managed:
            for p in cfg.providers:
                self.static_providers[p.name] = p
                self.providers[p.name] = msgspec.structs.replace(
                    provider_record(msgspec.structs.replace(
                        p, api_key="", auth=ProviderAuthConfig(type=p.auth.type)), None))
            for r in cfg.routes:
                self.routes[r.model_alias] = route_record(r)

    @property
    def loaded(self) -> bool:
        """Static mode always; managed mode once every mirror has loaded."""
        return not self.managed or (bool(self._mirrors)
                                    and all(m.loaded.is_set() for m in self._mirrors))

    def on_change(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    async def start(self, nc: Any, *, keys: bool = False, wait: float = 60.0) -> None:
        """Managed mode: mirror the config bucket (and the keys bucket when
        ``keys``); returns once everything is loaded. Static mode: no-op."""
        if not self.managed:
            return
        config: KVMirror[Any] = KVMirror(CONFIG_BUCKET, self._decode_config)
        config.on_change(lambda key, value: self.forget(key) if value is None else None)
        self._mirrors.append(config)
        await config.start(nc, wait=wait)
        if keys:
            key_mirror: KVMirror[KeyRecord] = KVMirror(
                KEYS_BUCKET, lambda _k, v: key_decoder.decode(v))
            key_mirror.on_change(self._on_key)
            self._mirrors.append(key_mirror)
            # The mirror's dict is the table: lookups need no copy.
            self.keys = key_mirror.entries
            await key_mirror.start(nc, wait=wait)

    async def stop(self) -> None:
        for mirror in self._mirrors:
            await mirror.stop()

    def provider_config(self, name: str, box: SecretBox | None) -> ProviderConfig | None:
        if not self.managed:
            return self.static_providers.get(name)
        record = self.providers.get(name)
        return provider_config(record, box) if record is not None else None

    def route(self, alias: str) -> RouteRecord | None:
        return self.routes.get(alias)

    # ------------------------------------------------------------ changes

    def _notify(self, kind: str, ident: str, value: Any) -> None:
        for listener in self._listeners:
            try:
                listener(kind, ident, value)
            except Exception:  # a listener bug must not stop replication
                log.exception("live config: listener failed on %s %s", kind, ident)

    def _on_key(self, key: str, value: Any) -> None:
        self._notify("key", key, value)

    def _decode_config(self, key: str, raw: bytes) -> Any:
        """Decode and apply one entry (the mirror calls this for every change)."""
        if key == JWT_KEY:
            self.jwt = jwt_decoder.decode(raw)
            self._notify("jwt", key, self.jwt)
            return self.jwt
        for prefix, kind, decoder in _DECODERS:
            if key.startswith(prefix):
                record = decoder.decode(raw)
                self._apply(kind, record)
                return record
        return None

    def _apply(self, kind: str, record: Any) -> None:
        if kind == "org":
            self.orgs[record.id] = record
        elif kind == "team":
            self.teams[record.id] = record
        elif kind == "provider":
            self.providers[record.id] = record
        elif kind == "route":
            old = self._route_aliases.get(record.id)
            if old is not None and old != record.model_alias:
                self.routes.pop(old, None)
            self._route_aliases[record.id] = record.model_alias
            self.routes[record.model_alias] = record
        self._notify(kind, record.id, record)

    def forget(self, key: str) -> None:
        """A config entry was deleted (called by the mirror's listener)."""
        from .records import from_kv_token

        if key == JWT_KEY:
            self.jwt = None
            self._notify("jwt", key, None)
            return
        for prefix, kind, _decoder in _DECODERS:
            if not key.startswith(prefix):
                continue
            ident = from_kv_token(key[len(prefix):])
            if kind == "org":
                self.orgs.pop(ident, None)
            elif kind == "team":
                self.teams.pop(ident, None)
            elif kind == "provider":
                self.providers.pop(ident, None)
            elif kind == "route":
                alias = self._route_aliases.pop(ident, None)
                if alias is not None:
                    self.routes.pop(alias, None)
            self._notify(kind, ident, None)
            return


class LiveService:
    """Starts a process's shared :class:`LiveConfig` (a runtime ``BusService``;
    put it before the services that read it)."""

    def __init__(self, live: LiveConfig, *, keys: bool) -> None:
        self.live = live
        self.keys = keys

    async def start(self, nc: Any) -> None:
        await self.live.start(nc, keys=self.keys)

    async def stop(self, timeout: float) -> None:
        await self.live.stop()
