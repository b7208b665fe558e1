"""Provider type (+ hosting) -> adapter, and auth type -> credentials."""

from __future__ import annotations

from gandalf_common.config import ProviderConfig, SecurityConfig

from .auth import Auth as Auth
from .auth import AwsSigV4, EntraClientCredentials, GoogleADC, HeaderKey, NoAuth
from .base import Provider
from .http import UpstreamHTTP

#: The header an API key goes in, per provider type (Azure: ``api-key``).
_KEY_HEADERS = {"openai": "authorization", "anthropic": "x-api-key",
                "gemini": "x-goog-api-key", "ollama": "authorization"}


def build_auth(cfg: ProviderConfig, security: SecurityConfig | None = None) -> Auth:
    auth = cfg.auth
    if auth.type == "gcp_oauth":
        return GoogleADC(cfg.name, auth.credentials_file)
    if auth.type == "aws_sigv4":
        return AwsSigV4(cfg.name, region=cfg.region, access_key_id=auth.access_key_id,
                        secret_access_key=auth.secret_access_key,
                        session_token=auth.session_token)
    if auth.type == "azure_entra":
        kwargs = {"scope": auth.scope} if auth.scope else {}
        return EntraClientCredentials(cfg.name, tenant_id=auth.tenant_id,
                                      client_id=auth.client_id,
                                      client_secret=auth.client_secret,
                                      authority=auth.authority_host, security=security,
                                      **kwargs)
    if not cfg.api_key:
        return NoAuth()  # a local Ollama or vLLM without keys
    header = "api-key" if cfg.hosting == "azure" else _KEY_HEADERS.get(cfg.type,
                                                                      "authorization")
    return HeaderKey(header, cfg.api_key)


def build_provider(cfg: ProviderConfig, security: SecurityConfig | None = None) -> Provider:
    """The adapter for one provider instance, with its own keep-alive pool.

    ``timeout_ms`` bounds connect + first byte, never a running stream.
    """
    http = UpstreamHTTP(cfg.name, max_connections=cfg.max_concurrency,
                        connect_timeout=cfg.timeout_ms / 1000, security=security)
    auth = build_auth(cfg, security)
    if cfg.type == "anthropic":
        from .anthropic import AnthropicProvider
        return AnthropicProvider(cfg, http, auth)
    if cfg.type == "gemini":
        from .gemini import GeminiProvider
        return GeminiProvider(cfg, http, auth)
    if cfg.type == "ollama":
        from .ollama import OllamaProvider
        return OllamaProvider(cfg, http, auth)
    from .openai import OpenAIProvider
    return OpenAIProvider(cfg, http, auth)
