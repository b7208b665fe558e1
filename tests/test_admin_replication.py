"""YAML bootstrap (insert and sync), and the database -> NATS KV replication:
full sync on start (stale entries removed), replicas starting together, and
convergence after NATS was away during a write."""

from __future__ import annotations

import asyncio
import hashlib
import time

import asyncpg
import pytest

from admin_harness import AdminClient, admin_service
from gandalf_admin.bootstrap import BootstrapError
from gandalf_admin.replicate import decode_entry, desired_state
from gandalf_admin.store import PgRepos
from gandalf_admin.store.pg_common import init_connection
from gandalf_app.embedded import EmbeddedNats
from gandalf_common.config import GatewayConfig, parse_config
from gandalf_common.records import (
    JWT_KEY,
    ORG_PREFIX,
    PROVIDER_PREFIX,
    ROUTE_PREFIX,
    config_key,
    jwt_decoder,
    org_decoder,
    provider_decoder,
    route_decoder,
)

YAML_KEY = "gnd_yaml-key-for-tenant-x-0123456789abcdefghijkl"
DIGEST = hashlib.sha256(YAML_KEY.encode()).hexdigest()


def _config(*, model: str = "gpt-4o", role: str = "member", priority: int = 0,
            issuer: str = "https://id.example.com", mode: str = "insert") -> GatewayConfig:
    text = f"""
bootstrap: {mode}
providers:
  - name: openai
    type: openai
    api_key: sk-canary-123456
    priority: {priority}
routes:
  - model_alias: smart
    targets: [{{provider: openai, model: {model}}}]
keys:
  - name: tenant key
    key: {YAML_KEY}
    org_id: tenant-x
    role: {role}
    allowed_models: [smart]
auth:
  jwt:
    issuer: {issuer}
    jwks_url: https://id.example.com/jwks
    audience: [gandalf]
"""
    cfg, _warnings = parse_config(text)
    return cfg


async def _kv_matches_db(admin: AdminClient) -> None:
    """KV holds exactly what the database says (the admin's own config keys)."""
    conn = await asyncpg.connect(admin.dsn)
    try:
        await init_connection(conn)
        keys, config = await desired_state(PgRepos(conn))
    finally:
        await conn.close()
    for bucket, want, is_keys in ((admin.keys_bucket, keys, True),
                                  (admin.config_bucket, config, False)):
        have = await admin.kv(bucket)
        assert have.keys() == want.keys()
        for key, raw in have.items():
            assert decode_entry(key, raw, keys_bucket=is_keys) == decode_entry(
                key, want[key], keys_bucket=is_keys), key


async def _restart(admin: AdminClient, cfg: GatewayConfig) -> None:
    twin = admin.twin(cfg)
    await twin.start(admin.nc)
    await twin.stop(5.0)


async def test_bootstrap_insert_then_sync(nats_url: str, fresh_pg_dsn: str) -> None:
    async with admin_service(nats_url, fresh_pg_dsn, _config()) as admin:
        async with admin.db() as db:
            org = await db.fetchrow("SELECT * FROM organizations WHERE id = 'tenant-x'")
            key = await db.fetchrow("SELECT * FROM api_keys WHERE key_hash = $1", DIGEST)
            provider = await db.fetchrow("SELECT * FROM providers WHERE id = 'openai'")
        assert org["name"] == "tenant-x"  # created for the key, instead of failing start
        assert key["id"] == DIGEST[:16]  # the ingress's static-mode key id
        assert key["key_prefix"] == YAML_KEY[:12] and key["name"] == "tenant key"
        assert key["allowed_models"] == ["smart"] and key["role"] == "member"
        assert provider["secrets_enc"].startswith("v1.")
        assert "sk-canary" not in str(dict(provider))
        sealed = provider["secrets_enc"]
        record = (await admin.kv_keys())[DIGEST]
        assert record.limits.allowed_models == ["smart"] and record.org_id == "tenant-x"
        config = await admin.kv_config()
        assert org_decoder.decode(config[config_key(ORG_PREFIX, "tenant-x")]).name == "tenant-x"
        assert jwt_decoder.decode(config[JWT_KEY]).issuer == "https://id.example.com"
        status, routes = await admin.call("GET", "/admin/v1/routes")
        route_id = routes["data"][0]["id"]
        assert routes["data"][0]["targets"][0]["model"] == "gpt-4o"
        await _kv_matches_db(admin)

        # insert (the default): the YAML changed, the rows did not.
        changed = dict(model="gpt-4o-mini", role="viewer", priority=5,
                       issuer="https://other.example.com")
        await _restart(admin, _config(**changed))
        assert (await admin.call("GET", f"/admin/v1/routes/{route_id}"))[1]["targets"][0][
            "model"] == "gpt-4o"
        assert (await admin.kv_keys())[DIGEST].role == "member"
        await _kv_matches_db(admin)

        # sync: existing rows follow the YAML (and KV with them); nothing is deleted.
        status, extra = await admin.call("POST", "/admin/v1/keys", body={"name": "api"})
        assert status == 201
        await _restart(admin, _config(**changed, mode="sync"))
        assert (await admin.call("GET", f"/admin/v1/routes/{route_id}"))[1]["targets"][0][
            "model"] == "gpt-4o-mini"
        assert (await admin.kv_keys())[DIGEST].role == "viewer"
        config = await admin.kv_config()
        assert route_decoder.decode(config[config_key(ROUTE_PREFIX, route_id)]
                                    ).targets[0].model == "gpt-4o-mini"
        assert provider_decoder.decode(config[config_key(PROVIDER_PREFIX, "openai")]
                                       ).priority == 5
        assert jwt_decoder.decode(config[JWT_KEY]).issuer == "https://other.example.com"
        assert (await admin.call("GET", f"/admin/v1/keys/{extra['id']}"))[0] == 200
        async with admin.db() as db:
            # The same secret keeps its ciphertext: no KV churn on every start.
            assert await db.fetchval(
                "SELECT secrets_enc FROM providers WHERE id = 'openai'") == sealed
        await _kv_matches_db(admin)


