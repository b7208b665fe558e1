"""``/admin/v1/teams``: CRUD inside an org; a team only narrows its org.

Deleting a team that still has keys is 409 unless ``?force=true``, which
detaches the keys (their ``team_id`` becomes null, as the schema does) and
republishes them.
"""

from __future__ import annotations

from msgspec import UNSET, UnsetType

from gandalf_common.contract import AdminResponse
from gandalf_common.ids import uuid7

from ..access import Access
from ..deps import Deps
from ..errors import bad_request, conflict, not_found
from ..store.rows import TeamRow, replace
from ..validate import Ident, LimitsBody, Name, changes_of, check_narrower, given
from ..wire import Request, decode_body, envelope, flag, json_response, no_content, page_of

BASE = "/admin/v1/teams"


class TeamBody(LimitsBody, kw_only=True, forbid_unknown_fields=True):
    id: Ident | UnsetType = UNSET
    org_id: Ident | UnsetType = UNSET
    name: Name | UnsetType = UNSET


async def list_teams(req: Request, access: Access, deps: Deps) -> AdminResponse:
    page = page_of(req.query)
    async with deps.store.read() as repos:
        rows, total = await repos.teams.list(access.list_org(req.query), page)
    return json_response(200, envelope(rows, page, total))


async def get_team(req: Request, access: Access, deps: Deps) -> AdminResponse:
    async with deps.store.read() as repos:
        row = await repos.teams.get(req.params["id"])
    if row is None or not access.sees_org(row.org_id):
        raise not_found("team")
    return json_response(200, row)


async def create_team(req: Request, access: Access, deps: Deps) -> AdminResponse:
    body = decode_body(req, TeamBody)
    if body.name is UNSET:
        raise bad_request("name is required", "name")
    org_id = access.write_org(given(body.org_id))
    changes = changes_of(body, skip=frozenset({"id", "org_id", "name"}))
    row = TeamRow(id=body.id if body.id is not UNSET else uuid7(), org_id=org_id,
                  name=body.name, **changes)
    async with deps.repl.write() as w:
        org = await w.repos.orgs.get(org_id)
        if org is None:
            raise bad_request(f"organization {org_id!r} does not exist", "org_id")
        check_narrower(row, org, "organization")
        row = await w.repos.teams.insert(row)
        w.put_team(row)
    return json_response(201, row, location=f"{BASE}/{row.id}")


async def update_team(req: Request, access: Access, deps: Deps) -> AdminResponse:
    body = decode_body(req, TeamBody)
    team_id = req.params["id"]
    if body.id is not UNSET and body.id != team_id:
        raise bad_request("id cannot be changed", "id")
    async with deps.repl.write() as w:
        current = await w.repos.teams.get(team_id)
        if current is None or not access.sees_org(current.org_id):
            raise not_found("team")
        if body.org_id is not UNSET and body.org_id != current.org_id:
            raise bad_request("a team cannot move to another organization", "org_id")
        row = replace(current, **changes_of(body, skip=frozenset({"id", "org_id"})))
        org = await w.repos.orgs.get(row.org_id)
        if org is not None:
            check_narrower(row, org, "organization")
        updated = await w.repos.teams.update(row)
        assert updated is not None
        w.put_team(updated)
    return json_response(200, updated)


async def delete_team(req: Request, access: Access, deps: Deps) -> AdminResponse:
    team_id = req.params["id"]
    async with deps.repl.write() as w:
        current = await w.repos.teams.get(team_id)
        if current is None or not access.sees_org(current.org_id):
            raise not_found("team")
        keys = await w.repos.keys.in_team(team_id)
        if keys and not flag(req.query, "force"):
            raise conflict(f"team still has {len(keys)} key(s); move or delete them first, "
                           "or pass ?force=true to detach them", "id")
        await w.repos.teams.delete(team_id)
        for key in keys:  # the schema set their team_id to null
            w.put_key(replace(key, team_id=None))
        w.delete_team(team_id)
    return no_content()
