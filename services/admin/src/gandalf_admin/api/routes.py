"""``/admin/v1/routes``: model aliases and their targets. Any admin may read
them (org admins need the aliases for allowlists); only global admins write.
PUT is a full replace. A duplicate alias is 409."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from gandalf_common.contract import AdminResponse
from gandalf_common.ids import uuid7

from ..access import Access
from ..deps import Deps
from ..errors import bad_request, conflict, not_found
from ..replicate import Write
from ..store.rows import RouteRow, TargetRow
from ..validate import Ident, ModelName
from ..wire import Request, decode_body, envelope, json_response, no_content, page_of

BASE = "/admin/v1/routes"


class TargetBody(Struct, kw_only=True, forbid_unknown_fields=True):
    provider_id: Annotated[str, Meta(min_length=1, max_length=64)]
    model: ModelName
    priority: int = 0
    weight: Annotated[int, Meta(ge=1, le=10**6)] = 1


class RouteBody(Struct, kw_only=True, forbid_unknown_fields=True):
    id: Ident | UnsetType = UNSET
    model_alias: ModelName | UnsetType = UNSET
    targets: Annotated[list[TargetBody], Meta(max_length=100)] | UnsetType = UNSET
    strategy: Literal["priority", "weighted", "least-latency"] = "priority"
    cache_ttl_s: Annotated[int, Meta(ge=0, le=10**9)] = 0
    created_at: Any = UNSET  # read-only, accepted in echoed bodies
    updated_at: Any = UNSET


async def _build(w: Write, route_id: str, body: RouteBody) -> RouteRow:
    if body.model_alias is UNSET:
        raise bad_request("model_alias is required", "model_alias")
    if body.targets is UNSET or not body.targets:
        raise bad_request("a route needs at least one target", "targets")
    for i, t in enumerate(body.targets):
        if await w.repos.providers.get(t.provider_id) is None:
            raise bad_request(f"provider {t.provider_id!r} does not exist",
                              f"targets[{i}].provider_id")
    other = await w.repos.routes.by_alias(body.model_alias)
    if other is not None and other.id != route_id:
        raise conflict(f"a route for alias {body.model_alias!r} already exists",
                       "model_alias")
    return RouteRow(
        id=route_id, model_alias=body.model_alias, strategy=body.strategy,
        cache_ttl_s=body.cache_ttl_s,
        targets=[TargetRow(provider_id=t.provider_id, model=t.model, priority=t.priority,
                           weight=t.weight) for t in body.targets])


async def list_routes(req: Request, access: Access, deps: Deps) -> AdminResponse:
    page = page_of(req.query)
    async with deps.store.read() as repos:
        rows, total = await repos.routes.list(page)
    return json_response(200, envelope(rows, page, total))


async def get_route(req: Request, access: Access, deps: Deps) -> AdminResponse:
    async with deps.store.read() as repos:
        row = await repos.routes.get(req.params["id"])
    if row is None:
        raise not_found("route")
    return json_response(200, row)


async def create_route(req: Request, access: Access, deps: Deps) -> AdminResponse:
    body = decode_body(req, RouteBody)
    async with deps.repl.write() as w:
        row = await _build(w, body.id if body.id is not UNSET else uuid7(), body)
        saved = await w.repos.routes.insert(row)
        assert saved is not None
        w.put_route(saved)
    return json_response(201, saved, location=f"{BASE}/{saved.id}")


async def replace_route(req: Request, access: Access, deps: Deps) -> AdminResponse:
    body = decode_body(req, RouteBody)
    route_id = req.params["id"]
    if body.id is not UNSET and body.id != route_id:
        raise bad_request("id cannot be changed", "id")
    async with deps.repl.write() as w:
        if await w.repos.routes.get(route_id) is None:
            raise not_found("route")
        saved = await w.repos.routes.update(await _build(w, route_id, body))
        assert saved is not None
        w.put_route(saved)
    return json_response(200, saved)


async def delete_route(req: Request, access: Access, deps: Deps) -> AdminResponse:
    route_id = req.params["id"]
    async with deps.repl.write() as w:
        if not await w.repos.routes.delete(route_id):
            raise not_found("route")
        w.delete_route(route_id)
    return no_content()
