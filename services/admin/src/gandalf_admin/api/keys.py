"""``/admin/v1/keys``: API keys. The plaintext is returned once, on create;
only its SHA-256 and a 12-character prefix are stored.

Org admins manage every key of their org; members (``MANAGE_OWN_KEYS``) only
their own keys (see ``access.Access.owns``), and may not give a key another
user, another team, a role with more permissions than their own, or unblock
a key an admin blocked. Everyone: a key only narrows its team and org.
A member's keys also narrow the key it authenticates with (``narrowing``).
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
from . import narrowing

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
    parent_key_id: Any = UNSET  # read-only: set when a member mints the key


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
    #: The member key this one was minted from (deleted and blocked with it).
    parent_key_id: str | None = None


class CreatedKeyOut(KeyOut, kw_only=True):
    #: The plaintext, shown this once.
    key: str


_OUT_FIELDS = KeyOut.__struct_fields__
_READ_ONLY = frozenset({"id", "org_id", "parent_key_id"})


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


async def _member_parent(repos: Repos, access: Access) -> KeyRow | None:
    """The key a member authenticates with, which bounds what it may do to
    keys (None for admins, and for JWT members, who have no key: their team
    and org bound them)."""
    if access.all_keys or access.caller.auth != "apikey":
        return None
    return await narrowing.member_key(repos, access.caller.key_id)


async def _member_narrowing(repos: Repos, access: Access, current: KeyRow, row: KeyRow
                            ) -> None:
    if access.all_keys:
        return
    if current.id == access.caller.key_id:
        narrowing.check_own_key_edit(current, row)
        return
    parent = await _member_parent(repos, access)
    if parent is not None:
        remaining = await narrowing.remaining_budget(repos, parent)
        narrowing.check_narrower_than(parent, row, remaining)


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
    changes = changes_of(body, skip=_READ_ONLY)
    if own:
        changes.setdefault("user_id", c.user_id or None)
        changes.setdefault("team_id", c.team_id or None)
    async with deps.repl.write() as w:
        parent = await _member_parent(w.repos, access)
        remaining = None
        if parent is not None:
            await narrowing.check_mint_cap(w.repos, access.principal)
            remaining = await narrowing.remaining_budget(w.repos, parent)
            changes = narrowing.inherited(parent, remaining, changes)
        row = KeyRow(id=uuid7(), key_hash=hash_key(plaintext), key_prefix=plaintext[:PREFIX_LEN],
                     org_id=org_id, created_by=access.principal,
                     parent_key_id=parent.id if parent else None, **changes)
        _member_rules(access, None, row)
        if parent is not None:
            narrowing.check_narrower_than(parent, row, remaining)
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
        row = replace(current, **changes_of(body, skip=_READ_ONLY))
        await _member_narrowing(w.repos, access, current, row)
        _member_rules(access, current, row)
        await _check_parents(w, row)
        saved = await w.repos.keys.update(row)
        assert saved is not None
        w.put_key(saved)
        if saved.blocked and not current.blocked:
            # Keys minted from a blocked key stop working with it.
            children = await w.repos.keys.descendants(saved.id)
            for child in await w.repos.keys.block([k.id for k in children]):
                w.put_key(child)
    return json_response(200, key_view(saved))


async def delete_key(req: Request, access: Access, deps: Deps) -> AdminResponse:
    async with deps.repl.write() as w:
        current = await _visible(w.repos, access, req.params["id"])
        # The database cascades to minted keys; the KV must drop them too.
        children = await w.repos.keys.descendants(current.id)
        await w.repos.keys.delete(current.id)
        w.delete_key(current.key_hash)
        for child in children:
            w.delete_key(child.key_hash)
    return no_content()
