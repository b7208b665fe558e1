"""JWT/OIDC bearer tokens: signature against the issuer's JWKS, then
``iss``/``aud``/``exp``/``nbf``, then the claim mapping to an identity.

RFC 8725 rules, in order:
- The token header's ``alg`` must be in the configured allowlist, which can
  only hold asymmetric algorithms (``none`` and HS* are dropped even if a
  KV-delivered setting lists them); checked before any key lookup.
- The key comes only from the configured JWKS URL and must be of the type the
  algorithm needs (see ``jwks.key_fits``): an HS256 token "signed" with our
  RSA public key has no key to verify against.
- ``exp`` and ``iss`` are required (``aud`` too when an audience is set);
  ``leeway_s`` absorbs clock skew.

Error messages (``str(JwtError)``) are fixed short phrases: no token
material, no claim values.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import jwt
from jwt.exceptions import (
    DecodeError,
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAlgorithmError,
    InvalidAudienceError,
    InvalidIssuedAtError,
    InvalidIssuerError,
    InvalidKeyError,
    InvalidSignatureError,
    MissingRequiredClaimError,
    PyJWTError,
)

from gandalf_common.authz import ROLES
from gandalf_common.config import JWT_ALGORITHMS, JwtConfig
from gandalf_common.records import JwtSettings

from .jwks import JwksCache, KeyLookupError, safe_url

log = logging.getLogger("gandalf.jwt")

#: Longer bearer tokens are refused without parsing.
MAX_TOKEN_LENGTH = 16 * 1024
#: Longest subject / org / team id taken from a token.
MAX_ID_LENGTH = 256
#: Role admin in this org is a global admin (see the admin's ``access``).
GLOBAL_ORG = "default"


@dataclass(frozen=True, slots=True)
class JwtIdentity:
    subject: str  # the user claim (default "sub")
    org_id: str
    team_id: str  # "" when absent
    role: str  # one of admin/member/viewer/service_account
    claims: Mapping[str, Any]
    #: False when the org came from ``default_org`` (the token named none).
    org_claimed: bool = True


class JwtError(Exception):
    """Why a token was refused; str(exc) is safe to show the client (no token material)."""


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The value at a dot path (``resource_access.gandalf.roles``), or None.

    A claim name that itself contains dots (``https://example.com/roles``) is
    matched too: at each level the longest matching key wins.
    """
    if not path:
        return None
    return _walk(claims, path.split("."))


def _walk(node: Any, parts: list[str]) -> Any:
    if not parts:
        return node
    if not isinstance(node, Mapping):
        return None
    for i in range(len(parts), 0, -1):
        key = ".".join(parts[:i])
        if key in node:
            found = _walk(node[key], parts[i:])
            if found is not None:
                return found
    return None


def _as_id(value: Any) -> str | None:
    """A string (or integer) id; a list gives its first string."""
    if isinstance(value, list):
        value = next((v for v in value if isinstance(v, str) and v.strip()), None)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if len(text) > MAX_ID_LENGTH:
        raise JwtError("identity claim too long")
    return text or None


def _as_role(value: Any) -> str | None:
    """A known role; a list gives its first element that is one."""
    values = value if isinstance(value, list) else [value]
    for v in values:
        if isinstance(v, str):
            role = v.strip().lower()
            if role in ROLES:
                return role
    return None


_ERRORS: tuple[tuple[type[PyJWTError], str], ...] = (
    (ExpiredSignatureError, "token expired"),
    (ImmatureSignatureError, "token not yet valid"),
    (InvalidAudienceError, "wrong audience"),
    (InvalidIssuerError, "wrong issuer"),
    (InvalidIssuedAtError, "invalid iat claim"),
    (InvalidAlgorithmError, "algorithm not allowed"),
    (InvalidSignatureError, "bad signature"),
    (DecodeError, "malformed token"),
    (InvalidKeyError, "unusable signing key"),
)


def _message(exc: PyJWTError) -> str:
    if isinstance(exc, MissingRequiredClaimError):
        return f"missing {exc.claim} claim"  # one of our own required claim names
    for kind, message in _ERRORS:
        if isinstance(exc, kind):
            return message
    return "invalid token"


