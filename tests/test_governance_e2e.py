"""Managed mode end to end on the public port: the admin API through the
ingress, keys/orgs/teams enforced by the ingress from the KV mirror,
providers and routes changed at runtime."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio

from gateway_harness import UPSTREAM_KEY
from managed_harness import ADMIN_KEY, ManagedGateway, start_managed

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def managed(managed_nats_url: str, fresh_pg_dsn: str, mock_upstream: Any
                  ) -> AsyncIterator[ManagedGateway]:
    gw = await start_managed(managed_nats_url, fresh_pg_dsn, mock_upstream.base_url)
    yield gw
    await gw.close()


def admin(gw: ManagedGateway, key: str = ADMIN_KEY) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gw.url + "/admin/v1", timeout=15,
                             headers={"authorization": f"Bearer {key}"})


def chat(gw: ManagedGateway, key: str, model: str = "m") -> Any:
    client = openai.AsyncOpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=15)
    return client.chat.completions.create(model=model,
                                          messages=[{"role": "user", "content": "hi"}])


async def test_org_team_key_lifecycle_through_the_public_port(managed: ManagedGateway,
                                                              upstream: Any) -> None:
    async with admin(managed) as api:
        r = await api.post("/organizations", json={"id": "acme", "name": "Acme",
                                                   "allowed_models": ["m*"], "rpm_limit": 100})
        assert r.status_code == 201, r.text
        r = await api.post("/teams", json={"id": "red", "org_id": "acme", "name": "Red",
                                           "tpm_limit": 5000})
        assert r.status_code == 201, r.text
        r = await api.post("/keys", json={"org_id": "acme", "team_id": "red", "role": "member"})
        assert r.status_code == 201, r.text
        created = r.json()
        key, key_id = created["key"], created["id"]
        assert key.startswith("gnd_") and "key_hash" not in created
    completion = await chat(managed, key)
    assert completion.choices[0].message.content
    # The key's identity carries the inherited limits.
    identity = await managed_identity(managed, key)
    assert identity.org_id == "acme" and identity.team_id == "red"
    assert identity.limits.rpm_limit == 100 and identity.limits.tpm_limit == 5000
    async with admin(managed) as api:
        r = await api.put(f"/keys/{key_id}", json={"blocked": True})
        assert r.status_code == 200 and r.json()["blocked"] is True
    await wait_refused(managed, key, within=1.0)
    with pytest.raises(openai.PermissionDeniedError):
        await chat(managed, key)


async def managed_identity(gw: ManagedGateway, key: str) -> Any:
    from gandalf_ingress.auth import Authenticator

    return await Authenticator(gw.live).authenticate(f"Bearer {key}")


async def wait_refused(gw: ManagedGateway, key: str, *, within: float) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=5) as http:
        while loop.time() - start < within:
            r = await http.get("/models", headers={"authorization": f"Bearer {key}"})
            if r.status_code in (401, 403):
                return loop.time() - start
            await asyncio.sleep(0.02)
    raise AssertionError(f"key still accepted after {within}s")


async def test_admin_api_needs_a_caller_with_rights(managed: ManagedGateway,
                                                    upstream: Any) -> None:
    async with httpx.AsyncClient(base_url=managed.url + "/admin/v1") as anonymous:
        assert (await anonymous.get("/keys")).status_code == 401
    async with admin(managed) as api:
        r = await api.post("/keys", json={"role": "member"})
        member_key = r.json()["key"]
    async with admin(managed, member_key) as api:
        r = await api.get("/providers")
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "insufficient_permissions"


async def test_providers_and_routes_change_at_runtime(managed: ManagedGateway,
                                                      upstream: Any) -> None:
    async with admin(managed) as api:
        r = await api.post("/providers", json={
            "name": "late", "type": "openai", "base_url": upstream.base_url,
            "api_key": UPSTREAM_KEY})
        assert r.status_code == 201, r.text
        assert UPSTREAM_KEY not in r.text  # write-only secret
        r = await api.post("/routes", json={"model_alias": "late-model", "targets": [
            {"provider_id": "late", "model": "late-v1"}]})
        assert r.status_code == 201, r.text
        route_id = r.json()["id"]
    await eventually(lambda: chat(managed, ADMIN_KEY, "late-model"))
    assert upstream.requests_to("/chat/completions")[-1].body["model"] == "late-v1"
    async with admin(managed) as api:
        r = await api.put(f"/routes/{route_id}", json={"model_alias": "late-model", "targets": [
            {"provider_id": "late", "model": "late-v2"}]})
        assert r.status_code == 200, r.text
    await eventually(lambda: chat(managed, ADMIN_KEY, "late-model"),
                     check=lambda: upstream.requests_to("/chat/completions")[-1]
                     .body["model"] == "late-v2")
    async with admin(managed) as api:
        assert (await api.delete(f"/routes/{route_id}")).status_code == 204
    await eventually(lambda: expect_404(managed))


async def expect_404(gw: ManagedGateway) -> None:
    with pytest.raises(openai.NotFoundError):
        await chat(gw, ADMIN_KEY, "late-model")


async def eventually(action: Any, *, check: Any = None, within: float = 3.0) -> None:
    """Replication takes a moment: retry ``action`` until it (and ``check``) pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            await action()
            if check is None or check():
                return
        except Exception:
            if loop.time() > deadline:
                raise
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.05)