async def test_secret_in_yaml_needs_the_encryption_key(
        nats_url: str, fresh_pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GANDALF_ENCRYPTION_KEY", raising=False)
    async with admin_service(nats_url, fresh_pg_dsn, _config(), encryption_key=None,
                             start=False) as admin:
        with pytest.raises(BootstrapError, match="GANDALF_ENCRYPTION_KEY"):
            await admin.service.start(admin.nc)


async def test_full_sync_removes_stale_entries(nats_url: str, fresh_pg_dsn: str) -> None:
    async with admin_service(nats_url, fresh_pg_dsn, start=False) as admin:
        js = admin.nc.jetstream()
        keys = await js.create_key_value(bucket=admin.keys_bucket, history=1)
        config = await js.create_key_value(bucket=admin.config_bucket, history=1)
        await keys.put("ab" * 32, b"a revoked key")
        await config.put(config_key(ORG_PREFIX, "ghost"), b"deleted org")
        await config.put(config_key(ORG_PREFIX, "default"), b"stale value")
        await config.put(config_key(ROUTE_PREFIX, "old"), b"deleted route")
        await config.put(JWT_KEY, b"settings removed from the db")
        await config.put("other.thing", b"not the admin's")
        await admin.service.start(admin.nc)
        entries = await admin.kv_config()
        assert entries.pop("other.thing") == b"not the admin's"  # outside its prefixes
        assert set(entries) == {config_key(ORG_PREFIX, "default")}
        assert org_decoder.decode(entries[config_key(ORG_PREFIX, "default")]).id == "default"
        assert await admin.kv_keys() == {}


async def test_replicas_start_and_write_concurrently(nats_url: str, fresh_pg_dsn: str) -> None:
    async with admin_service(nats_url, fresh_pg_dsn, _config(), start=False) as admin:
        twin = admin.twin()
        await asyncio.gather(admin.service.start(admin.nc), twin.start(admin.nc))
        try:
            async with admin.db() as db:
                assert await db.fetchval("SELECT count(*) FROM routes") == 1
                assert await db.fetchval("SELECT count(*) FROM api_keys") == 1
                assert await db.fetchval("SELECT count(*) FROM providers") == 1
            await _kv_matches_db(admin)
            # Writes through both replicas (one queue group) racing a full sync:
            # KV still ends equal to the database.
            calls = [admin.call("POST", "/admin/v1/keys", body={"name": f"k{i}"})
                     for i in range(12)]
            calls += [admin.call("PUT", "/admin/v1/organizations/tenant-x",
                                 body={"rpm_limit": i}) for i in range(1, 7)]
            results = await asyncio.gather(*calls, twin.repl.full_sync())
            assert all(r[0] in (200, 201) for r in results[:-1])
            await _kv_matches_db(admin)
        finally:
            await twin.stop(5.0)


async def test_kv_converges_after_nats_outage(own_nats: EmbeddedNats, fresh_pg_dsn: str) -> None:
    async with admin_service(own_nats.url, fresh_pg_dsn) as admin:
        repl = admin.service.repl
        assert repl is not None
        repl.retry_min_s, repl.retry_max_s = 0.1, 0.3
        await asyncio.to_thread(own_nats.stop)
        # The write commits although KV cannot be told; the service knows it owes a sync.
        started = time.monotonic()
        resp = await admin.direct("POST", "/admin/v1/keys", body={"name": "during outage"})
        assert resp.status == 201 and time.monotonic() - started < 2
        assert repl.needs_sync
        await asyncio.to_thread(own_nats.start)
        deadline = time.monotonic() + 15
        while repl.needs_sync or not await _has_key(admin, "during outage"):
            assert time.monotonic() < deadline, "KV never converged"
            await asyncio.sleep(0.1)
        await _kv_matches_db(admin)


async def _has_key(admin: AdminClient, name: str) -> bool:
    if not admin.nc.is_connected:
        return False
    return any(r.name == name for r in (await admin.kv_keys()).values())