class JwtVerifier:
    def __init__(self, settings: JwtSettings, *, http_timeout: float = 5.0,
                 min_refresh_interval: float = 30.0, cache_ttl: float = 900.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``clock`` (monotonic seconds) drives the JWKS cache and rate limit;
        token times (exp/nbf/iat) always use the wall clock."""
        self.settings = settings
        dropped = [a for a in settings.algorithms if a not in JWT_ALGORITHMS]
        if dropped:
            log.warning("JWT algorithms %s are never accepted (asymmetric only: %s)",
                        dropped, ", ".join(JWT_ALGORITHMS))
        self.algorithms: list[str] = [a for a in settings.algorithms if a in JWT_ALGORITHMS]
        self.audience: list[str] | None = list(settings.audience) or None
        require = ["exp", "iss"] + (["aud"] if self.audience else [])
        self._options: dict[str, Any] = {
            "verify_signature": True, "verify_exp": True, "verify_nbf": True,
            "verify_iat": True, "verify_aud": True, "verify_iss": True,
            "require": require, "enforce_minimum_key_length": True,
        }
        self._default_role = settings.default_role if settings.default_role in ROLES else None
        if self._default_role is None:
            log.warning("JWT default_role %r is not a role: tokens without a role claim "
                        "are refused", settings.default_role)
        self._problem = ""
        if not settings.enabled:
            self._problem = "JWT authentication is not enabled"
        elif not settings.issuer or urlsplit(settings.jwks_url).scheme not in ("http", "https"):
            self._problem = "JWT authentication is not configured"
        if self._problem:
            log.warning("JWT verifier disabled: %s (issuer and an http(s) jwks_url are "
                        "needed)", self._problem)
        self.jwks = JwksCache(settings.jwks_url, http_timeout=http_timeout,
                              min_refresh_interval=min_refresh_interval,
                              cache_ttl=cache_ttl, clock=clock)

    @classmethod
    def from_config(cls, cfg: JwtConfig) -> JwtVerifier:
        """The YAML ``auth.jwt`` section as the runtime settings record."""
        from gandalf_common.live import jwt_settings

        return cls(jwt_settings(cfg))

    def __repr__(self) -> str:
        return (f"JwtVerifier(issuer={self.settings.issuer!r}, "
                f"jwks_url={safe_url(self.settings.jwks_url)!r})")

    async def verify(self, token: str) -> JwtIdentity:
        if self._problem:
            raise JwtError(self._problem)
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise JwtError("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except PyJWTError:
            raise JwtError("malformed token") from None
        alg = header.get("alg")
        # Before any key lookup: `none`, HS* and anything not configured.
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise JwtError("algorithm not allowed")
        kid = header.get("kid")  # a str (pyjwt checks it); an opaque dict key only
        try:
            keys = await self.jwks.candidates(kid, alg)
        except KeyLookupError as exc:
            raise JwtError(str(exc)) from None
        claims = self._decode(token, keys)
        return self._identity(claims)

    def _decode(self, token: str, keys: list[Any]) -> dict[str, Any]:
        s = self.settings
        error: PyJWTError | None = None
        # Several keys only when a JWKS repeats a kid; the first that verifies wins.
        for key in keys:
            try:
                claims = jwt.decode(token, key=key, algorithms=self.algorithms,
                                    audience=self.audience, issuer=s.issuer,
                                    leeway=s.leeway_s, options=self._options)  # type: ignore[arg-type]
            except InvalidSignatureError as exc:
                error = exc
                continue
            except PyJWTError as exc:
                raise JwtError(_message(exc)) from None
            if not isinstance(claims, dict):
                raise JwtError("malformed token")
            return claims
        raise JwtError(_message(error) if error is not None else "bad signature")

    def _identity(self, claims: dict[str, Any]) -> JwtIdentity:
        m = self.settings.claims
        subject = _as_id(claim_at(claims, m.user))
        if subject is None:
            raise JwtError(f"missing user claim ({m.user})")
        role = _as_role(claim_at(claims, m.role)) or self._default_role
        if role is None:
            raise JwtError("no usable role claim")
        org = _as_id(claim_at(claims, m.org))
        claimed = org is not None
        if org is None:
            org = self.settings.default_org
            if not org:
                raise JwtError(f"missing org claim ({m.org})")
            if role == "admin" and org == GLOBAL_ORG:
                # An admin of the default org is a global admin: only a token
                # that names that org may be one, never the fallback.
                raise JwtError(f"an admin token must name its organization ({m.org})")
        team = _as_id(claim_at(claims, m.team)) or ""
        return JwtIdentity(subject=subject, org_id=org, team_id=team, role=role,
                           claims=MappingProxyType(claims), org_claimed=claimed)

    async def aclose(self) -> None:
        await self.jwks.aclose()