async def test_revoked_key_refused_by_every_ingress_within_a_second(
        managed: ManagedGateway, upstream: Any, tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    from gateway_harness import free_port
    from managed_harness import managed_yaml

    ports = [free_port(), free_port()]
    procs = []
    for port in ports:
        config = tmp_path / f"ingress-{port}.yaml"
        config.write_text(managed_yaml(port, managed.cfg.database.url, upstream.base_url))
        env = dict(os.environ, GANDALF_ADMIN_KEY=ADMIN_KEY,
                   GANDALF_NATS_URL=managed.nc.connected_url.geturl()
                   if managed.nc.connected_url else "")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "gandalf_app.cli", "ingress", "--config", str(config),
             "--log-level", "warning"], env=env))
    try:
        urls = [f"http://127.0.0.1:{p}/v1" for p in ports]
        boot = {"authorization": f"Bearer {ADMIN_KEY}"}
        async with httpx.AsyncClient(timeout=5) as http:
            for url in urls:  # wait for both to start
                await eventually(lambda url=url: _models_ok(http, url, ADMIN_KEY), within=20)
            # The admin API through a separate ingress process.
            r = await http.post(urls[0].replace("/v1", "/admin/v1/keys"), headers=boot,
                                json={"role": "member", "name": "to-revoke"})
            assert r.status_code == 201, r.text
            key, key_id = r.json()["key"], r.json()["id"]
            for url in urls:
                await eventually(lambda url=url: _models_ok(http, url, key), within=2)
            r = await http.delete(urls[1].replace("/v1", f"/admin/v1/keys/{key_id}"),
                                  headers=boot)
            assert r.status_code == 204
            loop = asyncio.get_running_loop()
            start = loop.time()
            refused: dict[str, float] = {}
            while len(refused) < len(urls) and loop.time() - start < 1.0:
                for url in urls:
                    if url not in refused:
                        r = await http.get(url + "/models",
                                           headers={"authorization": f"Bearer {key}"})
                        if r.status_code == 401:
                            refused[url] = loop.time() - start
                await asyncio.sleep(0.01)
        assert set(refused) == set(urls), f"still accepted after 1 s by {set(urls) - set(refused)}"
        print(f"revocation seen by each ingress after (s): {sorted(refused.values())}")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


