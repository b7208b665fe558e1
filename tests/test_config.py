"""Tests for gandalf_common.config: loading, env expansion, validation."""

from pathlib import Path

import pytest

from gandalf_common.config import (
    ConfigError,
    GatewayConfig,
    ProviderConfig,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
)

# The original product's sample config, unchanged except that the admin key
# uses the default syntax (the original left an unset variable literal).
SAMPLE = """\
server:
  addr: ":8080"
  read_timeout: 30s
  write_timeout: 120s
  shutdown_timeout: 30s

database:
  dsn: gandalf.db

providers:
  - name: openai
    base_url: https://api.openai.com/v1/
    api_key: "${OPENAI_API_KEY}"   # ${NOT_EXPANDED_IN_COMMENTS}
    models: [gpt-4o, gpt-4o-mini]
    priority: 1
  - name: anthropic
    api_key: "${ANTHROPIC_API_KEY:-}"
    models: [claude-sonnet-4-20250514]
  - name: gemini
    api_key: "${GEMINI_API_KEY:-}"
  - name: ollama
    base_url: http://localhost:11434

routes:
  - model_alias: gpt-4o
    targets:
      - provider: openai
        model: gpt-4o
        priority: 1
    strategy: priority
    cache_ttl_s: 300
  - model_alias: claude
    targets:
      - {provider: anthropic, model: claude-sonnet-4-20250514, priority: 1}

rate_limits:
  default_rpm: 60
  default_tpm: 100000

cache:
  enabled: true
  max_size: 10000
  default_ttl: 5m

circuit_breaker:
  enabled: true
  error_threshold: 0.30
  min_samples: 10
  window_seconds: 60
  open_timeout: 30s

keys:
  - name: default-admin
    key: "${GANDALF_ADMIN_KEY:-}"
    org_id: default
    role: admin
"""

MIN_PROVIDER = "providers:\n  - name: openai\n"


def write(tmp_path: Path, text: str, name: str = "gandalf.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def load(tmp_path: Path, text: str, **env: str) -> tuple[GatewayConfig, list[str]]:
    return load_config(write(tmp_path, text), env=env)


def test_sample_config(tmp_path: Path) -> None:
    cfg, warnings = load(tmp_path, SAMPLE, OPENAI_API_KEY="sk-test")
    assert cfg.server.addr == ":8080"
    assert cfg.server.read_timeout == 30.0 and cfg.server.write_timeout == 120.0
    assert [p.name for p in cfg.providers] == ["openai", "anthropic", "gemini", "ollama"]
    openai = cfg.provider("openai")
    assert openai is not None
    assert openai.api_key == "sk-test"
    assert openai.type == "openai"
    assert openai.base_url == "https://api.openai.com/v1"  # trailing slash trimmed
    assert openai.models == ["gpt-4o", "gpt-4o-mini"]
    assert openai.timeout_ms == 60000 and openai.auth.type == "api_key"
    ollama = cfg.provider("ollama")
    assert ollama is not None and ollama.api_key == "" and ollama.type == "ollama"
    gemini = cfg.provider("gemini")
    assert gemini is not None
    assert gemini.base_url == "https://generativelanguage.googleapis.com/v1beta"
    route = cfg.route("gpt-4o")
    assert route is not None
    assert [(t.provider, t.model) for t in route.targets] == [("openai", "gpt-4o")]
    assert route.cache_ttl_s == 300 and route.strategy == "priority"
    assert cfg.route("nope") is None and cfg.provider("nope") is None
    assert cfg.cache.default_ttl == 300.0
    assert cfg.circuit_breaker.enabled is True and cfg.circuit_breaker.open_timeout == 30.0
    assert cfg.keys == []  # GANDALF_ADMIN_KEY unset -> empty key -> skipped
    assert cfg.telemetry.metrics.enabled is True  # deliberate fix
    assert cfg.database.url == ""
    assert any("database.dsn" in w for w in warnings)
    assert not any("unknown config key" in w for w in warnings)


def test_sample_admin_key_bootstrapped_when_set(tmp_path: Path) -> None:
    cfg, warnings = load(tmp_path, SAMPLE, OPENAI_API_KEY="x", GANDALF_ADMIN_KEY="gnd_abc")
    assert len(cfg.keys) == 1
    k = cfg.keys[0]
    assert (k.name, k.key, k.org_id, k.role) == ("default-admin", "gnd_abc", "default", "admin")
    assert not any("gnd_" in w for w in warnings)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    for text in ("", "{}\n", "# only a comment\n"):
        cfg, warnings = load(tmp_path, text)
        assert cfg == GatewayConfig()
        assert warnings == []
    cfg, _ = load(tmp_path, "")
    assert cfg.server.addr == ":8080"
    assert cfg.server.max_body_bytes == 10 * 1024 * 1024
    assert cfg.rate_limits.default_rpm == 60 and cfg.cache.max_size == 10000


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("300ms", 0.3),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("2us", 2e-6),
        ("2µs", 2e-6),
        ("10ns", 1e-8),
        ("0", 0.0),
        ("-1m", -60.0),
        (".5s", 0.5),
        (45, 45.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "30", "30 seconds", "1d", "s", "1h-30m", "abc", "1..5s"])
