"""The configuration's rules: defaults that depend on other fields, value
ranges, cross-references and cloud hosting requirements. Every error names
the key path and the line (see :mod:`gandalf_common.configload`)."""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec

from .config import (
    _AUTH_TYPES,
    _BASE_URLS,
    _HOSTED_TYPES,
    _HOSTINGS,
    _PG_SCHEMES,
    _ROLES,
    _STRATEGIES,
    DEFAULT_AZURE_API_VERSION,
    JWT_ALGORITHMS,
    CircuitBreakerConfig,
    DatabaseConfig,
    GatewayConfig,
    JwtConfig,
    KeyConfig,
    ProviderConfig,
    RouteConfig,
)
from .configload import ConfigError, ConvertContext
from .endpoints import endpoint_problem

T = TypeVar("T", bound=msgspec.Struct)



#: Fields where 0 in the YAML means "the default" (as in the original), resolved
#: here, once, at load: the services read the value and never default it again.
SERVER_ZERO_DEFAULTS = ("read_timeout", "write_timeout", "shutdown_timeout",
                        "stream_keepalive", "stream_idle_timeout")
CACHE_ZERO_DEFAULTS = ("default_ttl", "max_size")


def zero_means_default(struct: T, names: tuple[str, ...]) -> T:
    """``struct`` with each named field that is 0 set to its declared default."""
    defaults = {f.name: f.default for f in msgspec.structs.fields(struct)}
    changes = {n: defaults[n] for n in names if not getattr(struct, n)}
    return msgspec.structs.replace(struct, **changes) if changes else struct

class Validator:
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
                  "stream_idle_timeout", "processes", "max_inflight"):
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
            server=msgspec.structs.replace(zero_means_default(s, SERVER_ZERO_DEFAULTS),
                                          addr=s.addr or ":8080"),
            cache=zero_means_default(c.cache, CACHE_ZERO_DEFAULTS),
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
                # The original skipped it with a warning, which surfaced later
                # as "no targets left": a typo must stop the start, naming itself.
                raise self.error(f"unknown provider type {ptype!r} for provider {p.name!r} "
                                 f"(valid types: {', '.join(_BASE_URLS)})", path + ".type")
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
            problem = endpoint_problem(msgspec.structs.replace(
                p, hosting=hosting, base_url=base_url,
                auth=msgspec.structs.replace(p.auth, type=auth_type)))
            if problem is not None:
                raise self.error(problem, path + ".base_url")
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



