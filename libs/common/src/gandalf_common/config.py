"""Gateway configuration: typed structs, loader and validation.

Accepts the original product's YAML unchanged; see ``configload`` for parsing
and ``${VAR}`` expansion. Durations are float seconds.
"""

import functools
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import msgspec

from .configload import (
    ByteSize,
    ConfigError,
    ConvertContext,
    Duration,
    compose_config,
    convert_struct,
    is_null,
    parse_duration,
    parse_size,
)

__all__ = [
    "AuthConfig", "CacheConfig", "CircuitBreakerConfig", "ConfigError", "DatabaseConfig",
    "GatewayConfig", "KeyConfig", "MetricsConfig", "NatsConfig", "ProviderAuthConfig",
    "ProviderConfig", "RateLimitsConfig", "RedisConfig", "RouteConfig", "RouteTargetConfig",
    "ServerConfig", "TelemetryConfig", "TracingConfig", "load_config", "parse_config",
    "parse_duration", "parse_size",
]

# --- secrets-safe repr ----------------------------------------------------------

_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@/\s]+@")


def _shown(obj: Any, name: str) -> Any:
    value = getattr(obj, name)
    if name in obj._secret_fields and value:
        return "***"
    if name in obj._url_fields and isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1***@", value)
    return value


def _safe_repr(self: Any) -> str:
    body = ", ".join(f"{f}={_shown(self, f)!r}" for f in self.__struct_fields__)
    return f"{type(self).__name__}({body})"


def _safe_rich_repr(self: Any) -> Iterator[tuple[str, Any]]:
    for f in self.__struct_fields__:
        yield f, _shown(self, f)


class _Base(msgspec.Struct, kw_only=True, frozen=True):
    # Secrets never reach logs: repr/str/rich show them as '***'.
    _secret_fields: ClassVar[frozenset[str]] = frozenset()
    _url_fields: ClassVar[frozenset[str]] = frozenset()
    __repr__ = _safe_repr
    __rich_repr__ = _safe_rich_repr


# --- structs ----------------------------------------------------------------------


class ServerConfig(_Base, kw_only=True, frozen=True):
    addr: str = ":8080"
    read_timeout: Duration = 30.0
    write_timeout: Duration = 120.0
    shutdown_timeout: Duration = 30.0
    max_body_bytes: ByteSize = 10 * 1024 * 1024
    stream_keepalive: Duration = 15.0
    stream_idle_timeout: Duration = 300.0
    processes: int = 0  # 0 = auto


class NatsConfig(_Base, kw_only=True, frozen=True):
    _url_fields = frozenset({"url"})
    url: str = ""
    max_payload: ByteSize = 8 * 1024 * 1024  # only for an embedded server


class DatabaseConfig(_Base, kw_only=True, frozen=True):
    _url_fields = frozenset({"url", "dsn"})
    dsn: str = ""  # the original's SQLite path; only a postgres URL here is used
    url: str = ""


class RedisConfig(_Base, kw_only=True, frozen=True):
    _url_fields = frozenset({"url"})
    url: str = ""


class JwtClaimsConfig(_Base, kw_only=True, frozen=True):
    """Dot paths into the token's claims (``resource_access.gandalf.role``)."""

    user: str = "sub"
    org: str = "org_id"
    team: str = "team_id"
    role: str = "role"


class JwtConfig(_Base, kw_only=True, frozen=True):
    """JWT/OIDC bearer tokens (anything not starting with ``gnd_``)."""

    enabled: bool = False  # becomes true when issuer and jwks_url are set
    issuer: str = ""
    audience: list[str] = []
    jwks_url: str = ""
    algorithms: list[str] = msgspec.field(default_factory=lambda: ["RS256", "ES256"])
    leeway: Duration = 60.0
    claims: JwtClaimsConfig = msgspec.field(default_factory=JwtClaimsConfig)
    default_role: str = "member"
    default_org: str = "default"


class AuthConfig(_Base, kw_only=True, frozen=True):
    _secret_fields = frozenset({"admin_key"})
    admin_key: str = ""
    jwt: JwtConfig = msgspec.field(default_factory=JwtConfig)


class SecurityConfig(_Base, kw_only=True, frozen=True):
    """Where provider base URLs may point (checked on every admin write)."""

    #: Hosts (``api.openai.com``, ``*.openai.azure.com``) or CIDRs; empty = any
    #: host except cloud metadata and link-local addresses.
    upstream_allowlist: list[str] = []
    #: Refuse 169.254.0.0/16, fe80::/10 and metadata host names.
    block_metadata: bool = True


