"""The route table: every admin route with the permission and scope it
needs. ``dispatch`` matches a request, runs the one authorization check
(``access.authorize``) and only then the handler."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gandalf_common.authz import Perm
from gandalf_common.contract import AdminResponse

from .access import Access, Scope, authorize
from .api import keys, orgs, providers, settings, teams, usage
from .api import routes as routes_api
from .deps import Deps, Handler
from .errors import ApiError
from .wire import Request

PREFIX = "/admin/v1"


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    #: ``/admin/v1/keys/{id}``: ``{name}`` matches one path segment (the ingress
    #: hands over the ASGI path, already percent-decoded).
    pattern: str
    #: The caller's role must hold at least one of these bits.
    perm: Perm
    scope: Scope
    handler: Handler
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rx = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.pattern))
        object.__setattr__(self, "regex", re.compile(f"^{rx}$"))


_KEYS = Perm.MANAGE_OWN_KEYS | Perm.MANAGE_ALL_KEYS
_USAGE = Perm.VIEW_OWN_USAGE | Perm.VIEW_ALL_USAGE
G, ORG, A = Scope.GLOBAL, Scope.ORG, Scope.ANY

ROUTES: tuple[Route, ...] = (
    Route("GET", f"{PREFIX}/keys", _KEYS, ORG, keys.list_keys),
    Route("POST", f"{PREFIX}/keys", _KEYS, ORG, keys.create_key),
    Route("GET", f"{PREFIX}/keys/{{id}}", _KEYS, ORG, keys.get_key),
    Route("PUT", f"{PREFIX}/keys/{{id}}", _KEYS, ORG, keys.update_key),
    Route("DELETE", f"{PREFIX}/keys/{{id}}", _KEYS, ORG, keys.delete_key),
    Route("GET", f"{PREFIX}/organizations", Perm.MANAGE_ORGS, ORG, orgs.list_orgs),
    Route("POST", f"{PREFIX}/organizations", Perm.MANAGE_ORGS, G, orgs.create_org),
    Route("GET", f"{PREFIX}/organizations/{{id}}", Perm.MANAGE_ORGS, ORG, orgs.get_org),
    # Org limits cap everything below them: an org admin may not lift its own.
    Route("PUT", f"{PREFIX}/organizations/{{id}}", Perm.MANAGE_ORGS, G, orgs.update_org),
    Route("DELETE", f"{PREFIX}/organizations/{{id}}", Perm.MANAGE_ORGS, G, orgs.delete_org),
    Route("GET", f"{PREFIX}/teams", Perm.MANAGE_ORGS, ORG, teams.list_teams),
    Route("POST", f"{PREFIX}/teams", Perm.MANAGE_ORGS, ORG, teams.create_team),
    Route("GET", f"{PREFIX}/teams/{{id}}", Perm.MANAGE_ORGS, ORG, teams.get_team),
    Route("PUT", f"{PREFIX}/teams/{{id}}", Perm.MANAGE_ORGS, ORG, teams.update_team),
    Route("DELETE", f"{PREFIX}/teams/{{id}}", Perm.MANAGE_ORGS, ORG, teams.delete_team),
    # Providers are shared infrastructure (hosts, credentials): global only.
    Route("GET", f"{PREFIX}/providers", Perm.MANAGE_PROVIDERS, G, providers.list_providers),
    Route("POST", f"{PREFIX}/providers", Perm.MANAGE_PROVIDERS, G,
          providers.create_provider),
    Route("GET", f"{PREFIX}/providers/{{id}}", Perm.MANAGE_PROVIDERS, G,
          providers.get_provider),
    Route("PUT", f"{PREFIX}/providers/{{id}}", Perm.MANAGE_PROVIDERS, G,
          providers.replace_provider),
    Route("DELETE", f"{PREFIX}/providers/{{id}}", Perm.MANAGE_PROVIDERS, G,
          providers.delete_provider),
    # Routes change what every tenant gets: anyone with the bit reads, global writes.
    Route("GET", f"{PREFIX}/routes", Perm.MANAGE_ROUTES, A, routes_api.list_routes),
    Route("POST", f"{PREFIX}/routes", Perm.MANAGE_ROUTES, G, routes_api.create_route),
    Route("GET", f"{PREFIX}/routes/{{id}}", Perm.MANAGE_ROUTES, A, routes_api.get_route),
    Route("PUT", f"{PREFIX}/routes/{{id}}", Perm.MANAGE_ROUTES, G, routes_api.replace_route),
    Route("DELETE", f"{PREFIX}/routes/{{id}}", Perm.MANAGE_ROUTES, G,
          routes_api.delete_route),
    Route("GET", f"{PREFIX}/auth/configure", Perm.MANAGE_ORGS, G, settings.get_jwt),
    Route("POST", f"{PREFIX}/auth/configure", Perm.MANAGE_ORGS, G, settings.configure_jwt),
    Route("POST", f"{PREFIX}/cache/purge", Perm.MANAGE_PROVIDERS, G, settings.purge_cache),
    # Members see their own key's (or user's) usage, VIEW_ALL_USAGE the whole org.
    Route("GET", f"{PREFIX}/usage", _USAGE, ORG, usage.list_usage),
    Route("GET", f"{PREFIX}/usage/summary", _USAGE, ORG, usage.usage_summary),
)


def match(method: str, path: str) -> tuple[Route, dict[str, str]]:
    """The route for ``method path`` and its path parameters; 404 or 405."""
    path = path.rstrip("/") or "/"
    allowed: list[str] = []
    for route in ROUTES:
        m = route.regex.match(path)
        if m is None:
            continue
        if route.method == method:
            return route, m.groupdict()
        allowed.append(route.method)
    if allowed:
        raise ApiError(405, f"method {method} not allowed on {path}",
                       code="method_not_allowed", headers=[("allow", ", ".join(allowed))])
    raise ApiError(404, f"no admin route {path}", code="not_found")


async def dispatch(req: Request, deps: Deps) -> AdminResponse:
    route, req.params = match(req.method.upper(), req.path)
    access: Access = authorize(route.perm, route.scope, req.caller, req.query)
    return await route.handler(req, access, deps)