def test_parse_duration_invalid(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_parse_size() -> None:
    assert parse_size("10MiB") == 10 * 1024 * 1024
    assert parse_size("512KiB") == 512 * 1024
    assert parse_size("1MB") == 1_000_000
    assert parse_size(4096) == 4096
    with pytest.raises(ValueError):
        parse_size("ten megs")


def test_duration_and_size_in_config(tmp_path: Path) -> None:
    cfg, _ = load(tmp_path, "server:\n  read_timeout: 1m30s\n  max_body_bytes: 512KiB\n")
    assert cfg.server.read_timeout == 90.0
    assert cfg.server.max_body_bytes == 512 * 1024


def test_invalid_duration_names_path_and_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        load(tmp_path, "server:\n  addr: ':1'\n  read_timeout: 30 seconds\n")
    msg = str(ei.value)
    assert "server.read_timeout: invalid duration '30 seconds'" in msg
    assert "gandalf.yaml:3:" in msg
    assert ei.value.line == 3 and ei.value.path == "server.read_timeout"


def test_unset_variable_names_var_and_line(tmp_path: Path) -> None:
    text = "providers:\n  - name: openai\n    api_key: ${OPENAI_KEY}\n"
    with pytest.raises(ConfigError) as ei:
        load(tmp_path, text)
    msg = str(ei.value)
    assert "gandalf.yaml:3:" in msg
    assert "environment variable OPENAI_KEY is not set" in msg
    assert "${OPENAI_KEY:-}" in msg


def test_default_syntax(tmp_path: Path) -> None:
    text = (
        "server:\n  addr: ${ADDR:-:9000}\n"
        "redis:\n  url: ${REDIS_URL:-}\n"
        "auth:\n  admin_key: ${ADMIN:-fallback}\n"
    )
    cfg, _ = load(tmp_path, text)
    assert cfg.server.addr == ":9000"
    assert cfg.redis.url == ""
    assert cfg.auth.admin_key == "fallback"
    cfg, _ = load(tmp_path, text, ADDR=":7000", ADMIN="")
    assert cfg.server.addr == ":7000"
    assert cfg.auth.admin_key == "fallback"  # set-but-empty uses the default, like the shell


def test_escape_and_comments_not_expanded(tmp_path: Path) -> None:
    text = "# ${UNSET_IN_COMMENT}\nauth:\n  admin_key: \"$${LITERAL}\"  # ${ALSO_UNSET}\n"
    cfg, _ = load(tmp_path, text)
    assert cfg.auth.admin_key == "${LITERAL}"


def test_injection_attempt_stays_a_string(tmp_path: Path) -> None:
    text = "keys:\n  - name: k\n    key: ${EVIL}\n"
    cfg, _ = load(tmp_path, text, EVIL="gnd_x\n    role: admin")
    assert len(cfg.keys) == 1
    assert cfg.keys[0].key == "gnd_x\n    role: admin"
    assert cfg.keys[0].role == "member"
    cfg, _ = load(tmp_path, "providers:\n  - name: openai\n    api_key: ${V}\n", V="[1, 2]")
    assert cfg.providers[0].api_key == "[1, 2]"
    # A flow value that would open a mapping in a raw-text expansion.
    cfg, _ = load(tmp_path, "server:\n  addr: ${V}\n", V="{a: b}")
    assert cfg.server.addr == "{a: b}"


def test_plain_scalar_is_re_resolved_after_expansion(tmp_path: Path) -> None:
    text = MIN_PROVIDER + "    timeout_ms: ${T}\n    max_rps: ${R}\n    enabled: ${E}\n"
    cfg, _ = load(tmp_path, text, T="8080", R="0x1F", E="no")
    # "0x1F" and "no" only become 31 / False through YAML's implicit resolver.
    assert cfg.providers[0].timeout_ms == 8080
    assert cfg.providers[0].max_rps == 31
    assert cfg.providers[0].enabled is False
    # Quoted scalars stay strings, so "no" is not a bool there.
    with pytest.raises(ConfigError, match=r"providers\[0\]\.enabled: expected bool, got 'no'"):
        load(tmp_path, MIN_PROVIDER + '    enabled: "${E}"\n', E="no")
    # An explicitly tagged string is not re-typed.
    cfg, _ = load(tmp_path, "auth:\n  admin_key: !!str ${K}\n", K="123")
    assert cfg.auth.admin_key == "123"


def test_unknown_key_warns(tmp_path: Path) -> None:
    cfg, warnings = load(tmp_path, "server:\n  foo: 1\nbogus: true\n" + MIN_PROVIDER
                         + "    colour: red\n")
    assert "unknown config key server.foo (ignored)" in warnings
    assert "unknown config key bogus (ignored)" in warnings
    assert "unknown config key providers[0].colour (ignored)" in warnings
    assert cfg.server.addr == ":8080"


def test_address_alias(tmp_path: Path) -> None:
    cfg, warnings = load(tmp_path, "server:\n  address: 127.0.0.1:9999\n")
    assert cfg.server.addr == "127.0.0.1:9999"
    assert warnings == []


def test_bad_type_names_path_and_value(tmp_path: Path) -> None:
    text = "providers:\n  - name: openai\n  - name: anthropic\n    timeout_ms: abc\n"
    with pytest.raises(ConfigError) as ei:
        load(tmp_path, text)
    msg = str(ei.value)
    assert "providers[1].timeout_ms: expected int, got 'abc'" in msg
    assert "gandalf.yaml:4:" in msg
    with pytest.raises(ConfigError, match=r"cache\.enabled: expected bool, got 'maybe'"):
        load(tmp_path, "cache:\n  enabled: maybe\n")
    with pytest.raises(ConfigError, match=r"providers: expected a list"):
        load(tmp_path, "providers:\n  name: openai\n")


def test_missing_required_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"providers\[0\]: missing required key 'name'"):
        load(tmp_path, "providers:\n  - type: openai\n")


