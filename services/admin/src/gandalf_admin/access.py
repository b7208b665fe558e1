"""Who may do what: the one authorization check every route goes through,
and the scope helpers handlers use to confine an org admin or a member.

Definitions (as implemented):

- *global admin*: the bootstrap admin key (``caller.auth == "admin_key"``), or
  role ``admin`` in org ``default``. Holds every permission, in every org.
- *org admin*: role ``admin`` in any other org. Every permission bit, but
  confined to its own org: its keys, teams and the org itself (read).
- a route's permission: the caller's role must hold at least one of the
  route's bits (``Route.perm``), else 403 ``insufficient_permissions``.
- a route's scope: ``GLOBAL`` routes (provider/route writes, provider reads,
  org create/update/delete, auth settings, cache purge) answer 403 to anyone
  but a global admin; ``ORG`` routes answer 403 to a non-global caller who
  asks for another org in ``?org_id=``; ``ANY`` routes need the bit only.
- inside an ``ORG`` route another org's item is 404 (no existence leak), and
  a member (``MANAGE_OWN_KEYS`` without ``MANAGE_ALL_KEYS``) only sees keys
  it owns: ``key.id == caller.key_id``, ``key.user_id == caller.user_id`` (when
  the caller has a user id), or ``key.created_by`` is the caller's principal.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from gandalf_common.authz import ALL, Perm, perms_of
from gandalf_common.contract import Caller

from .errors import forbidden
from .store.ports import KeyFilter
from .store.rows import KeyRow

DEFAULT_ORG = "default"


class Scope(Enum):
    GLOBAL = "global"
    ORG = "org"
    ANY = "any"


def caller_perms(caller: Caller) -> Perm:
    return ALL if caller.auth == "admin_key" else perms_of(caller.role)


def is_global_admin(caller: Caller) -> bool:
    return caller.auth == "admin_key" or (caller.role == "admin"
                                          and caller.org_id == DEFAULT_ORG)


def principal_of(caller: Caller) -> str:
    """A stable name of the caller, recorded as a key's ``created_by``."""
    if caller.auth == "admin_key":
        return "admin_key"
    if caller.user_id:
        return f"user:{caller.user_id}"
    return f"key:{caller.key_id}"


@dataclass(frozen=True, slots=True)
class Access:
    caller: Caller
    perms: Perm
    is_global: bool

    @classmethod
    def of(cls, caller: Caller) -> Access:
        return cls(caller, caller_perms(caller), is_global_admin(caller))

    @property
    def principal(self) -> str:
        return principal_of(self.caller)

    @property
    def all_keys(self) -> bool:
        return bool(self.perms & Perm.MANAGE_ALL_KEYS)

    def sees_org(self, org_id: str) -> bool:
        return self.is_global or org_id == self.caller.org_id

    def owns(self, key: KeyRow) -> bool:
        c = self.caller
        return key.org_id == c.org_id and (
            (bool(c.key_id) and key.id == c.key_id)
            or (bool(c.user_id) and key.user_id == c.user_id)
            or key.created_by == self.principal)

    def sees_key(self, key: KeyRow) -> bool:
        return self.sees_org(key.org_id) and (self.all_keys or self.owns(key))

    def list_org(self, query: dict[str, str]) -> str | None:
        """The org a listing is confined to (None: every org, global admins)."""
        requested = query.get("org_id") or None
        return requested if self.is_global else self.caller.org_id

    def write_org(self, requested: str | None, param: str = "org_id") -> str:
        """The org a new item goes to; another org is 403 unless global."""
        org = requested or self.caller.org_id
        if not self.sees_org(org):
            raise forbidden("cannot create resources outside your organization", param)
        return org

    def key_filter(self, query: dict[str, str]) -> KeyFilter:
        org = self.list_org(query)
        team = query.get("team_id") or None
        if self.all_keys:
            return KeyFilter(org_id=org, team_id=team)
        c = self.caller
        return KeyFilter(org_id=org, team_id=team, owner_user_id=c.user_id or None,
                         owner_principal=self.principal, owner_key_id=c.key_id or None)

    def can_grant(self, role: str) -> bool:
        """A key's role may not carry a permission its creator lacks."""
        wanted = perms_of(role)
        return self.is_global or (wanted & self.perms) == wanted


def authorize(perm: Perm, scope: Scope, caller: Caller, query: dict[str, str]) -> Access:
    """The check every route passes before its handler runs (403 on failure)."""
    access = Access.of(caller)
    if not access.perms & perm:
        raise forbidden(f"insufficient permissions: role {caller.role!r} lacks "
                        f"{_names(perm)}")
    if scope is Scope.GLOBAL and not access.is_global:
        raise forbidden("insufficient permissions: only a global admin (role admin in the "
                        "default organization) may do this")
    if scope is Scope.ORG and not access.is_global:
        requested = query.get("org_id")
        if requested and requested != caller.org_id:
            raise forbidden("cannot access resources outside your organization", "org_id")
    return access


def _names(perm: Perm) -> str:
    return " or ".join(p.name.lower() for p in Perm if p & perm and p.name)
