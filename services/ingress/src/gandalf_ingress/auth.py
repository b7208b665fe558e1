"""Bearer API keys -> Identity, in memory (no database on the hot path)."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from fnmatch import fnmatchcase

from gandalf_common.config import GatewayConfig
from gandalf_common.errors import ForbiddenError, UnauthorizedError

KEY_PREFIX = "gnd_"
#: Roles whose keys may call models (``viewer`` only reads).
_MODEL_ROLES = frozenset({"admin", "member", "service_account"})


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Identity:
    key_id: str
    name: str
    org_id: str
    role: str
    allowed_models: tuple[str, ...] = ()

    def check_model(self, model: str) -> None:
        if self.role not in _MODEL_ROLES:
            raise ForbiddenError("insufficient permissions: this key's role cannot call models",
                                 code="insufficient_permissions")
        if self.allowed_models and not any(
                model == pattern or fnmatchcase(model, pattern)
                for pattern in self.allowed_models):
            raise ForbiddenError(f"model not allowed: `{model}` is not in this key's allowed "
                                 "models", code="model_not_allowed", param="model")


class KeyTable:
    """SHA-256 of the key -> Identity, built from config and the admin key."""

    def __init__(self, cfg: GatewayConfig, admin_key_sha256: str = "") -> None:
        self._by_hash: dict[str, Identity] = {}
        for key in cfg.keys:
            digest = hash_key(key.key)
            self._by_hash[digest] = Identity(
                key_id=digest[:16], name=key.name, org_id=key.org_id, role=key.role,
                allowed_models=tuple(key.allowed_models))
        if admin_key_sha256:
            self._by_hash[admin_key_sha256] = Identity(
                key_id=admin_key_sha256[:16], name="admin", org_id="default", role="admin")

    def __len__(self) -> int:
        return len(self._by_hash)

    def authenticate(self, authorization: str | None) -> Identity:
        if not authorization or not authorization.startswith(("Bearer ", "bearer ")):
            raise UnauthorizedError("missing API key: send 'Authorization: Bearer gnd_...'")
        token = authorization[7:].strip()
        if not token.startswith(KEY_PREFIX):
            raise UnauthorizedError("invalid API key")
        digest = hash_key(token)
        identity = self._by_hash.get(digest)
        # The dict lookup is on a hash the caller cannot steer; the final
        # comparison is constant-time all the same.
        if identity is None or not hmac.compare_digest(
                digest[:16].encode(), identity.key_id.encode()):
            raise UnauthorizedError("invalid API key")
        return identity
