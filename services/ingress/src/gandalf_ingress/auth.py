"""Who is calling: API keys (``gnd_...``) from an in-memory table, JWTs
through the configured OIDC issuer. No database on the request path.

Static mode: the YAML keys. Managed mode: the ``gandalf_keys`` KV mirror
(the admin service bootstraps the YAML keys into it), with the org and team
records for inheritance. A revoked or blocked key disappears from the
mirror as soon as the admin's KV write arrives.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass, field
from typing import Any

from gandalf_common.authz import Perm, allowed_by_all, effective, model_rules, perms_of
from gandalf_common.contract import Caller
from gandalf_common.errors import ForbiddenError, UnauthorizedError
from gandalf_common.live import LiveConfig
from gandalf_common.records import KeyRecord, Limits

KEY_PREFIX = "gnd_"
_BEARER = ("Bearer ", "bearer ")


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Identity:
    key_id: str
    name: str
    org_id: str
    role: str
    team_id: str = ""
    user_id: str = ""
    #: apikey | jwt | admin_key
    auth: str = "apikey"
    #: One allowlist per level that has one (org, team, key): all must pass.
    rules: tuple[tuple[str, ...], ...] = ()
    limits: Limits = field(default_factory=Limits)
    #: (scope, id, max_budget, period) of every level with a budget.
    budgets: tuple[tuple[str, str, float, str | None], ...] = ()

    @property
    def perms(self) -> Perm:
        return perms_of(self.role)

    @property
    def allowed_models(self) -> tuple[str, ...]:
        """The most specific allowlist (for display); checks use ``rules``."""
        return self.rules[-1] if self.rules else ()

    def check_model(self, model: str) -> None:
        if not self.perms & Perm.USE_MODELS:
            raise ForbiddenError("insufficient permissions: this key's role cannot call models",
                                 code="insufficient_permissions")
        if not allowed_by_all(model, self.rules):
            raise ForbiddenError(f"model not allowed: `{model}` is not in this key's allowed "
                                 "models", code="model_not_allowed", param="model")

    def caller(self) -> Caller:
        return Caller(key_id=self.key_id, org_id=self.org_id, team_id=self.team_id,
                      user_id=self.user_id, role=self.role, auth=self.auth)


class Authenticator:
    """``Authorization`` header -> :class:`Identity`, or a 401/403."""

    def __init__(self, live: LiveConfig, admin_key_sha256: str = "",
                 jwt: Any = None) -> None:
        self.live = live
        self.jwt = jwt  # a JwtVerifier, or None when JWT is not configured
        self._static: dict[str, Identity] = {}
        if not live.managed:
            for key in live.cfg.keys:
                digest = hash_key(key.key)
                limits = Limits(allowed_models=list(key.allowed_models) or None)
                self._static[digest] = Identity(
                    key_id=digest[:16], name=key.name, org_id=key.org_id, role=key.role,
                    rules=model_rules(limits), limits=limits)
        self._admin: Identity | None = None
        if admin_key_sha256:
            self._admin_digest = admin_key_sha256
            self._admin = Identity(key_id=admin_key_sha256[:16], name="admin",
                                   org_id="default", role="admin", auth="admin_key")
        # Resolved identities, dropped whenever keys, orgs or teams change.
        self._resolved: dict[str, Identity] = {}
        live.on_change(self._invalidate)

    def __len__(self) -> int:
        return len(self._static) + len(self.live.keys) + (self._admin is not None)

    def _invalidate(self, kind: str, _ident: str, _value: Any) -> None:
        if kind in ("key", "org", "team"):
            self._resolved.clear()

    async def authenticate(self, authorization: str | None) -> Identity:
        if not authorization or not authorization.startswith(_BEARER):
            raise UnauthorizedError("missing API key: send 'Authorization: Bearer gnd_...'")
        token = authorization[7:].strip()
        if token.startswith(KEY_PREFIX):
            return self.api_key(token)
        if self.jwt is None:
            raise UnauthorizedError("invalid API key")
        from .jwt_auth import JwtError

        try:
            found = await self.jwt.verify(token)
        except JwtError as exc:
            raise UnauthorizedError(f"invalid token: {exc}", code="invalid_token") from None
        org = self.live.orgs.get(found.org_id)
        if org is None and self.live.managed and not self.jwt.settings.allow_unknown_orgs:
            # Managed mode knows every org: a claim naming another is refused.
            raise UnauthorizedError("invalid token: unknown organization",
                                    code="invalid_token")
        team = self.live.teams.get(found.team_id) if found.team_id else None
        levels = (org.limits if org else None, team.limits if team else None)
        return Identity(key_id="", name=found.subject, org_id=found.org_id, role=found.role,
                        team_id=found.team_id, user_id=found.subject, auth="jwt",
                        rules=model_rules(*levels), limits=effective(*levels),
                        budgets=_budgets(("org", found.org_id, levels[0]),
                                         ("team", found.team_id, levels[1])))

    def api_key(self, token: str) -> Identity:
        # Lookups are by SHA-256 of the presented key: a caller cannot steer
        # the hash, so dict timing reveals nothing about stored keys.
        digest = hash_key(token)
        if self.live.managed:
            record = self.live.keys.get(digest)
            if record is not None:
                self._check_state(record)
                return self._resolved.get(digest) or self._resolve(record)
        else:
            identity = self._static.get(digest)
            if identity is not None:
                return identity
        if self._admin is not None and hmac.compare_digest(digest, self._admin_digest):
            return self._admin
        raise UnauthorizedError("invalid API key")

    def _resolve(self, record: KeyRecord) -> Identity:
        org = self.live.orgs.get(record.org_id)
        team = self.live.teams.get(record.team_id) if record.team_id else None
        levels = (org.limits if org else None, team.limits if team else None, record.limits)
        identity = Identity(
            key_id=record.id, name=record.name or record.key_prefix, org_id=record.org_id,
            role=record.role, team_id=record.team_id or "", user_id=record.user_id or "",
            rules=model_rules(*levels), limits=effective(*levels),
            budgets=_budgets(("org", record.org_id, levels[0]),
                             ("team", record.team_id or "", levels[1]),
                             ("key", record.id, levels[2])))
        self._resolved[record.key_hash] = identity
        return identity

    @staticmethod
    def _check_state(record: KeyRecord) -> None:
        if record.blocked:
            raise ForbiddenError("api key blocked", code="key_blocked")
        if record.expires_at is not None and record.expires_at <= time.time():
            raise UnauthorizedError("api key expired", code="key_expired")


def _budgets(*levels: tuple[str, str, Limits | None]
             ) -> tuple[tuple[str, str, float, str | None], ...]:
    return tuple((scope, ident, float(lv.max_budget), lv.budget_period)
                 for scope, ident, lv in levels
                 if ident and lv is not None and lv.max_budget)
