"""The admin API's part of the gateway's OpenAPI document, generated from
the route table and the msgspec Structs the handlers decode. The admin
service answers it on ``contract.ADMIN_OPENAPI``; the ingress merges it into
``/openapi.json``."""

from __future__ import annotations

from typing import Any

import msgspec

from gandalf_common.errors import ErrorBody

from .api.keys import CreatedKeyOut, KeyBody, KeyOut
from .api.orgs import OrgBody
from .api.providers import ProviderBody
from .api.routes import RouteBody
from .api.settings import JwtBody, PurgeBody
from .api.teams import TeamBody
from .routes import PREFIX, ROUTES

REF = "#/components/schemas/{name}"

#: Request body per collection (POST and PUT share one Struct).
_BODIES: dict[str, type[msgspec.Struct]] = {
    "keys": KeyBody, "organizations": OrgBody, "teams": TeamBody, "providers": ProviderBody,
    "routes": RouteBody, "auth": JwtBody, "cache": PurgeBody}
#: POSTs that change something in place rather than create.
_POST_STATUS = {f"{PREFIX}/auth/configure": "200", f"{PREFIX}/cache/purge": "204"}
_PAGE = [{"name": "limit", "in": "query", "required": False,
          "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
         {"name": "offset", "in": "query", "required": False,
          "schema": {"type": "integer", "minimum": 0}}]
_FORCE = {"name": "force", "in": "query", "required": False,
          "schema": {"type": "boolean"}}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(cls: type[Any]) -> dict[str, Any]:
    return {"$ref": REF.format(name=cls.__name__)}


def _operation(method: str, pattern: str) -> dict[str, Any]:
    parts = pattern.removeprefix(PREFIX + "/").split("/")
    collection, has_id = parts[0], "{id}" in parts
    op: dict[str, Any] = {"tags": ["admin"], "security": [{"bearer": []}],
                          "operationId": f"admin_{method.lower()}_"
                                         + "_".join(p.strip("{}") for p in parts)}
    params: list[dict[str, Any]] = []
    if has_id:
        params.append({"name": "id", "in": "path", "required": True,
                       "schema": {"type": "string", "minLength": 1}})
    if method == "GET" and not has_id and collection != "auth":
        params += _PAGE
    if method == "DELETE" and collection in ("organizations", "teams"):
        params.append(_FORCE)
    if params:
        op["parameters"] = params
    body = _BODIES.get(collection)
    if method in ("POST", "PUT") and body is not None:
        op["requestBody"] = {"required": collection not in ("cache", "keys"),
                             "content": {"application/json": {"schema": _ref(body)}}}
    ok: dict[str, Any] = {"type": "object"}
    if collection == "keys" and has_id:
        ok = _ref(KeyOut)
    elif collection == "keys" and method == "POST":
        ok = _ref(CreatedKeyOut)
    if method == "DELETE":
        status, response = "204", {"description": "deleted"}
    elif method == "POST":
        status = _POST_STATUS.get(pattern, "201")
        response = ({"description": "done"} if status == "204" else _json(ok, "created"))
    else:
        status, response = "200", _json(ok, "ok")
    op["responses"] = {status: response,
                       "4XX": {"$ref": "#/components/responses/Error"}}
    return op


def admin_openapi() -> dict[str, Any]:
    """``{"paths": ..., "schemas": ...}`` for the admin API."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.pattern, {})[route.method.lower()] = _operation(
            route.method, route.pattern)
    _, schemas = msgspec.json.schema_components(
        [*_BODIES.values(), KeyOut, CreatedKeyOut, ErrorBody], ref_template=REF)
    return {"paths": paths, "schemas": schemas}