class RateLimitsConfig(_Base, kw_only=True, frozen=True):
    default_rpm: int = 60
    default_tpm: int = 100000
    #: memory (per process) | redis (shared by every ingress); "" = redis when
    #: redis.url is set, else memory.
    backend: str = ""
    #: Redis unreachable: local (a per-process limiter, logged and counted) or
    #: closed (refuse with 503 until Redis is back).
    on_redis_failure: str = "local"


class CacheConfig(_Base, kw_only=True, frozen=True):
    enabled: bool = True
    max_size: int = 10000
    default_ttl: Duration = 300.0
    #: memory | redis; "" = redis when redis.url is set, else memory.
    backend: str = ""
    #: key (the original: entries are per API key) | org (shared in an org).
    scope: str = "key"
    #: Requests with a seed, or a temperature up to this, are cached.
    max_temperature: float = 0.3
    #: Serve streaming requests from the cache as a synthesized stream.
    stream: bool = True
    #: Semantic cache: the embeddings alias used to embed prompts ("" = off).
    semantic_model: str = ""
    #: Minimum cosine similarity for a semantic hit, in (0, 1].
    semantic_threshold: float = 0.95
    semantic_max_entries: int = 10000


class CircuitBreakerConfig(_Base, kw_only=True, frozen=True):
    enabled: bool = False
    error_threshold: float = 0.30
    min_samples: int = 10
    window_seconds: int = 60
    open_timeout: Duration = 30.0


class RetriesConfig(_Base, kw_only=True, frozen=True):
    """Retries on the same provider instance before failing over (connect
    errors, 408, 429, 5xx; never after the first byte reached the client)."""

    #: Attempts per target, the first included (1 = no retries).
    max_attempts: int = 3
    base: Duration = 0.1
    cap: Duration = 10.0
    #: Retries may add at most this share of a provider's requests (plus
    #: ``budget_min_per_s`` per second), so an outage cannot multiply load.
    budget_ratio: float = 0.2
    budget_min_per_s: float = 1.0


class MetricsConfig(_Base, kw_only=True, frozen=True):
    enabled: bool = True  # deliberate fix: the original had /metrics off by default


class TracingConfig(_Base, kw_only=True, frozen=True):
    enabled: bool = False
    endpoint: str = "localhost:4317"
    sample_rate: float = 0.1


class TelemetryConfig(_Base, kw_only=True, frozen=True):
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    tracing: TracingConfig = msgspec.field(default_factory=TracingConfig)


class PriceConfig(_Base, kw_only=True, frozen=True):
    """USD per 1M tokens."""

    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None


class ProviderAuthConfig(_Base, kw_only=True, frozen=True):
    _secret_fields = frozenset({"api_key", "client_secret", "secret_access_key",
                                "session_token"})
    type: str = ""  # api_key|gcp_oauth|aws_sigv4|azure_entra; inferred at load
    api_key: str = ""
    # azure_entra: OAuth2 client credentials.
    tenant_id: str = ""
    client_id: str = ""
    client_secret: str = ""
    authority_host: str = "https://login.microsoftonline.com"
    scope: str = ""
    # gcp_oauth: a credentials file instead of Application Default Credentials.
    credentials_file: str = ""
    # aws_sigv4: static credentials instead of botocore's default chain.
    access_key_id: str = ""
    secret_access_key: str = ""
    session_token: str = ""


class ProviderConfig(_Base, kw_only=True, frozen=True):
    _secret_fields = frozenset({"api_key"})
    name: str
    type: str = ""
    base_url: str = ""
    api_key: str = ""  # effective key: auth.api_key wins at load time
    models: list[str] = []
    priority: int = 0
    weight: int = 1
    enabled: bool = True
    max_rps: int = 0
    max_concurrency: int = 256
    timeout_ms: int = 0  # connect + time-to-first-byte; 0 becomes 60000 at load
    hosting: str = ""
    region: str = ""
    project: str = ""
    api_version: str = ""  # azure; "" becomes DEFAULT_AZURE_API_VERSION at load
    #: Route target model -> the id the upstream wants (Bedrock model ids and
    #: inference profiles such as ``us.anthropic.claude-3-5-haiku-20241022-v1:0``).
    model_map: dict[str, str] = {}
    #: Prices of this provider's models (override ``pricing``), by model name.
    pricing: dict[str, PriceConfig] = {}
    auth: ProviderAuthConfig = msgspec.field(default_factory=ProviderAuthConfig)