def test_unknown_provider_type_is_an_error_naming_the_valid_ones(tmp_path: Path) -> None:
    # The original skipped it with a warning (a typo then surfaced as "no
    # targets left"); now the start stops on the line that is wrong.
    text = (
        "providers:\n  - name: openai\n  - name: mistral\n"
        "routes:\n  - model_alias: m\n    targets:\n"
        "      - {provider: mistral, model: large}\n      - {provider: openai, model: gpt-4o}\n"
    )
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    message = str(err.value)
    assert "providers[1].type" in message and "unknown provider type 'mistral'" in message
    assert "openai" in message and "anthropic" in message and "gemini" in message


def test_route_to_unknown_provider_is_error(tmp_path: Path) -> None:
    text = MIN_PROVIDER + "routes:\n  - model_alias: m\n    targets:\n" \
        "      - provider: openai\n        model: a\n      - provider: opnai\n        model: b\n"
    with pytest.raises(ConfigError) as ei:
        load(tmp_path, text)
    assert "routes[0].targets[1].provider: unknown provider 'opnai'" in str(ei.value)
    assert ei.value.line == 8


def test_duplicates_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"duplicate provider name 'openai'"):
        load(tmp_path, MIN_PROVIDER + "  - name: openai\n")
    text = MIN_PROVIDER + "routes:\n" + "  - model_alias: a\n    targets: [{provider: openai, " \
        "model: x}]\n" * 2
    with pytest.raises(ConfigError, match=r"routes\[1\]\.model_alias: duplicate route alias"):
        load(tmp_path, text)