async def _models_ok(http: httpx.AsyncClient, url: str, key: str) -> None:
    r = await http.get(url + "/models", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.status_code


async def test_jwt_configured_through_the_admin_api(managed: ManagedGateway,
                                                    upstream: Any) -> None:
    import time

    from cryptography.hazmat.primitives.asymmetric import rsa

    from jwks_server import JwksServer, Key

    signer = Key(rsa.generate_private_key(public_exponent=65537, key_size=2048), "k1", "RS256")
    issuer = "https://idp.test/realms/gandalf"
    with JwksServer([signer.jwk]) as jwks:
        async with admin(managed) as api:
            r = await api.post("/organizations", json={"id": "jwt-org", "name": "JWT org",
                                                       "allowed_models": ["m"]})
            assert r.status_code == 201, r.text
            r = await api.post("/auth/configure", json={
                "enabled": True, "issuer": issuer, "audience": ["gandalf"],
                "jwks_url": jwks.url, "algorithms": ["RS256"],
                "claims": {"org": "tenant", "role": "groups"}})
            assert r.status_code in (200, 201), r.text
        now = int(time.time())
        good = signer.sign({"iss": issuer, "aud": "gandalf", "sub": "alice", "exp": now + 300,
                            "tenant": "jwt-org", "groups": ["staff", "member"]})
        await eventually(lambda: chat(managed, good))
        expired = signer.sign({"iss": issuer, "aud": "gandalf", "sub": "alice",
                               "exp": now - 3600, "tenant": "jwt-org", "groups": ["member"]})
        with pytest.raises(openai.AuthenticationError):
            await chat(managed, expired)
        other_audience = signer.sign({"iss": issuer, "aud": "someone-else", "sub": "alice",
                                      "exp": now + 300, "tenant": "jwt-org"})
        with pytest.raises(openai.AuthenticationError):
            await chat(managed, other_audience)
        # The org's allowlist applies to JWT callers too.
        with pytest.raises(openai.PermissionDeniedError):
            await chat(managed, good, model="late-model-not-allowed")
        # A JWT admin of jwt-org is an org admin: no provider management.
        org_admin = signer.sign({"iss": issuer, "aud": "gandalf", "sub": "bob",
                                 "exp": now + 300, "tenant": "jwt-org", "groups": ["admin"]})
        async with admin(managed, org_admin) as api:
            assert (await api.get("/providers")).status_code == 403
            assert (await api.get("/keys")).status_code == 200


async def test_jwt_org_claim_is_required_and_must_name_a_known_org(
        managed: ManagedGateway, upstream: Any) -> None:
    """No org claim: refused unless ``default_org`` is set, and even then never
    a global admin; an org claim naming an unknown org: refused unless
    ``allow_unknown_orgs``. Real signed tokens through the public port."""
    import time

    from cryptography.hazmat.primitives.asymmetric import rsa

    from jwks_server import JwksServer, Key

    signer = Key(rsa.generate_private_key(public_exponent=65537, key_size=2048), "k2", "RS256")
    issuer = "https://idp.test/realms/orgs"
    now = int(time.time())

    def token(**claims: Any) -> str:
        return signer.sign({"iss": issuer, "aud": "gandalf", "sub": "carol", "exp": now + 300,
                            **claims})

    async def configure(**extra: Any) -> None:
        async with admin(managed) as api:
            r = await api.post("/auth/configure", json={
                "enabled": True, "issuer": issuer, "audience": ["gandalf"],
                "jwks_url": jwks.url, "algorithms": ["RS256"], **extra})
            assert r.status_code in (200, 201), r.text

    async def refused(key: str) -> None:
        with pytest.raises(openai.AuthenticationError):
            await chat(managed, key)

    with JwksServer([signer.jwk]) as jwks:
        async with admin(managed) as api:
            r = await api.post("/organizations", json={"id": "known-org", "name": "Known"})
            assert r.status_code == 201, r.text
        await configure()  # default_org unset
        known = token(org_id="known-org", role="member")
        await eventually(lambda: chat(managed, known))
        await refused(token(role="member"))  # no org claim, no default_org
        await refused(token(org_id="nobody-knows-this-org", role="member"))
        # A global admin only by naming the default org, never by falling back to it.
        await configure(default_org="default")
        no_org_admin = token(role="admin")

        async def refused_admin() -> None:
            async with admin(managed, no_org_admin) as api:
                r = await api.get("/providers")
                assert r.status_code == 401, r.text

        await eventually(refused_admin)
        await eventually(lambda: chat(managed, token(role="member")))
        async with admin(managed, token(role="admin", org_id="default")) as api:
            assert (await api.get("/providers")).status_code == 200
        # Unknown orgs only when configured.
        await configure(allow_unknown_orgs=True)
        await eventually(lambda: chat(managed, token(org_id="nobody-knows-this-org",
                                                     role="member")))
