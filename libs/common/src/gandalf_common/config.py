"""Gateway configuration: typed structs, loader and validation.

Accepts the original product's YAML unchanged; see ``configload`` for parsing
and ``${VAR}`` expansion. Durations are float seconds.
"""

import functools
import os
import re
from collections.abc import Mapping
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


def _safe_rich_repr(self: Any) -> list[tuple[str, Any]]:
    return [(f, _shown(self, f)) for f in self.__struct_fields__]


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
    #: Requests one gateway process handles at once; more are refused at
    #: once with 503 ``server_busy`` (probes excepted). 0 = unlimited.
    max_inflight: int = 4096
    #: Edge limits against unauthenticated resource exhaustion (per process).
    #: A request head larger than this, or with more header lines, is 431.
    max_header_bytes: ByteSize = 64 * 1024
    max_headers: int = 100
    #: The request line and headers must arrive within this (slowloris).
    header_timeout: Duration = 5.0
    #: An idle keep-alive connection is closed after this.
    keepalive_timeout: Duration = 120.0
    #: Open client connections per process; more get 503 ``server_busy``.
    #: Also capped below the process's open-file limit. 0 = only that cap.
    max_connections: int = 10000


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
    #: The org of tokens without an org claim; "" refuses them (401). Such a
    #: token never becomes a global admin (role admin in org ``default``).
    default_org: str = ""
    #: Accept org claims naming an org the gateway does not know (managed
    #: mode); false refuses them with 401.
    allow_unknown_orgs: bool = False


class AuthConfig(_Base, kw_only=True, frozen=True):
    _secret_fields = frozenset({"admin_key"})
    admin_key: str = ""
    jwt: JwtConfig = msgspec.field(default_factory=JwtConfig)


class SecurityConfig(_Base, kw_only=True, frozen=True):
    """Where provider base URLs may point: checked on every admin write (URL
    text and resolved addresses) and by the workers right before connecting
    (see ``netguard``)."""

    #: Hosts (``api.openai.com``, ``*.openai.azure.com``) or CIDRs; empty = any
    #: host except cloud metadata and link-local addresses. A CIDR here also
    #: permits its addresses at connect time whatever the switches below say.
    upstream_allowlist: list[str] = []
    #: Refuse 169.254.0.0/16, fe80::/10, metadata host names and every IPv6
    #: form that embeds such an address (NAT64, mapped, 6to4, Teredo).
    block_metadata: bool = True
    #: Also refuse loopback, private, unique-local and CGNAT addresses. Off by
    #: default: local model servers (127.0.0.1, 10.x) are common upstreams.
    block_private: bool = False


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


class CoalescingConfig(_Base, kw_only=True, frozen=True):
    """Identical deterministic non-streaming chat requests in flight at the
    same time share one upstream call (deterministic as the cache decides:
    ``n`` <= 1 and a seed, or a temperature <= ``cache.max_temperature``)."""

    enabled: bool = True


class UsageConfig(_Base, kw_only=True, frozen=True):
    """The usage service. ``started_deadline``: a request admitted (its
    ``started`` event stored) with no ``finished`` event this long after the
    usage service saw it is billed from its admission estimate (a flagged,
    provisional row; a later finished event settles it). 0 (default):
    ``server.write_timeout`` + 60 s, past the longest a live request runs."""

    started_deadline: Duration = 0.0

    def deadline_s(self, server: ServerConfig) -> float:
        return self.started_deadline or server.write_timeout + 60.0


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
    #: Vertex/Bedrock with the host's own credentials (ADC, instance role):
    #: permit a base_url other than the cloud's official endpoint.
    allow_custom_endpoint: bool = False


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
    coalescing: CoalescingConfig = msgspec.field(default_factory=CoalescingConfig)
    usage: UsageConfig = msgspec.field(default_factory=UsageConfig)
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



def _validator(ctx: ConvertContext) -> Any:
    from .config_validate import Validator  # the rules live in their own module

    return Validator(ctx)


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
    return _validator(ctx).run(raw), ctx.warnings


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