@pytest.mark.parametrize("strategy", ["priority", "weighted", "least-latency"])
def test_strategy_accepted(tmp_path: Path, strategy: str) -> None:
    text = MIN_PROVIDER + f"routes:\n  - model_alias: a\n    strategy: {strategy}\n" \
        "    targets: [{provider: openai, model: x}]\n"
    cfg, _ = load(tmp_path, text)
    assert cfg.routes[0].strategy == strategy


def test_strategy_invalid(tmp_path: Path) -> None:
    text = MIN_PROVIDER + "routes:\n  - model_alias: a\n    strategy: random\n" \
        "    targets: [{provider: openai, model: x}]\n"
    with pytest.raises(ConfigError, match=r"routes\[0\]\.strategy: invalid value 'random'"):
        load(tmp_path, text)


def test_targets_sorted_by_priority_stably(tmp_path: Path) -> None:
    text = MIN_PROVIDER + "routes:\n  - model_alias: a\n    targets:\n" \
        "      - {provider: openai, model: c, priority: 2}\n" \
        "      - {provider: openai, model: a, priority: 1}\n" \
        "      - {provider: openai, model: d, priority: 2}\n" \
        "      - {provider: openai, model: b, priority: 1}\n"
    cfg, _ = load(tmp_path, text)
    assert [t.model for t in cfg.routes[0].targets] == ["a", "b", "c", "d"]


def test_secrets_not_in_repr() -> None:
    cfg, _ = parse_config(
        "auth:\n  admin_key: adminsecret\n"
        "database:\n  url: postgres://user:dbsecret@db/gandalf\n"
        "providers:\n  - name: openai\n    api_key: sk-topsecret\n"
        "    auth: {type: azure_entra, tenant_id: t, client_id: cid, client_secret: clientsecret}\n"
        "keys:\n  - {name: k, key: gnd_keysecret}\n",
        env={},
    )
    p = cfg.providers[0]
    assert p.api_key == "sk-topsecret"
    assert p.auth.client_secret == "clientsecret"
    for text in (repr(cfg), str(cfg), repr(p), str(p.auth), f"{cfg.keys}"):
        for secret in ("sk-topsecret", "clientsecret", "adminsecret", "dbsecret",
                       "gnd_keysecret"):
            assert secret not in text
    assert "cid" in repr(p) and "openai" in repr(p)  # non-secrets still shown
    assert "***" in repr(p)


def test_auth_api_key_overrides_and_type_inferred(tmp_path: Path) -> None:
    text = (
        "providers:\n  - name: openai\n    api_key: top\n    auth: {api_key: inner}\n"
        "  - name: gem\n    type: gemini\n    hosting: vertex\n    project: p\n"
        "    region: us-central1\n"
        "  - name: claude\n    type: anthropic\n    hosting: bedrock\n    region: eu-west-1\n"
        "  - name: az\n    type: openai\n    hosting: azure\n"
        "    base_url: https://res.openai.azure.com\n"
    )
    cfg, _ = load(tmp_path, text)
    openai, gem, claude, az = cfg.providers
    assert openai.api_key == "inner"
    assert gem.auth.type == "gcp_oauth" and claude.auth.type == "aws_sigv4"
    # Cloud defaults: the regional endpoints, and a GA Azure api-version.
    assert gem.base_url == "https://us-central1-aiplatform.googleapis.com"
    assert claude.base_url == "https://bedrock-runtime.eu-west-1.amazonaws.com"
    assert az.api_version == "2024-10-21" and openai.api_version == ""
    with pytest.raises(ConfigError, match=r"providers\[0\]\.auth\.type: invalid value 'magic'"):
        load(tmp_path, MIN_PROVIDER + "    auth: {type: magic}\n")


