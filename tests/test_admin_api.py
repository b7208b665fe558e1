"""Admin API round trips: orgs, teams, keys, routes, JWT settings and the
cache purge, with the original's JSON shapes, the fixed bugs (null clears,
limit up to 1000, 400/409 instead of 500) and KV after every write."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import datetime
from typing import Any

import msgspec

from admin_harness import AdminClient, admin_service
from gandalf_common import contract
from gandalf_common.records import (
    JWT_KEY,
    ORG_PREFIX,
    ROUTE_PREFIX,
    TEAM_PREFIX,
    config_key,
    jwt_decoder,
    org_decoder,
    route_decoder,
    team_decoder,
)

KEY_FIELDS = {"id", "name", "key_prefix", "user_id", "team_id", "org_id", "role",
              "allowed_models", "rpm_limit", "tpm_limit", "max_budget", "budget_period",
              "expires_at", "blocked", "last_used_at", "created_at", "parent_key_id"}


async def _error(admin: AdminClient, method: str, path: str, body: Any = None,
                 query: str = "") -> tuple[int, str | None]:
    status, payload = await admin.call(method, path, body=body, query=query)
    assert set(payload) == {"error"}, payload
    return status, payload["error"]["param"]


async def test_orgs_and_teams_round_trip(nats_url: str, fresh_pg_dsn: str) -> None:
    async with admin_service(nats_url, fresh_pg_dsn) as admin:
        status, org = await admin.call("POST", "/admin/v1/organizations", body={
            "id": "acme", "name": "Acme", "allowed_models": ["gpt-*", "claude-3"],
            "rpm_limit": 1000, "tpm_limit": 100000, "max_budget": 50.5,
            "budget_period": "monthly"})
        assert status == 201
        assert org["allowed_models"] == ["gpt-*", "claude-3"] and org["max_budget"] == 50.5
        kv_org = org_decoder.decode((await admin.kv_config())[config_key(ORG_PREFIX, "acme")])
        assert kv_org.limits.rpm_limit == 1000 and kv_org.limits.budget_period == "monthly"
        assert (await _error(admin, "POST", "/admin/v1/organizations",
                             {"id": "acme", "name": "again"})) == (409, "id")

        # Teams only narrow their org.
        for body, param in [({"allowed_models": ["gpt-4o", "*"]}, "allowed_models"),
                            ({"rpm_limit": 1001}, "rpm_limit"),
                            ({"max_budget": 60}, "max_budget")]:
            assert await _error(admin, "POST", "/admin/v1/teams",
                                {"org_id": "acme", "name": "t", **body}) == (400, param)
        status, team = await admin.call("POST", "/admin/v1/teams", body={
            "id": "ml", "org_id": "acme", "name": "ML", "allowed_models": ["gpt-4o*"],
            "rpm_limit": 0, "tpm_limit": 50000})
        assert status == 201 and team["org_id"] == "acme"
        kv_team = team_decoder.decode((await admin.kv_config())[config_key(TEAM_PREFIX, "ml")])
        assert kv_team.limits.tpm_limit == 50000 and kv_team.limits.allowed_models == ["gpt-4o*"]

        # PUT is partial: absent keeps, null clears (the original could not clear).
        status, org = await admin.call("PUT", "/admin/v1/organizations/acme",
                                       body={"rpm_limit": None, "name": "Acme Inc"})
        assert status == 200
        assert org["rpm_limit"] is None and org["tpm_limit"] == 100000
        assert org["name"] == "Acme Inc"
        kv_org = org_decoder.decode((await admin.kv_config())[config_key(ORG_PREFIX, "acme")])
        assert kv_org.limits.rpm_limit is None and kv_org.name == "Acme Inc"
        status, got = await admin.call("GET", "/admin/v1/organizations/acme")
        assert status == 200 and got == org
        # A GET body can be PUT back unchanged.
        assert (await admin.call("PUT", "/admin/v1/teams/ml", body=team)) == (200, team)
        status, listing = await admin.call("GET", "/admin/v1/teams", query="org_id=acme")
        assert listing == {"data": [team], "pagination": {"offset": 0, "limit": 50, "total": 1}}

        # A team with keys: 409, then ?force=true detaches them (KV follows).
        await admin.call("POST", "/admin/v1/teams", body={"id": "tmp", "org_id": "acme",
                                                          "name": "Tmp"})
        status, member = await admin.call("POST", "/admin/v1/keys",
                                          body={"org_id": "acme", "team_id": "tmp"})
        assert status == 201
        assert await _error(admin, "DELETE", "/admin/v1/teams/tmp") == (409, "id")
        assert (await admin.call("DELETE", "/admin/v1/teams/tmp", query="force=true"))[0] == 204
        assert config_key(TEAM_PREFIX, "tmp") not in await admin.kv_config()
        assert [r.team_id for r in (await admin.kv_keys()).values()] == [None]
        assert (await admin.call("GET", f"/admin/v1/keys/{member['id']}"))[1]["team_id"] is None

        # An org with a team and keys: 409, then ?force=true cascades (KV too).
        status, key = await admin.call("POST", "/admin/v1/keys",
                                       body={"org_id": "acme", "team_id": "ml"})
        assert status == 201
        assert await _error(admin, "DELETE", "/admin/v1/organizations/acme") == (409, "id")
        assert await _error(admin, "DELETE", "/admin/v1/organizations/default") == (409, "id")
        assert (await admin.call("DELETE", "/admin/v1/organizations/acme",
                                 query="force=true"))[0] == 204
        assert (await admin.call("GET", f"/admin/v1/keys/{key['id']}"))[0] == 404
        config = await admin.kv_config()
        assert config_key(ORG_PREFIX, "acme") not in config
        assert config_key(TEAM_PREFIX, "ml") not in config
        assert await admin.kv_keys() == {}
        assert await _error(admin, "DELETE", "/admin/v1/organizations/acme") == (404, None)


async def test_keys_round_trip(nats_url: str, fresh_pg_dsn: str) -> None:
    async with admin_service(nats_url, fresh_pg_dsn) as admin:
        await admin.call("POST", "/admin/v1/organizations", body={
            "id": "acme", "name": "Acme", "allowed_models": ["gpt-*"], "rpm_limit": 100})
        await admin.call("POST", "/admin/v1/teams", body={
            "id": "ml", "org_id": "acme", "name": "ML", "allowed_models": ["gpt-4o"]})
        resp = await admin.request("POST", "/admin/v1/keys", body={
            "org_id": "acme", "team_id": "ml", "name": "ci", "user_id": "u1",
            "allowed_models": ["gpt-4o"], "rpm_limit": 10, "tpm_limit": 0,
            "max_budget": 5, "budget_period": "daily",
            "expires_at": "2030-01-02T03:04:05+05:30"})
        assert resp.status == 201
        created = msgspec.json.decode(resp.body)
        headers = dict(resp.headers)
        assert headers["location"] == f"/admin/v1/keys/{created['id']}"
        assert headers["content-type"] == "application/json"
        plaintext = created.pop("key")
        assert set(created) == KEY_FIELDS  # never the hash
        assert plaintext.startswith("gnd_") and len(plaintext) == 47
        assert created["key_prefix"] == plaintext[:12]
        assert datetime.fromisoformat(created["expires_at"]) == datetime.fromisoformat(
            "2030-01-01T21:34:05+00:00")
        digest = hashlib.sha256(plaintext.encode()).hexdigest()
        assert digest.encode() not in resp.body
        record = (await admin.kv_keys())[digest]
        assert record.id == created["id"] and record.team_id == "ml"
        assert record.limits.rpm_limit == 10 and record.limits.tpm_limit == 0
        assert record.expires_at == datetime.fromisoformat(created["expires_at"]).timestamp()
        async with admin.db() as db:
            stored = await db.fetchrow("SELECT * FROM api_keys WHERE id = $1", created["id"])
        assert stored["key_hash"] == digest and plaintext not in str(dict(stored))

        path = f"/admin/v1/keys/{created['id']}"
        status, got = await admin.call("GET", path)
        assert status == 200 and got == created
        # Explicit null clears a limit and the expiry; absent fields stay.
        status, updated = await admin.call("PUT", path, body={"rpm_limit": None,
                                                              "expires_at": None})
        assert status == 200
        assert updated["rpm_limit"] is None and updated["expires_at"] is None
        assert updated["tpm_limit"] == 0 and updated["allowed_models"] == ["gpt-4o"]
        record = (await admin.kv_keys())[digest]
        assert record.limits.rpm_limit is None and record.expires_at is None

        # Validation: 400 naming the field, never a 500.
        cases: list[tuple[dict[str, Any], str]] = [
            ({"org_id": "nope"}, "org_id"), ({"team_id": "nope"}, "team_id"),
            ({"role": "root"}, "role"), ({"budget_period": "hourly"}, "budget_period"),
            ({"rpm_limit": -1}, "rpm_limit"), ({"tpm_limit": 10**9 + 1}, "tpm_limit"),
            ({"rpm_limit": 1.5}, "rpm_limit"), ({"rpm_limit": True}, "rpm_limit"),
            ({"expires_at": "tomorrow"}, "expires_at"),
            ({"expires_at": "2030-01-01T00:00:00"}, "expires_at"),  # no offset
            ({"rpm_limt": 5}, "rpm_limt"),  # a typo is not silently ignored
            ({"org_id": "acme", "rpm_limit": 101}, "rpm_limit"),  # wider than the org
            ({"org_id": "acme", "team_id": "ml", "allowed_models": ["gpt-4o-mini"]},
             "allowed_models"),  # wider than the team
        ]
        for body, param in cases:
            assert await _error(admin, "POST", "/admin/v1/keys", body) == (400, param), body
        assert await _error(admin, "PUT", path, {"org_id": "default"}) == (400, "org_id")
        assert await _error(admin, "GET", "/admin/v1/keys/nope") == (404, None)
        assert (await admin.call("DELETE", path))[0] == 204
        assert digest not in await admin.kv_keys()
        assert await _error(admin, "DELETE", path) == (404, None)


async def test_pagination(nats_url: str, fresh_pg_dsn: str) -> None:
    async with admin_service(nats_url, fresh_pg_dsn) as admin:
        async with admin.db() as db:
            await db.executemany(
                "INSERT INTO api_keys (id, key_hash, key_prefix, org_id) "
                "VALUES ($1, $2, 'gnd_x', 'default')",
                [(f"k{i:04d}", f"h{i:04d}") for i in range(1100)])
        status, page = await admin.call("GET", "/admin/v1/keys")
        assert status == 200 and len(page["data"]) == 50
        assert page["pagination"] == {"offset": 0, "limit": 50, "total": 1100}
        status, page = await admin.call("GET", "/admin/v1/keys", query="limit=1000&offset=50")
        assert status == 200 and len(page["data"]) == 1000  # the original made this 50
        assert page["pagination"] == {"offset": 50, "limit": 1000, "total": 1100}
        for query, param in [("limit=1001", "limit"), ("limit=0", "limit"),
                             ("limit=ten", "limit"), ("offset=-1", "offset")]:
            assert await _error(admin, "GET", "/admin/v1/keys", query=query) == (400, param)


async def test_routes(nats_url: str, fresh_pg_dsn: str) -> None:
    async with admin_service(nats_url, fresh_pg_dsn) as admin:
        for name in ("openai", "backup"):
            assert (await admin.call("POST", "/admin/v1/providers",
                                     body={"name": name, "type": "openai"}))[0] == 201
        body = {"model_alias": "smart", "strategy": "weighted", "cache_ttl_s": 30,
                "targets": [{"provider_id": "openai", "model": "gpt-4o", "weight": 3},
                            {"provider_id": "backup", "model": "gpt-4o", "priority": 1}]}
        resp = await admin.request("POST", "/admin/v1/routes", body=body)
        route = msgspec.json.decode(resp.body)
        assert resp.status == 201 and dict(resp.headers)["location"].endswith(route["id"])
        assert len(route["id"]) == 36 and route["id"][14] == "7"  # UUIDv7
        assert route["targets"][1] == {"provider_id": "backup", "model": "gpt-4o",
                                       "priority": 1, "weight": 1}
        record = route_decoder.decode(
            (await admin.kv_config())[config_key(ROUTE_PREFIX, route["id"])])
        assert [(t.provider, t.weight) for t in record.targets] == [("openai", 3), ("backup", 1)]
        assert record.strategy == "weighted" and record.cache_ttl_s == 30

        assert await _error(admin, "POST", "/admin/v1/routes", body) == (409, "model_alias")
        bad: list[tuple[dict[str, Any], str]] = [
            ({"targets": []}, "targets"),
            ({"model_alias": ""}, "model_alias"),
            ({"strategy": "random"}, "strategy"),
            ({"targets": [{"provider_id": "nope", "model": "m"}]}, "targets[0].provider_id"),
            ({"targets": [{"provider_id": "openai", "model": "m", "weight": 0}]},
             "targets[0].weight"),
            ({"targets": [{"provider_id": "openai", "model": ""}]}, "targets[0].model"),
            ({"targets": [{"provider_id": "openai"}]}, "targets[0].model"),
        ]
        for change, param in bad:
            new = {**body, "model_alias": "other", **change}
            assert await _error(admin, "POST", "/admin/v1/routes", new) == (400, param), change
        # PUT is a full replace: the strategy goes back to its default.
        path = f"/admin/v1/routes/{route['id']}"
        status, replaced = await admin.call("PUT", path, body={
            "model_alias": "smart-2", "targets": [{"provider_id": "backup", "model": "x"}]})
        assert status == 200 and replaced["strategy"] == "priority"
        assert replaced["cache_ttl_s"] == 0
        assert route_decoder.decode((await admin.kv_config())[config_key(
            ROUTE_PREFIX, route["id"])]).model_alias == "smart-2"
        # A provider that is still a target cannot go.
        assert await _error(admin, "DELETE", "/admin/v1/providers/backup") == (409, "id")
        assert (await admin.call("DELETE", path))[0] == 204
        assert config_key(ROUTE_PREFIX, route["id"]) not in await admin.kv_config()
        assert (await admin.call("DELETE", "/admin/v1/providers/backup"))[0] == 204


async def test_jwt_settings(nats_url: str, fresh_pg_dsn: str) -> None:
    async with admin_service(nats_url, fresh_pg_dsn) as admin:
        path = "/admin/v1/auth/configure"
        status, current = await admin.call("GET", path)
        assert status == 200 and current["enabled"] is False
        good = {"issuer": "https://id.example.com", "jwks_url": "https://id.example.com/jwks",
                "audience": ["gandalf"], "algorithms": ["RS256"],
                "claims": {"role": "resource_access.gandalf.role"}, "default_org": "default"}
        for algorithms, param in [(["HS256"], "algorithms[0]"), (["RS256", "none"],
                                                                  "algorithms[1]"),
                                  ([], "algorithms")]:
            assert await _error(admin, "POST", path, {**good, "algorithms": algorithms}) == (
                400, param)
        assert await _error(admin, "POST", path, {"enabled": True}) == (400, "issuer")
        assert await _error(admin, "POST", path, {**good, "default_org": "nope"}) == (
            400, "default_org")
        assert await _error(admin, "POST", path, {**good, "default_role": "root"}) == (
            400, "default_role")
        assert await _error(admin, "POST", path, {
            **good, "jwks_url": "http://169.254.169.254/keys"}) == (400, "jwks_url")
        assert await _error(admin, "POST", path, {**good, "leeway_s": -1}) == (400, "leeway_s")
        status, saved = await admin.call("POST", path, body=good)
        assert status == 200 and saved["enabled"] is True  # issuer + jwks_url turn it on
        assert saved["claims"] == {"user": "sub", "org": "org_id", "team": "team_id",
                                   "role": "resource_access.gandalf.role"}
        assert (await admin.call("GET", path)) == (200, saved)
        record = jwt_decoder.decode((await admin.kv_config())[JWT_KEY])
        assert record.issuer == "https://id.example.com" and record.algorithms == ["RS256"]
        assert record.claims.role == "resource_access.gandalf.role" and record.enabled
        status, off = await admin.call("POST", path, body={**good, "enabled": False})
        assert status == 200 and off["enabled"] is False
        assert not jwt_decoder.decode((await admin.kv_config())[JWT_KEY]).enabled


async def test_cache_purge_and_protocol_errors(nats_url: str, fresh_pg_dsn: str) -> None:
    async with admin_service(nats_url, fresh_pg_dsn) as admin:
        got: asyncio.Queue[contract.CachePurge] = asyncio.Queue()

        async def on_purge(msg: Any) -> None:
            await got.put(contract.cache_purge_decoder.decode(msg.data))

        sub = await admin.nc.subscribe(contract.CACHE_PURGE, cb=on_purge)
        try:
            assert await admin.call("POST", "/admin/v1/cache/purge") == (204, None)
            assert await asyncio.wait_for(got.get(), 5) == contract.CachePurge()
            assert await admin.call("POST", "/admin/v1/cache/purge",
                                    body={"model": "gpt-4o", "key_id": "k1"}) == (204, None)
            assert await asyncio.wait_for(got.get(), 5) == contract.CachePurge(
                model="gpt-4o", key_id="k1")
        finally:
            await sub.unsubscribe()
        assert await _error(admin, "POST", "/admin/v1/cache/purge", {"all": True}) == (
            400, "all")
        assert await _error(admin, "POST", "/admin/v1/organizations", b"{nope") == (400, None)
        assert await _error(admin, "POST", "/admin/v1/organizations", b"[]") == (400, None)
        assert await _error(admin, "POST", "/admin/v1/organizations", {"id": "x"}) == (
            400, "name")
        assert await _error(admin, "POST", "/admin/v1/organizations",
                            {"id": "a/b", "name": "x"}) == (400, "id")
        # PostgreSQL text cannot hold NUL: a 400, not a 500 with the driver's text.
        status, payload = await admin.call("POST", "/admin/v1/organizations",
                                           body={"name": "nul\u0000byte"})
        assert status == 400 and "asyncpg" not in str(payload)
        # Over 1 MiB (larger than a NATS message: the ingress never forwards it).
        resp = await admin.direct("POST", "/admin/v1/organizations",
                                  body=b'{"name": "' + b"x" * (1 << 20) + b'"}')
        assert resp.status == 413
        resp = await admin.request("PATCH", "/admin/v1/keys")
        assert resp.status == 405 and dict(resp.headers)["allow"] == "GET, POST"
        assert await _error(admin, "GET", "/admin/v1/nothing") == (404, None)
        # A trailing slash is the same route.
        assert (await admin.call("GET", "/admin/v1/organizations/"))[0] == 200
