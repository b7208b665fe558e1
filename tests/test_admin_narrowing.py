"""Members may only mint and edit keys narrower than the key they
authenticate with; they cannot loosen their own key; minted keys are capped
in number and die (deleted or blocked) with the key they came from."""

from __future__ import annotations

from typing import Any

from admin_harness import AdminClient, admin_service
from gandalf_admin.api.narrowing import MAX_MINTED_KEYS
from gandalf_admin.keygen import hash_key
from gandalf_common.contract import Caller

KEYS = "/admin/v1/keys"
LIMITED: dict[str, Any] = {
    "rpm_limit": 10, "tpm_limit": 1000, "allowed_models": ["gpt-4o", "gpt-4o-mini"],
    "max_budget": 5.0, "budget_period": "daily", "expires_at": "2030-01-01T00:00:00Z"}


async def setup_org(admin: AdminClient) -> Caller:
    """Org ``acme`` with team ``ml`` and a limited member key in it."""
    assert (await admin.call("POST", "/admin/v1/organizations",
                             body={"id": "acme", "name": "Acme"}))[0] == 201
    assert (await admin.call("POST", "/admin/v1/teams",
                             body={"id": "ml", "org_id": "acme", "name": "ML"}))[0] == 201
    assert (await admin.call("POST", "/admin/v1/teams",
                             body={"id": "other", "org_id": "acme", "name": "O"}))[0] == 201
    return await admin.member("acme", user_id="alice", team_id="ml", **LIMITED)


async def test_member_cannot_loosen_its_own_key(nats_url: str, fresh_pg_dsn: str) -> None:
    async with admin_service(nats_url, fresh_pg_dsn) as admin:
        alice = await setup_org(admin)
        own = f"{KEYS}/{alice.key_id}"
        for body in ({"team_id": None}, {"team_id": "other"}, {"rpm_limit": None},
                     {"rpm_limit": 0}, {"rpm_limit": 11}, {"tpm_limit": None},
                     {"allowed_models": None}, {"allowed_models": ["*"]},
                     {"max_budget": None}, {"max_budget": 50}, {"budget_period": "lifetime"},
                     {"expires_at": None}, {"expires_at": "2031-01-01T00:00:00Z"},
                     # Even narrowing its own key is an admin's job.
                     {"rpm_limit": 1}):
            status, payload = await admin.call("PUT", own, body=body, caller=alice)
            assert status == 403, (body, payload)
            assert payload["error"]["param"] == next(iter(body))
            assert "authenticate with" in payload["error"]["message"]
        status, key = await admin.call("GET", own)
        assert key["team_id"] == "ml" and key["rpm_limit"] == 10 and key["max_budget"] == 5
        # What stays allowed: a name, blocking itself, echoing the body back.
        status, key = await admin.call("PUT", own, body={"name": "renamed"}, caller=alice)
        assert status == 200 and key["name"] == "renamed"
        status, key = await admin.call("PUT", own, body=key, caller=alice)
        assert status == 200


async def test_minted_keys_inherit_and_only_narrow(nats_url: str, fresh_pg_dsn: str) -> None:
    async with admin_service(nats_url, fresh_pg_dsn) as admin:
        alice = await setup_org(admin)
        status, child = await admin.call("POST", KEYS, body={"name": "c"}, caller=alice)
        assert status == 201, child
        for field in ("rpm_limit", "tpm_limit", "allowed_models", "budget_period"):
            assert child[field] == LIMITED[field], field
        assert child["max_budget"] == 5.0 and child["team_id"] == "ml"
        assert child["expires_at"].startswith("2030-01-01T00:00:00")
        assert child["parent_key_id"] == alice.key_id
        wider: list[dict[str, Any]] = [
            {"rpm_limit": None}, {"rpm_limit": 0}, {"rpm_limit": 11}, {"tpm_limit": 1001},
            {"allowed_models": None}, {"allowed_models": ["gpt-4o", "claude-3"]},
            {"allowed_models": ["*"]}, {"max_budget": 5.01}, {"max_budget": None},
            {"budget_period": "lifetime"}, {"expires_at": None},
            {"expires_at": "2030-01-01T00:00:01Z"}, {"team_id": None}, {"team_id": "other"}]
        for body in wider:
            status, payload = await admin.call("POST", KEYS, body=body, caller=alice)
            assert status == 403, (body, payload)
            assert payload["error"]["param"] == next(iter(body)), (body, payload)
            # Nor by editing a key it minted.
            status, payload = await admin.call("PUT", f"{KEYS}/{child['id']}", body=body,
                                               caller=alice)
            assert status == 403, (body, payload)
        narrower = {"rpm_limit": 3, "tpm_limit": 10, "allowed_models": ["gpt-4o"],
                    "max_budget": 1.5, "expires_at": "2029-06-01T00:00:00Z"}
        status, made = await admin.call("POST", KEYS, body=narrower, caller=alice)
        assert status == 201 and made["rpm_limit"] == 3
        status, edited = await admin.call("PUT", f"{KEYS}/{child['id']}",
                                          body={"rpm_limit": 2}, caller=alice)
        assert status == 200 and edited["rpm_limit"] == 2


