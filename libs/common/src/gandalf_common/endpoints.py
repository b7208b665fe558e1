"""Cloud providers that sign with the host's own credentials (Google ADC,
an AWS instance role or environment) may only talk to the cloud's official
endpoints: a custom ``base_url`` would hand those credentials' tokens or
signatures to whoever runs it. ``allow_custom_endpoint: true`` on the
provider opts out (a private endpoint, a test double).

Explicit credentials (a ``credentials_file``, an ``access_key_id``) are the
provider's own and may go to any endpoint the SSRF policy allows.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from .config import ProviderConfig

_OFFICIAL = {
    "vertex": re.compile(r"^([a-z0-9-]+-)?aiplatform\.googleapis\.com$"),
    "bedrock": re.compile(r"^bedrock-runtime(-fips)?\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$"),
}


def ambient_credentials(cfg: ProviderConfig) -> bool:
    """Whether the provider signs with credentials it does not carry itself."""
    auth = cfg.auth
    if auth.type == "gcp_oauth":
        return not auth.credentials_file.strip()
    if auth.type == "aws_sigv4":
        return not auth.access_key_id.strip()
    return False


def official(hosting: str, base_url: str) -> bool:
    pattern = _OFFICIAL.get(hosting)
    if pattern is None:
        return True
    parts = urlsplit(base_url)
    host = (parts.hostname or "").rstrip(".").lower()
    return parts.scheme == "https" and parts.port in (None, 443) and bool(pattern.match(host))


def endpoint_problem(cfg: ProviderConfig) -> str | None:
    """Why this provider may not use its base_url, or None."""
    if cfg.allow_custom_endpoint or not ambient_credentials(cfg):
        return None
    if official(cfg.hosting, cfg.base_url):
        return None
    return (f"hosting {cfg.hosting} with the host's own credentials may only use the "
            "official endpoint; set allow_custom_endpoint: true to use this base_url")