class RouteTargetConfig(_Base, kw_only=True, frozen=True):
    provider: str
    model: str
    priority: int = 0
    weight: int = 1


class RouteConfig(_Base, kw_only=True, frozen=True):
    model_alias: str
    targets: list[RouteTargetConfig]
    strategy: str = "priority"
    cache_ttl_s: int = 0
    #: Opt in to the semantic response cache (needs cache.semantic_model).
    semantic_cache: bool = False
    #: This alias's price, whatever target answers.
    pricing: PriceConfig | None = None


class KeyConfig(_Base, kw_only=True, frozen=True):
    _secret_fields = frozenset({"key"})
    name: str = ""
    key: str = ""
    org_id: str = "default"
    allowed_models: list[str] = []
    role: str = "member"


_ALIASES: dict[type, dict[str, str]] = {ServerConfig: {"address": "addr"}}


class GatewayConfig(_Base, kw_only=True, frozen=True, dict=True):
    # dict=True only so the cached_property lookup tables can live on the instance.
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    nats: NatsConfig = msgspec.field(default_factory=NatsConfig)
    database: DatabaseConfig = msgspec.field(default_factory=DatabaseConfig)
    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    rate_limits: RateLimitsConfig = msgspec.field(default_factory=RateLimitsConfig)
    cache: CacheConfig = msgspec.field(default_factory=CacheConfig)
    circuit_breaker: CircuitBreakerConfig = msgspec.field(default_factory=CircuitBreakerConfig)
    retries: RetriesConfig = msgspec.field(default_factory=RetriesConfig)
    telemetry: TelemetryConfig = msgspec.field(default_factory=TelemetryConfig)
    security: SecurityConfig = msgspec.field(default_factory=SecurityConfig)
    #: insert: YAML entities are created when missing, never changed (the
    #: original); sync: YAML changes to existing entities are applied too.
    bootstrap: str = "insert"
    #: Prices per model (USD per 1M tokens), added to the built-in table.
    pricing: dict[str, PriceConfig] = {}
    providers: list[ProviderConfig] = []
    routes: list[RouteConfig] = []
    keys: list[KeyConfig] = []
    data_dir: str = ""

    @functools.cached_property
    def _providers_by_name(self) -> dict[str, ProviderConfig]:
        return {p.name: p for p in self.providers}

    @functools.cached_property
    def _routes_by_alias(self) -> dict[str, RouteConfig]:
        return {r.model_alias: r for r in self.routes}

    def provider(self, name: str) -> ProviderConfig | None:
        return self._providers_by_name.get(name)

    def route(self, alias: str) -> RouteConfig | None:
        return self._routes_by_alias.get(alias)


# --- validation -------------------------------------------------------------------

_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com/v1",
    "gemini": "https://generativelanguage.googleapis.com/v1beta",
    "ollama": "http://localhost:11434",
}
_HOSTINGS = ("", "azure", "vertex", "bedrock")
#: Which provider types each hosting can carry.
_HOSTED_TYPES = {"azure": ("openai",), "vertex": ("anthropic", "gemini"),
                 "bedrock": ("anthropic",)}
#: Azure OpenAI data-plane API version used when ``api_version`` is not set.
DEFAULT_AZURE_API_VERSION = "2024-10-21"
_AUTH_TYPES = ("api_key", "gcp_oauth", "aws_sigv4", "azure_entra")
_STRATEGIES = ("priority", "weighted", "least-latency")
_ROLES = ("admin", "member", "viewer", "service_account")
#: Asymmetric only: ``none`` and HS* (a shared secret, or a public key abused
#: as one) are never accepted.
JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                  "ES512", "EdDSA")
_PG_SCHEMES = ("postgres://", "postgresql://")