async def test_unlimited_member_key_mints_freely_but_stays_in_team(
        nats_url: str, fresh_pg_dsn: str) -> None:
    async with admin_service(nats_url, fresh_pg_dsn) as admin:
        await setup_org(admin)
        bob = await admin.member("acme", user_id="bob", team_id="ml")
        status, key = await admin.call("POST", KEYS, body={"rpm_limit": 500}, caller=bob)
        assert status == 201 and key["team_id"] == "ml"
        status, payload = await admin.call("POST", KEYS, body={"team_id": None}, caller=bob)
        assert status == 403 and payload["error"]["param"] == "team_id"


async def test_minted_keys_are_capped(nats_url: str, fresh_pg_dsn: str) -> None:
    async with admin_service(nats_url, fresh_pg_dsn) as admin:
        alice = await setup_org(admin)
        ids = []
        for _ in range(MAX_MINTED_KEYS):
            status, key = await admin.call("POST", KEYS, body={}, caller=alice)
            assert status == 201
            ids.append(key["id"])
        status, payload = await admin.call("POST", KEYS, body={}, caller=alice)
        assert status == 403 and payload["error"]["code"] == "key_limit_reached"
        assert (await admin.call("DELETE", f"{KEYS}/{ids[0]}", caller=alice))[0] == 204
        assert (await admin.call("POST", KEYS, body={}, caller=alice))[0] == 201


async def test_minted_keys_die_with_their_parent(nats_url: str, fresh_pg_dsn: str) -> None:
    async with admin_service(nats_url, fresh_pg_dsn) as admin:
        alice = await setup_org(admin)
        status, child = await admin.call("POST", KEYS, body={}, caller=alice)
        assert status == 201
        child_caller = Caller(key_id=child["id"], org_id="acme", role="member",
                              user_id="alice", team_id="ml")
        status, grandchild = await admin.call("POST", KEYS, body={"rpm_limit": 1},
                                              caller=child_caller)
        assert status == 201 and grandchild["parent_key_id"] == child["id"]
        hashes = {hash_key(child["key"]), hash_key(grandchild["key"])}
        assert hashes <= set(await admin.kv_keys())
        # Blocking the parent blocks what it minted, in the database and the KV.
        assert (await admin.call("PUT", f"{KEYS}/{alice.key_id}", body={"blocked": True}))[0] \
            == 200
        kv = await admin.kv_keys()
        assert all(kv[h].blocked for h in hashes)
        status, got = await admin.call("GET", f"{KEYS}/{grandchild['id']}")
        assert got["blocked"] is True
        # Deleting it deletes them (and drops them from the KV).
        assert (await admin.call("DELETE", f"{KEYS}/{alice.key_id}"))[0] == 204
        assert not hashes & set(await admin.kv_keys())
        for key in (child, grandchild):
            assert (await admin.call("GET", f"{KEYS}/{key['id']}"))[0] == 404
        # A full resync agrees (the database cascaded too).
        async with admin.db() as conn:
            assert await conn.fetchval("SELECT count(*) FROM api_keys WHERE org_id = 'acme'") \
                == 0


async def test_minted_budget_is_capped_by_what_the_member_has_left(
        nats_url: str, fresh_pg_dsn: str) -> None:
    async with admin_service(nats_url, fresh_pg_dsn) as admin:
        alice = await setup_org(admin)  # max_budget 5.0 daily
        async with admin.db() as conn:
            await conn.execute(
                "INSERT INTO usage_records (request_id, key_id, org_id, cost_usd, created_at)"
                " VALUES ('r-today', $1, 'acme', 3, now()),"
                " ('r-old', $1, 'acme', 100, now() - interval '3 days')", alice.key_id)
        status, payload = await admin.call("POST", KEYS, body={"max_budget": 2.5}, caller=alice)
        assert status == 403 and payload["error"]["param"] == "max_budget"
        assert "at most 2" in payload["error"]["message"]
        status, key = await admin.call("POST", KEYS, body={}, caller=alice)
        assert status == 201 and key["max_budget"] == 2.0  # inherited: what is left today
