"""Admin API authorization: every role against every route of the route
table, and org isolation (another org's keys and teams are invisible)."""

from __future__ import annotations

from typing import Any

from admin_harness import GLOBAL_ADMIN, AdminClient, admin_service, caller
from gandalf_admin.access import Scope, caller_perms, is_global_admin
from gandalf_admin.routes import ROUTES
from gandalf_common.contract import Caller

ORG_ADMIN = caller("admin", "acme")
ROLES: dict[str, Caller] = {
    "global admin": GLOBAL_ADMIN,
    "admin key": Caller(key_id="bootstrap", org_id="default", role="admin", auth="admin_key"),
    "org admin": ORG_ADMIN,
    "member": caller("member", "acme", user_id="u-member"),
    "default member": caller("member", "default", user_id="u-default"),
    "viewer": caller("viewer", "acme"),
    "service_account": caller("service_account", "acme"),
    "unknown role": caller("root", "default"),
}


def _expect_forbidden(route: Any, who: Caller) -> bool:
    lacks_bit = not caller_perms(who) & route.perm
    lacks_scope = route.scope is Scope.GLOBAL and not is_global_admin(who)
    return lacks_bit or lacks_scope


async def test_every_role_on_every_route(nats_url: str, fresh_pg_dsn: str) -> None:
    async with admin_service(nats_url, fresh_pg_dsn) as admin:
        status, _ = await admin.call("POST", "/admin/v1/organizations",
                                     body={"id": "acme", "name": "Acme"})
        assert status == 201
        roles = dict(ROLES)
        for name in ("member", "default member"):  # members need a key that exists
            who = roles[name]
            roles[name] = await admin.member(who.org_id, user_id=who.user_id)
        seen = set()
        for route in ROUTES:
            seen.add((route.method, route.pattern))
            # Ids that do not exist: nothing is destroyed, and 404 is not 403.
            path = route.pattern.replace("{id}", "does-not-exist")
            body = {} if route.method in ("POST", "PUT") else None
            for name, who in roles.items():
                status, payload = await admin.call(route.method, path, body=body, caller=who)
                forbidden = _expect_forbidden(route, who)
                assert (status == 403) == forbidden, (name, route.method, path, status, payload)
                if forbidden:
                    assert payload["error"]["code"] == "insufficient_permissions"
                    assert payload["error"]["type"] == "permission_error"
        # The table is what the service serves: keys, orgs, teams, providers,
        # routes (5 each), auth settings (2), the cache purge and usage (2).
        assert len(seen) == len(ROUTES) == 30


async def _setup_two_orgs(admin: AdminClient) -> dict[str, str]:
    for org in ("alpha", "beta"):
        assert (await admin.call("POST", "/admin/v1/organizations",
                                 body={"id": org, "name": org.title()}))[0] == 201
    status, team = await admin.call("POST", "/admin/v1/teams",
                                    body={"id": "alpha-team", "org_id": "alpha", "name": "T"})
    assert status == 201
    status, key = await admin.call("POST", "/admin/v1/keys",
                                   body={"org_id": "alpha", "team_id": "alpha-team",
                                         "name": "alpha key"})
    assert status == 201
    return {"team": team["id"], "key": key["id"]}


async def test_org_admin_cannot_reach_another_org(nats_url: str, fresh_pg_dsn: str) -> None:
    beta_admin = caller("admin", "beta")
    alpha_admin = caller("admin", "alpha")
    async with admin_service(nats_url, fresh_pg_dsn) as admin:
        ids = await _setup_two_orgs(admin)
        key_path, team_path = f"/admin/v1/keys/{ids['key']}", f"/admin/v1/teams/{ids['team']}"
        for method, path, body in [("GET", key_path, None), ("PUT", key_path, {"name": "x"}),
                                   ("DELETE", key_path, None), ("GET", team_path, None),
                                   ("PUT", team_path, {"name": "x"}),
                                   ("DELETE", team_path, None),
                                   ("GET", "/admin/v1/organizations/alpha", None)]:
            status, payload = await admin.call(method, path, body=body, caller=beta_admin)
            assert status == 404, (method, path, payload)  # no existence leak
        for path in ("/admin/v1/keys", "/admin/v1/teams", "/admin/v1/organizations"):
            status, payload = await admin.call("GET", path, query="org_id=alpha",
                                               caller=beta_admin)
            assert status == 403 and payload["error"]["param"] == "org_id", path
        for path, body in [("/admin/v1/keys", {"org_id": "alpha"}),
                           ("/admin/v1/teams", {"org_id": "alpha", "name": "t"})]:
            status, payload = await admin.call("POST", path, body=body, caller=beta_admin)
            assert status == 403 and payload["error"]["param"] == "org_id"
        # Another org's team cannot be borrowed: the same answer as a missing team.
        status, payload = await admin.call("POST", "/admin/v1/keys",
                                           body={"team_id": ids["team"]}, caller=beta_admin)
        assert status == 400 and payload["error"]["param"] == "team_id"
        status, listing = await admin.call("GET", "/admin/v1/keys", caller=beta_admin)
        assert status == 200 and listing["data"] == []
        status, listing = await admin.call("GET", "/admin/v1/organizations", caller=beta_admin)
        assert [o["id"] for o in listing["data"]] == ["beta"]
        # Untouched, and fully visible to its own org admin.
        status, key = await admin.call("GET", key_path, caller=alpha_admin)
        assert status == 200 and key["name"] == "alpha key"
        status, listing = await admin.call("GET", "/admin/v1/keys", caller=alpha_admin)
        assert [k["id"] for k in listing["data"]] == [ids["key"]]
        assert (await admin.call("GET", team_path, caller=alpha_admin))[0] == 200
        # A global admin lists every org, or one.
        status, listing = await admin.call("GET", "/admin/v1/keys", query="org_id=beta")
        assert status == 200 and listing["pagination"]["total"] == 0