class _Validator:
    def __init__(self, ctx: ConvertContext) -> None:
        self.ctx = ctx
        self.warn = ctx.warnings.append

    def error(self, msg: str, path: str) -> ConfigError:
        # Fall back to the nearest enclosing path with a known line (defaults have none).
        probe = path
        while probe and probe not in self.ctx.lines:
            shorter = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", probe)
            probe = "" if shorter == probe else shorter  # a root key: no line known
        line = self.ctx.lines.get(probe)
        return ConfigError(msg, path=path, line=line, source=self.ctx.source)

    def min(self, value: float, low: float, path: str) -> None:
        if value < low:
            what = "negative" if low == 0 else f"less than {low:g}"
            raise self.error(f"must not be {what}, got {value!r}", path)

    def choice(self, value: str, allowed: tuple[str, ...], path: str) -> str:
        if value not in allowed:
            opts = ", ".join(a for a in allowed if a)
            raise self.error(f"invalid value {value!r} (expected one of {opts})", path)
        return value

    def run(self, c: GatewayConfig) -> GatewayConfig:
        s = c.server
        for f in ("read_timeout", "write_timeout", "shutdown_timeout", "stream_keepalive",
                  "stream_idle_timeout", "processes"):
            self.min(getattr(s, f), 0, f"server.{f}")
        self.min(s.max_body_bytes, 1, "server.max_body_bytes")
        self.min(c.nats.max_payload, 1, "nats.max_payload")
        for url in filter(None, (u.strip() for u in c.nats.url.split(","))):
            if not url.startswith(("nats://", "tls://")):
                raise self.error("must start with nats:// or tls://", "nats.url")
        self.min(c.rate_limits.default_rpm, 0, "rate_limits.default_rpm")
        self.min(c.rate_limits.default_tpm, 0, "rate_limits.default_tpm")
        for name, value in (("default_rpm", c.rate_limits.default_rpm),
                            ("default_tpm", c.rate_limits.default_tpm)):
            if value > 10**9:
                raise self.error(f"absurd limit {value} (at most 1e9)", f"rate_limits.{name}")
        self.choice(c.rate_limits.backend, ("", "memory", "redis"), "rate_limits.backend")
        self.choice(c.rate_limits.on_redis_failure, ("local", "closed"),
                    "rate_limits.on_redis_failure")
        self.choice(c.cache.backend, ("", "memory", "redis"), "cache.backend")
        self.choice(c.cache.scope, ("key", "org"), "cache.scope")
        for name in ("rate_limits.backend", "cache.backend"):
            section, field = name.split(".")
            if getattr(getattr(c, section), field) == "redis" and not c.redis.url:
                raise self.error("redis backend needs redis.url", name)
        self.min(c.cache.max_size, 0, "cache.max_size")
        self.min(c.retries.max_attempts, 1, "retries.max_attempts")
        self.min(c.retries.budget_ratio, 0, "retries.budget_ratio")
        self.min(c.cache.default_ttl, 0, "cache.default_ttl")
        if not 0 < c.cache.semantic_threshold <= 1:
            raise self.error("must be in (0, 1]", "cache.semantic_threshold")
        self.min(c.cache.semantic_max_entries, 0, "cache.semantic_max_entries")
        tracing = c.telemetry.tracing
        tracing = msgspec.structs.replace(
            tracing, endpoint=tracing.endpoint or "localhost:4317",
            sample_rate=tracing.sample_rate or 0.1)  # 0 means default, as the original
        providers, dropped = self.providers(c.providers)
        self.choice(c.bootstrap.strip().lower(), ("insert", "sync"), "bootstrap")
        return msgspec.structs.replace(
            c,
            bootstrap=c.bootstrap.strip().lower(),
            auth=msgspec.structs.replace(c.auth, jwt=self.jwt(c.auth.jwt)),
            server=msgspec.structs.replace(s, addr=s.addr or ":8080"),
            database=self.database(c.database),
            circuit_breaker=self.breaker(c.circuit_breaker),
            telemetry=msgspec.structs.replace(c.telemetry, tracing=tracing),
            providers=providers,
            routes=self.routes(c.routes, {p.name for p in providers}, dropped),
            keys=self.keys(c.keys),
        )

    def jwt(self, j: JwtConfig) -> JwtConfig:
        for i, alg in enumerate(j.algorithms):
            if alg not in JWT_ALGORITHMS:
                raise self.error(f"algorithm {alg!r} is not allowed (asymmetric only: "
                                 f"{', '.join(JWT_ALGORITHMS)})", f"auth.jwt.algorithms[{i}]")
        if not j.algorithms:
            raise self.error("at least one algorithm is needed", "auth.jwt.algorithms")
        self.choice(j.default_role, _ROLES, "auth.jwt.default_role")
        self.min(j.leeway, 0, "auth.jwt.leeway")
        configured = bool(j.issuer and j.jwks_url)
        if j.enabled and not configured:
            raise self.error("JWT needs issuer and jwks_url", "auth.jwt.issuer")
        if (j.enabled or configured) and not j.audience:
            # OIDC tokens always carry aud; without ours to check, any token the
            # issuer minted for any client would do.
            raise self.error("JWT needs an audience (the client id tokens are issued to)",
                             "auth.jwt.audience")
        if j.jwks_url and not j.jwks_url.startswith(("https://", "http://")):
            raise self.error("must be an http(s) URL", "auth.jwt.jwks_url")
        return msgspec.structs.replace(j, enabled=j.enabled or configured)

    def database(self, d: DatabaseConfig) -> DatabaseConfig:
        if not d.dsn:
            return d
        if not d.dsn.startswith(_PG_SCHEMES):
            self.warn("database.dsn is a SQLite path in the original and is ignored; "
                      "set database.url to a postgres:// URL")
            return d
        if d.url and d.url != d.dsn:
            self.warn("database.dsn and database.url both set; using database.url")
            return d
        return msgspec.structs.replace(d, url=d.dsn)

    def breaker(self, b: CircuitBreakerConfig) -> CircuitBreakerConfig:
        p = "circuit_breaker."
        self.min(b.error_threshold, 0, p + "error_threshold")
        if b.error_threshold > 1:
            raise self.error(f"must be a fraction <= 1, got {b.error_threshold!r}",
                             p + "error_threshold")
        self.min(b.min_samples, 0, p + "min_samples")
        self.min(b.window_seconds, 0, p + "window_seconds")
        self.min(b.open_timeout, 0, p + "open_timeout")
        # Zero means "use the default", as in the original.
        return msgspec.structs.replace(
            b, error_threshold=b.error_threshold or 0.30, min_samples=b.min_samples or 10,
            window_seconds=b.window_seconds or 60, open_timeout=b.open_timeout or 30.0)

    def providers(self, raw: list[ProviderConfig]) -> tuple[list[ProviderConfig], set[str]]:
        out: list[ProviderConfig] = []
        seen: dict[str, str] = {}
        dropped: set[str] = set()
        for i, p in enumerate(raw):
            path = f"providers[{i}]"
            if not p.name.strip():
                raise self.error("must not be empty", path + ".name")
            if p.name in seen:
                raise self.error(f"duplicate provider name {p.name!r} (first at "
                                 f"{seen[p.name]})", path + ".name")
            seen[p.name] = path
            ptype = (p.type or p.name).strip().lower()
            if ptype not in _BASE_URLS:
                self.warn(f"{path}: unknown provider type {ptype!r} for provider "
                          f"{p.name!r} (expected one of {', '.join(_BASE_URLS)}); skipped")
                dropped.add(p.name)
                continue
            hosting = self.choice(p.hosting.strip().lower(), _HOSTINGS, path + ".hosting")
            if hosting and ptype not in _HOSTED_TYPES[hosting]:
                raise self.error(f"hosting {hosting!r} is not available for type {ptype!r} "
                                 f"(only {', '.join(_HOSTED_TYPES[hosting])})",
                                 path + ".hosting")
            inferred = {"vertex": "gcp_oauth", "bedrock": "aws_sigv4"}.get(hosting, "api_key")
            auth_type = p.auth.type.strip().lower() or inferred
            self.choice(auth_type, _AUTH_TYPES, path + ".auth.type")
            for f in ("weight", "max_rps", "max_concurrency", "timeout_ms"):
                self.min(getattr(p, f), 0, f"{path}.{f}")
            base_url = self.hosted_base_url(p, ptype, hosting, auth_type, path)
            out.append(msgspec.structs.replace(
                p, type=ptype, hosting=hosting, base_url=base_url,
                api_version=p.api_version.strip() or (DEFAULT_AZURE_API_VERSION
                                                      if hosting == "azure" else ""),
                api_key=p.auth.api_key or p.api_key,
                max_concurrency=p.max_concurrency or 256, timeout_ms=p.timeout_ms or 60000,
                auth=msgspec.structs.replace(p.auth, type=auth_type)))
        return out, dropped

    def hosted_base_url(self, p: ProviderConfig, ptype: str, hosting: str, auth_type: str,
                        path: str) -> str:
        """The base URL, with the cloud defaults and what each hosting requires."""
        if hosting in ("vertex", "bedrock") and not p.region.strip():
            raise self.error(f"hosting {hosting} needs a region", path + ".region")
        if hosting == "vertex" and not p.project.strip():
            raise self.error("hosting vertex needs a project", path + ".project")
        if hosting == "azure" and not p.base_url.strip():
            raise self.error("hosting azure needs base_url (https://<resource>.openai.azure.com)",
                             path + ".base_url")
        if auth_type == "azure_entra":
            for f in ("tenant_id", "client_id", "client_secret"):
                if not getattr(p.auth, f).strip():
                    raise self.error("azure_entra auth needs tenant_id, client_id and "
                                     "client_secret", f"{path}.auth.{f}")
        base = p.base_url.strip()
        if not base and hosting == "vertex":
            region = p.region.strip()
            base = ("https://aiplatform.googleapis.com" if region == "global"
                    else f"https://{region}-aiplatform.googleapis.com")
        elif not base and hosting == "bedrock":
            base = f"https://bedrock-runtime.{p.region.strip()}.amazonaws.com"
        return (base or _BASE_URLS[ptype]).rstrip("/")

    def routes(self, raw: list[RouteConfig], known: set[str], dropped: set[str]
               ) -> list[RouteConfig]:
        out: list[RouteConfig] = []
        seen: dict[str, str] = {}
        for i, r in enumerate(raw):
            path = f"routes[{i}]"
            if not r.model_alias.strip():
                raise self.error("must not be empty", path + ".model_alias")
            if r.model_alias in seen:
                raise self.error(f"duplicate route alias {r.model_alias!r} (first at "
                                 f"{seen[r.model_alias]})", path + ".model_alias")
            seen[r.model_alias] = path
            strategy = self.choice(r.strategy.strip().lower() or "priority", _STRATEGIES,
                                   path + ".strategy")
            self.min(r.cache_ttl_s, 0, path + ".cache_ttl_s")
            if not r.targets:
                raise self.error("route has no targets", path + ".targets")
            targets = []
            for j, t in enumerate(r.targets):
                tpath = f"{path}.targets[{j}]"
                if not t.model.strip():
                    raise self.error("must not be empty", tpath + ".model")
                self.min(t.weight, 0, tpath + ".weight")
                if t.provider in dropped:
                    self.warn(f"{tpath}: provider {t.provider!r} was skipped; target removed")
                    continue
                if t.provider not in known:
                    raise self.error(f"unknown provider {t.provider!r}", tpath + ".provider")
                targets.append(t)
            if not targets:
                raise self.error("no targets left after removing skipped providers",
                                 path + ".targets")
            targets.sort(key=lambda t: t.priority)  # stable: equal priorities keep file order
            out.append(msgspec.structs.replace(r, strategy=strategy, targets=targets))
        return out

    def keys(self, raw: list[KeyConfig]) -> list[KeyConfig]:
        out: list[KeyConfig] = []
        seen: dict[str, str] = {}
        for i, k in enumerate(raw):
            path = f"keys[{i}]"
            if not k.key:
                continue  # e.g. "${GANDALF_ADMIN_KEY:-}" unset: nothing to bootstrap
            role = self.choice(k.role.strip().lower() or "member", _ROLES, path + ".role")
            label = f"{path} ({k.name!r})" if k.name else path
            if k.key in seen:
                self.warn(f"{label}: same key as {seen[k.key]}; ignored")
                continue
            seen[k.key] = path
            if not k.key.startswith("gnd_"):
                self.warn(f"{label}: key does not start with 'gnd_' and can never "
                          "authenticate")
            out.append(msgspec.structs.replace(k, role=role, org_id=k.org_id or "default"))
        return out


# --- public API -------------------------------------------------------------------


def parse_config(
    text: str, env: Mapping[str, str] | None = None, source: str = "<config>"
) -> tuple[GatewayConfig, list[str]]:
    """Parse YAML text into a validated config. Returns (config, warnings)."""
    node, loader = compose_config(text, os.environ if env is None else env, source)
    ctx = ConvertContext(loader, source, _ALIASES)
    if node is None or is_null(node):
        raw = GatewayConfig()  # empty file: all defaults
    else:
        raw = convert_struct(GatewayConfig, node, "", ctx)
    return _Validator(ctx).run(raw), ctx.warnings


def load_config(
    path: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> tuple[GatewayConfig, list[str]]:
    """Read and parse a YAML config file. Returns (config, warnings)."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as e:
        raise ConfigError(f"cannot read config: {e.strerror or e}", source=source) from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"config is not valid UTF-8: {e}", source=source) from e
    return parse_config(text, env, source)