@pytest.mark.parametrize(("provider", "message"), [
    ("type: openai\n    hosting: bedrock\n    region: r",
     r"providers\[0\]\.hosting: hosting 'bedrock' is not available for type 'openai'"),
    ("type: gemini\n    hosting: vertex\n    region: r",
     r"providers\[0\]\.project: hosting vertex needs a project"),
    ("type: anthropic\n    hosting: bedrock",
     r"providers\[0\]\.region: hosting bedrock needs a region"),
    ("type: openai\n    hosting: azure",
     r"providers\[0\]\.base_url: hosting azure needs base_url"),
    ("type: openai\n    auth: {type: azure_entra, tenant_id: t}",
     r"providers\[0\]\.auth\.client_id: azure_entra auth needs"),
])
def test_hosting_requirements(tmp_path: Path, provider: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, f"providers:\n  - name: p\n    {provider}\n")


def test_keys_validation(tmp_path: Path) -> None:
    text = "keys:\n  - {name: a, key: ''}\n  - {name: b, key: plain, role: viewer}\n"
    cfg, warnings = load(tmp_path, text)
    assert [k.name for k in cfg.keys] == ["b"]
    assert any("keys[1]" in w and "gnd_" in w for w in warnings)
    assert not any("plain" in w for w in warnings)  # key material never in warnings
    with pytest.raises(ConfigError, match=r"keys\[0\]\.role: invalid value 'root'"):
        load(tmp_path, "keys:\n  - {key: gnd_x, role: root}\n")


def test_cross_checks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"rate_limits\.default_rpm: must not be negative"):
        load(tmp_path, "rate_limits:\n  default_rpm: -1\n")
    with pytest.raises(ConfigError, match=r"nats\.url: must start with nats://"):
        load(tmp_path, "nats:\n  url: http://localhost:4222\n")
    cfg, _ = load(tmp_path, "nats:\n  url: nats://localhost:4222\n")
    assert cfg.nats.url == "nats://localhost:4222"


def test_zero_values_become_defaults(tmp_path: Path) -> None:
    text = "circuit_breaker:\n  error_threshold: 0\n  min_samples: 0\n  window_seconds: 0\n" \
        "  open_timeout: 0s\ntelemetry:\n  tracing: {endpoint: '', sample_rate: 0}\n"
    cfg, _ = load(tmp_path, text)
    cb = cfg.circuit_breaker
    assert (cb.error_threshold, cb.min_samples, cb.window_seconds, cb.open_timeout) == (
        0.30, 10, 60, 30.0)
    assert cfg.telemetry.tracing.endpoint == "localhost:4317"
    assert cfg.telemetry.tracing.sample_rate == 0.1


def test_postgres_dsn_used_as_url(tmp_path: Path) -> None:
    cfg, warnings = load(tmp_path, "database:\n  dsn: postgresql://u@h/db\n")
    assert cfg.database.url == "postgresql://u@h/db"
    assert not any("database" in w for w in warnings)


def test_duplicate_yaml_key_is_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"gandalf\.yaml:3: server\.addr: key is defined twice"):
        load(tmp_path, "server:\n  addr: ':1'\n  addr: ':2'\n")


def test_yaml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"gandalf\.yaml:3: invalid YAML"):
        load(tmp_path, "server:\n  addr: x\n  - y\n")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml", env={})


def test_lookup_is_dict_backed() -> None:
    cfg, _ = parse_config(MIN_PROVIDER, env={})
    assert isinstance(cfg.provider("openai"), ProviderConfig)
    assert cfg._providers_by_name is cfg._providers_by_name  # built once, cached


def test_zero_means_default_is_resolved_once_at_load(tmp_path: Path) -> None:
    """The services read these values as they are: 0 in the YAML (the
    original's "use the default") becomes the declared default here."""
    cfg, _ = load(tmp_path, """
server: {read_timeout: 0, write_timeout: 0, shutdown_timeout: 0, stream_keepalive: 0,
         stream_idle_timeout: 0}
cache: {default_ttl: 0, max_size: 0}
""")
    s = cfg.server
    assert (s.read_timeout, s.write_timeout, s.shutdown_timeout, s.stream_keepalive,
            s.stream_idle_timeout) == (30.0, 120.0, 30.0, 15.0, 300.0)
    assert (cfg.cache.default_ttl, cfg.cache.max_size) == (300.0, 10000)
    cfg, _ = load(tmp_path, "server: {shutdown_timeout: 5s}\n")
    assert cfg.server.shutdown_timeout == 5.0