async def test_member_manages_only_its_own_keys(nats_url: str, fresh_pg_dsn: str) -> None:
    async with admin_service(nats_url, fresh_pg_dsn) as admin:
        await _setup_two_orgs(admin)
        alice = await admin.member("alpha", user_id="alice")
        bob = await admin.member("alpha", user_id="bob")
        anon = await admin.member("alpha")  # an API key without a user
        status, mine = await admin.call("POST", "/admin/v1/keys", body={"name": "mine"},
                                        caller=alice)
        assert status == 201 and mine["user_id"] == "alice" and mine["org_id"] == "alpha"
        status, for_alice = await admin.call("POST", "/admin/v1/keys",
                                             body={"org_id": "alpha", "user_id": "alice"})
        assert status == 201
        status, anon_key = await admin.call("POST", "/admin/v1/keys", body={}, caller=anon)
        assert status == 201 and anon_key["user_id"] is None
        status, listing = await admin.call("GET", "/admin/v1/keys", caller=alice)
        assert {k["id"] for k in listing["data"]} == {mine["id"], for_alice["id"],
                                                      alice.key_id}
        for who in (bob, anon):
            status, _ = await admin.call("GET", f"/admin/v1/keys/{mine['id']}", caller=who)
            assert status == 404
            status, _ = await admin.call("DELETE", f"/admin/v1/keys/{mine['id']}", caller=who)
            assert status == 404
        # The creator of a user-less key manages it (created_by).
        status, listing = await admin.call("GET", "/admin/v1/keys", caller=anon)
        assert {k["id"] for k in listing["data"]} == {anon_key["id"], anon.key_id}
        status, _ = await admin.call("PUT", f"/admin/v1/keys/{anon_key['id']}",
                                     body={"rpm_limit": 5}, caller=anon)
        assert status == 200
        # What a member may not do, even to its own keys.
        denied: list[tuple[str, str, dict[str, Any]]] = [
            ("POST", "/admin/v1/keys", {"role": "admin"}),
            ("POST", "/admin/v1/keys", {"role": "viewer"}),  # view_all_usage is not its own
            ("POST", "/admin/v1/keys", {"user_id": "bob"}),
            ("POST", "/admin/v1/keys", {"team_id": "alpha-team"}),
            ("PUT", f"/admin/v1/keys/{mine['id']}", {"role": "admin"}),
            ("PUT", f"/admin/v1/keys/{mine['id']}", {"user_id": "bob"}),
        ]
        for method, path, body in denied:
            status, payload = await admin.call(method, path, body=body, caller=alice)
            assert status == 403, (body, payload)
            assert payload["error"]["param"] == next(iter(body))
        assert (await admin.call("POST", "/admin/v1/keys", body={"role": "service_account"},
                                 caller=alice))[0] == 201
        # A key an admin blocked stays blocked.
        assert (await admin.call("PUT", f"/admin/v1/keys/{mine['id']}",
                                 body={"blocked": True}))[0] == 200
        status, payload = await admin.call("PUT", f"/admin/v1/keys/{mine['id']}",
                                           body={"blocked": False}, caller=alice)
        assert status == 403 and payload["error"]["param"] == "blocked"
        assert (await admin.call("DELETE", f"/admin/v1/keys/{mine['id']}",
                                 caller=alice))[0] == 204

