"""The YAML loader's validation rules, applied to admin API bodies.

Providers and JWT settings sent to the API pass the same checks (and get
the same defaults and messages) as those read from the YAML file: we run
``gandalf_common.config``'s validator on a one-entry config, then translate
its key path (``providers[0].hosting``) to the API field (``hosting``).
"""

from __future__ import annotations

from gandalf_common.config import ConfigError, JwtConfig, ProviderConfig
from gandalf_common.config_validate import Validator as _Validator
from gandalf_common.configload import ConfigLoader, ConvertContext

from .errors import bad_request


def _validator() -> _Validator:
    ctx = ConvertContext(ConfigLoader(""), "admin", {})
    # The validator walks a failing path up until it finds the key's YAML
    # line; without a YAML file, give it the roots to stop at (it would loop).
    ctx.lines.update({"providers[0]": None, "auth.jwt": None})
    return _Validator(ctx)


def _param(path: str, prefix: str, renames: dict[str, str] | None = None) -> str:
    name = path.removeprefix(prefix)
    return (renames or {}).get(name, name)


def check_provider(p: ProviderConfig) -> ProviderConfig:
    """Validated and normalised (type, hosting, base URL default, auth type)."""
    try:
        out, dropped = _validator().providers([p])
    except ConfigError as exc:
        raise bad_request(exc.reason, _param(exc.path, "providers[0].")) from None
    if dropped or not out:
        raise bad_request(f"unknown provider type {p.type or p.name!r} (expected one of "
                          "openai, anthropic, gemini, ollama)", "type")
    return out[0]


def check_jwt(j: JwtConfig) -> JwtConfig:
    try:
        return _validator().jwt(j)
    except ConfigError as exc:
        raise bad_request(exc.reason, _param(exc.path, "auth.jwt.", {"leeway": "leeway_s"})
                          ) from None
