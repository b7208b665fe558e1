"""``/admin/v1/keys``: API keys. The plaintext is returned once, on create;
only its SHA-256 and a 12-character prefix are stored.

Org admins manage every key of their org; members (``MANAGE_OWN_KEYS``) only
their own keys (see ``access.Access.owns``), and may not give a key another
user, another team, a role with more permissions than their own, or unblock
a key an admin blocked. Everyone: a key only narrows its team and org.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from msgspec import UNSET, Meta, Struct, UnsetType

from gandalf_common.contract import AdminResponse
from gandalf_common.ids import uuid7

from ..access import Access
from ..deps import Deps
from ..errors import bad_request, forbidden, not_found
from ..keygen import PREFIX_LEN, hash_key, new_key
from ..replicate import Write
from ..store.ports import Repos
from ..store.rows import KeyRow, replace
from ..validate import (
    Ident,
    LimitsBody,
    Name,
    Role,
    Timestamp,
    changes_of,
    check_narrower,
    given,
)
from ..wire import Request, decode_body, envelope, json_response, no_content, page_of

BASE = "/admin/v1/keys"
UserId = Annotated[str, Meta(min_length=1, max_length=256)]


class KeyBody(LimitsBody, kw_only=True, forbid_unknown_fields=True):
    name: Name | UnsetType | None = UNSET
    org_id: Ident | UnsetType = UNSET
    team_id: Ident | UnsetType | None = UNSET
    user_id: UserId | UnsetType | None = UNSET
    role: Role | UnsetType = UNSET
    expires_at: Timestamp | UnsetType | None = UNSET
    blocked: bool | UnsetType = UNSET
    id: Any = UNSET  # read-only; echoed bodies may carry it


class KeyOut(Struct, kw_only=True):
    """A key as shown: everything but the hash."""

    id: str
    name: str | None
    key_prefix: str
    user_id: str | None
    team_id: str | None
    org_id: str
    role: str
    allowed_models: list[str] | None
    rpm_limit: int | None
    tpm_limit: int | None
    max_budget: float | None
    budget_period: str | None
    expires_at: datetime | None
    blocked: bool
    last_used_at: datetime | None
    created_at: datetime | None


class CreatedKeyOut(KeyOut, kw_only=True):
    #: The plaintext, shown this once.
    key: str


_OUT_FIELDS = KeyOut.__struct_fields__


def key_view(row: KeyRow) -> KeyOut:
    return KeyOut(**{f: getattr(row, f) for f in _OUT_FIELDS})


async def _visible(repos: Repos, access: Access, key_id: str) -> KeyRow:
    row = await repos.keys.get(key_id)
    if row is None or not access.sees_key(row):
        raise not_found("key")
    return row


def _member_rules(access: Access, current: KeyRow | None, row: KeyRow) -> None:
    """What a member may not do even to its own keys (403 naming the field)."""
    if not access.can_grant(row.role):
        raise forbidden(f"cannot give a key role {row.role!r}: it has permissions you lack",
                        "role")
    if access.all_keys:
        return
    c = access.caller
    if row.user_id not in (None, c.user_id or None) and (
            current is None or row.user_id != current.user_id):
        raise forbidden("members may only manage their own keys", "user_id")
    if row.team_id not in (None, c.team_id or None) and (
            current is None or row.team_id != current.team_id):
        raise forbidden("members may only use their own team", "team_id")
    if current is not None and current.blocked and not row.blocked:
        raise forbidden("a blocked key can only be unblocked by an admin", "blocked")


async def _check_parents(w: Write, row: KeyRow) -> None:
    org = await w.repos.orgs.get(row.org_id)
    if org is None:
        raise bad_request(f"organization {row.org_id!r} does not exist", "org_id")
    if row.team_id is not None:
        team = await w.repos.teams.get(row.team_id)
        if team is None or team.org_id != row.org_id:
            raise bad_request(f"team {row.team_id!r} does not exist in organization "
                              f"{row.org_id!r}", "team_id")
        check_narrower(row, team, "team")
    check_narrower(row, org, "organization")


async def list_keys(req: Request, access: Access, deps: Deps) -> AdminResponse:
    page = page_of(req.query)
    async with deps.store.read() as repos:
        rows, total = await repos.keys.list(access.key_filter(req.query), page)
    return json_response(200, envelope([key_view(r) for r in rows], page, total))


async def get_key(req: Request, access: Access, deps: Deps) -> AdminResponse:
    async with deps.store.read() as repos:
        row = await _visible(repos, access, req.params["id"])
    return json_response(200, key_view(row))


async def create_key(req: Request, access: Access, deps: Deps) -> AdminResponse:
    body = decode_body(req, KeyBody, empty_ok=True)
    c = access.caller
    org_id = access.write_org(given(body.org_id))
    own = not access.all_keys  # a member's key is its own by default
    plaintext = new_key()
    changes = changes_of(body, skip=frozenset({"id", "org_id"}))
    if own:
        changes.setdefault("user_id", c.user_id or None)
        changes.setdefault("team_id", c.team_id or None)
    row = KeyRow(id=uuid7(), key_hash=hash_key(plaintext), key_prefix=plaintext[:PREFIX_LEN],
                 org_id=org_id, created_by=access.principal, **changes)
    _member_rules(access, None, row)
    async with deps.repl.write() as w:
        await _check_parents(w, row)
        saved = await w.repos.keys.insert(row)
        assert saved is not None
        w.put_key(saved)
    out = CreatedKeyOut(key=plaintext, **{f: getattr(saved, f) for f in _OUT_FIELDS})
    return json_response(201, out, location=f"{BASE}/{saved.id}")


async def update_key(req: Request, access: Access, deps: Deps) -> AdminResponse:
    body = decode_body(req, KeyBody)
    key_id = req.params["id"]
    if body.id is not UNSET and body.id != key_id:
        raise bad_request("id cannot be changed", "id")
    async with deps.repl.write() as w:
        current = await _visible(w.repos, access, key_id)
        if body.org_id is not UNSET and body.org_id != current.org_id:
            raise bad_request("a key cannot move to another organization", "org_id")
        row = replace(current, **changes_of(body, skip=frozenset({"id", "org_id"})))
        _member_rules(access, current, row)
        await _check_parents(w, row)
        saved = await w.repos.keys.update(row)
        assert saved is not None
        w.put_key(saved)
    return json_response(200, key_view(saved))


async def delete_key(req: Request, access: Access, deps: Deps) -> AdminResponse:
    async with deps.repl.write() as w:
        current = await _visible(w.repos, access, req.params["id"])
        await w.repos.keys.delete(current.id)
        w.delete_key(current.key_hash)
    return no_content()
