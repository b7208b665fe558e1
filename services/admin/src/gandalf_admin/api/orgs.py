"""``/admin/v1/organizations``: list, create, read, update, delete.

Deleting an org that still has teams or keys is 409 unless ``?force=true``,
which deletes them with it (the schema cascades) and removes them from KV.
The ``default`` org can never be deleted (global admins and YAML keys live
there).
"""

from __future__ import annotations

from msgspec import UNSET, UnsetType

from gandalf_common.contract import AdminResponse
from gandalf_common.ids import uuid7

from ..access import DEFAULT_ORG, Access
from ..deps import Deps
from ..errors import bad_request, conflict, not_found
from ..store.rows import OrgRow, replace
from ..validate import Ident, LimitsBody, Name, changes_of
from ..wire import Request, decode_body, envelope, flag, json_response, no_content, page_of

BASE = "/admin/v1/organizations"


class OrgBody(LimitsBody, kw_only=True, forbid_unknown_fields=True):
    id: Ident | UnsetType = UNSET
    name: Name | UnsetType = UNSET


async def list_orgs(req: Request, access: Access, deps: Deps) -> AdminResponse:
    page = page_of(req.query)
    async with deps.store.read() as repos:
        rows, total = await repos.orgs.list(access.list_org(req.query), page)
    return json_response(200, envelope(rows, page, total))


async def get_org(req: Request, access: Access, deps: Deps) -> AdminResponse:
    async with deps.store.read() as repos:
        row = await repos.orgs.get(req.params["id"])
    if row is None or not access.sees_org(row.id):
        raise not_found("organization")
    return json_response(200, row)


async def create_org(req: Request, access: Access, deps: Deps) -> AdminResponse:
    body = decode_body(req, OrgBody)
    if body.name is UNSET:
        raise bad_request("name is required", "name")
    changes = changes_of(body, skip=frozenset({"id", "name"}))
    row = OrgRow(id=body.id if body.id is not UNSET else uuid7(), name=body.name, **changes)
    async with deps.repl.write() as w:
        inserted = await w.repos.orgs.insert(row)  # a taken id is a 409 (unique violation)
        assert inserted is not None
        row = inserted
        w.put_org(row)
    return json_response(201, row, location=f"{BASE}/{row.id}")


async def update_org(req: Request, access: Access, deps: Deps) -> AdminResponse:
    body = decode_body(req, OrgBody)
    org_id = req.params["id"]
    if body.id is not UNSET and body.id != org_id:
        raise bad_request("id cannot be changed", "id")
    async with deps.repl.write() as w:
        current = await w.repos.orgs.get(org_id)
        if current is None:
            raise not_found("organization")
        changes = changes_of(body, skip=frozenset({"id"}))
        row = await w.repos.orgs.update(replace(current, **changes))
        assert row is not None
        w.put_org(row)
    return json_response(200, row)


async def delete_org(req: Request, access: Access, deps: Deps) -> AdminResponse:
    org_id = req.params["id"]
    if org_id == DEFAULT_ORG:
        raise conflict("the default organization cannot be deleted", "id")
    async with deps.repl.write() as w:
        if await w.repos.orgs.get(org_id) is None:
            raise not_found("organization")
        teams = await w.repos.teams.in_org(org_id)
        keys = await w.repos.keys.in_org(org_id)
        if (teams or keys) and not flag(req.query, "force"):
            raise conflict(f"organization still has {len(teams)} team(s) and {len(keys)} "
                           "key(s); delete them first or pass ?force=true", "id")
        await w.repos.orgs.delete(org_id)  # teams and keys cascade
        for key in keys:
            w.delete_key(key.key_hash)
        for team in teams:
            w.delete_team(team.id)
        w.delete_org(org_id)
    return no_content()
