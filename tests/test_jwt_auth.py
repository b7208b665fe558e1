"""JWT/OIDC bearer-token verification (gandalf_ingress.jwt_auth / jwks).

Real HTTP to a local JWKS server (tests/jwks_server.py); RSA and EC keys from
`cryptography`. The JWKS cache clock is injected, so TTL and rate-limit
windows pass instantly; token times (exp/nbf) use the real wall clock.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gandalf_common.config import JwtClaimsConfig, JwtConfig, load_config
from gandalf_common.records import ClaimMapping, JwtSettings
from gandalf_ingress.jwks import KeyLookupError, key_fits
from gandalf_ingress.jwt_auth import JwtError, JwtIdentity, JwtVerifier, claim_at
from jwks_server import JwksServer, Key

ROOT = Path(__file__).resolve().parent.parent
ISSUER = "https://idp.test/dex"
AUDIENCE = "gandalf"


class Clock:
    """Monotonic clock for the JWKS cache; tests move it forward."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _rsa(kid: str) -> Key:
    return Key(rsa.generate_private_key(public_exponent=65537, key_size=2048), kid, "RS256")


def _ec(kid: str) -> Key:
    return Key(ec.generate_private_key(ec.SECP256R1()), kid, "ES256")


@pytest.fixture(scope="module")
def keys() -> dict[str, Key]:
    return {"rsa": _rsa("rsa-1"), "rsa2": _rsa("rsa-2"), "ec": _ec("ec-1"),
            "evil": _rsa("evil-1")}


@pytest.fixture
def server(keys: dict[str, Key]) -> Iterator[JwksServer]:
    with JwksServer([keys["rsa"].jwk, keys["ec"].jwk]) as srv:
        yield srv


@pytest.fixture
def clock() -> Clock:
    return Clock()


def settings(url: str, **over: Any) -> JwtSettings:
    base: dict[str, Any] = dict(enabled=True, issuer=ISSUER, audience=[AUDIENCE], jwks_url=url,
                                algorithms=["RS256", "ES256"], leeway_s=60.0)
    base.update(over)
    return JwtSettings(**base)


def make(url: str, clock: Clock, **over: Any) -> JwtVerifier:
    return JwtVerifier(settings(url, **over), http_timeout=2.0, min_refresh_interval=30.0,
                       cache_ttl=900.0, clock=clock)


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "iat": now,
                            "exp": now + 300, "org_id": "acme", "team_id": "ml",
                            "role": "admin"}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def refused(verifier: JwtVerifier, token: str) -> str:
    with pytest.raises(JwtError) as info:
        await verifier.verify(token)
    return str(info.value)


# --------------------------------------------------------------------------- valid tokens


async def test_rs256_token_maps_default_claims(server: JwksServer, keys: dict[str, Key],
                                               clock: Clock) -> None:
    v = make(server.url, clock)
    ident = await v.verify(keys["rsa"].sign(claims()))
    assert ident == JwtIdentity(subject="user-1", org_id="acme", team_id="ml", role="admin",
                                claims=ident.claims)
    assert ident.claims["iss"] == ISSUER
    with pytest.raises(TypeError):
        ident.claims["role"] = "x"  # type: ignore[index]
    assert server.hits == 1
    await v.aclose()


async def test_es256_token_with_nested_paths_and_list_roles(server: JwksServer,
                                                            keys: dict[str, Key],
                                                            clock: Clock) -> None:
    mapping = ClaimMapping(user="email", org="tenant.id", team="groups",
                           role="resource_access.gandalf.roles")
    v = make(server.url, clock, claims=mapping)
    token = keys["ec"].sign(claims(
        email="ann@example.com", tenant={"id": "tenant-9"}, groups=[7, "team-a", "team-b"],
        resource_access={"gandalf": {"roles": ["superuser", "Viewer", "admin"]}},
        org_id=None, team_id=None, role=None))
    ident = await v.verify(token)
    assert (ident.subject, ident.org_id, ident.team_id, ident.role) == \
        ("ann@example.com", "tenant-9", "team-a", "viewer")
    await v.aclose()


async def test_missing_or_unknown_role_and_org_use_defaults(server: JwksServer,
                                                            keys: dict[str, Key],
                                                            clock: Clock) -> None:
    v = make(server.url, clock, default_role="viewer", default_org="fallback")
    ident = await v.verify(keys["rsa"].sign(claims(role=None, org_id=None, team_id=None)))
    assert (ident.org_id, ident.team_id, ident.role) == ("fallback", "", "viewer")
    ident = await v.verify(keys["rsa"].sign(claims(role=["root", "wizard"])))
    assert ident.role == "viewer"
    ident = await v.verify(keys["rsa"].sign(claims(role="god")))
    assert ident.role == "viewer"
    ident = await v.verify(keys["rsa"].sign(claims(org_id=42, team_id=["", " t1 "])))
    assert (ident.org_id, ident.team_id) == ("42", "t1")
    assert await refused(v, keys["rsa"].sign(claims(org_id="x" * 300))) == \
        "identity claim too long"
    await v.aclose()


async def test_no_org_claim_needs_default_org_and_never_makes_a_global_admin(
        server: JwksServer, keys: dict[str, Key], clock: Clock) -> None:
    v = make(server.url, clock)  # default_org unset
    assert await refused(v, keys["rsa"].sign(claims(org_id=None, role="member"))) == \
        "missing org claim (org_id)"
    v = make(server.url, clock, default_org="default")
    assert await refused(v, keys["rsa"].sign(claims(org_id=None, role="admin"))) == \
        "an admin token must name its organization (org_id)"
    admin_default = make(server.url, clock, default_org="default", default_role="admin")
    assert await refused(admin_default, keys["rsa"].sign(claims(org_id=None, role=None))) == \
        "an admin token must name its organization (org_id)"
    ident = await v.verify(keys["rsa"].sign(claims(org_id=None, role="member")))
    assert (ident.org_id, ident.role, ident.org_claimed) == ("default", "member", False)
    ident = await v.verify(keys["rsa"].sign(claims(org_id="default", role="admin")))
    assert (ident.org_id, ident.role, ident.org_claimed) == ("default", "admin", True)
    # An org admin through the fallback is fine: only the default org is global.
    v = make(server.url, clock, default_org="acme")
    ident = await v.verify(keys["rsa"].sign(claims(org_id=None, role="admin")))
    assert (ident.org_id, ident.role) == ("acme", "admin")


async def test_missing_user_claim_is_refused(server: JwksServer, keys: dict[str, Key],
                                             clock: Clock) -> None:
    v = make(server.url, clock)
    assert "missing user claim" in await refused(v, keys["rsa"].sign(claims(sub=None)))
    v2 = make(server.url, clock, claims=ClaimMapping(user="email"))
    assert "missing user claim" in await refused(v2, keys["rsa"].sign(claims(email="")))
    await v.aclose()
    await v2.aclose()


def test_claim_paths() -> None:
    c = {"a": {"b": {"c": 1}}, "https://x.io/roles": ["admin"], "flat.key": "v", "l": [1]}
    assert claim_at(c, "a.b.c") == 1
    assert claim_at(c, "a.b") == {"c": 1}
    assert claim_at(c, "https://x.io/roles") == ["admin"]
    assert claim_at(c, "flat.key") == "v"
    assert claim_at(c, "a.x") is None
    assert claim_at(c, "l.0") is None
    assert claim_at(c, "") is None


def test_from_config_maps_yaml_to_settings() -> None:
    cfg = JwtConfig(enabled=True, issuer=ISSUER, audience=["a", "b"],
                    jwks_url="https://idp.test/keys", algorithms=["ES256"], leeway=5.0,
                    claims=JwtClaimsConfig(user="email", role="groups"),
                    default_role="viewer", default_org="o")
    v = JwtVerifier.from_config(cfg)
    s = v.settings
    assert (s.issuer, s.audience, s.jwks_url, s.algorithms, s.leeway_s) == \
        (ISSUER, ["a", "b"], "https://idp.test/keys", ["ES256"], 5.0)
    assert (s.claims.user, s.claims.org, s.claims.role) == ("email", "org_id", "groups")
    assert (s.default_role, s.default_org) == ("viewer", "o")


async def test_dex_example_config_maps_a_dex_shaped_id_token(keys: dict[str, Key]) -> None:
    """deploy/dex/gandalf.yaml against an ID token shaped like Dex's."""
    cfg, _ = load_config(str(ROOT / "deploy" / "dex" / "gandalf.yaml"))
    jwt_cfg = cfg.auth.jwt
    with JwksServer([keys["rsa"].jwk]) as srv:
        v = JwtVerifier.from_config(msgspec.structs.replace(jwt_cfg, jwks_url=srv.url))
        now = int(time.time())
        dex = {"iss": "http://dex:5556/dex", "aud": "gandalf", "iat": now, "exp": now + 3600,
               "sub": "CiQwOGE4Njg0Yi1kYjg4LTRiNzMtOTBhOS0zY2QxNjYxZjU0NjYSBWxvY2Fs",
               "at_hash": "x", "email": "admin@example.com", "email_verified": True,
               "name": "admin"}
        # No org claim: default_org, but never a global admin that way.
        assert await refused(v, keys["rsa"].sign({**dex, "groups": ["admin"]})) == \
            "an admin token must name its organization (org_id)"
        ident = await v.verify(keys["rsa"].sign({**dex, "groups": ["developers"]}))
        assert (ident.subject, ident.role, ident.org_id, ident.team_id) == \
            (dex["sub"], "member", "default", "")
        assert not ident.org_claimed
        ident = await v.verify(keys["rsa"].sign({**dex, "groups": ["viewer"]}))
        assert ident.role == "viewer"
        assert await refused(v, keys["rsa"].sign({**dex, "aud": "other-client"})) == \
            "wrong audience"
        await v.aclose()


# --------------------------------------------------------------------------- time claims


async def test_expiry_and_not_before_with_leeway(server: JwksServer, keys: dict[str, Key],
                                                 clock: Clock) -> None:
    v = make(server.url, clock, leeway_s=60.0)
    now = int(time.time())
    k = keys["rsa"]
    assert await refused(v, k.sign(claims(exp=now - 120))) == "token expired"
    assert await refused(v, k.sign(claims(nbf=now + 120))) == "token not yet valid"
    # Within the leeway (clock skew): accepted.
    assert (await v.verify(k.sign(claims(exp=now - 30)))).subject == "user-1"
    assert (await v.verify(k.sign(claims(nbf=now + 30)))).subject == "user-1"
    assert await refused(v, k.sign(claims(exp=None))) == "missing exp claim"
    await v.aclose()


# --------------------------------------------------------------------------- iss / aud


async def test_wrong_or_missing_issuer_and_audience(server: JwksServer, keys: dict[str, Key],
                                                    clock: Clock) -> None:
    v = make(server.url, clock)
    k = keys["rsa"]
    assert await refused(v, k.sign(claims(aud="other-app"))) == "wrong audience"
    assert await refused(v, k.sign(claims(aud=None))) == "missing aud claim"
    assert await refused(v, k.sign(claims(iss="https://evil.test/dex"))) == "wrong issuer"
    assert await refused(v, k.sign(claims(iss=ISSUER + "/"))) == "wrong issuer"
    assert await refused(v, k.sign(claims(iss=None))) == "missing iss claim"
    # A list audience passes when it contains ours.
    assert (await v.verify(k.sign(claims(aud=["x", AUDIENCE])))).role == "admin"
    await v.aclose()


# --------------------------------------------------------------------------- algorithm attacks


async def test_alg_none_is_refused_without_a_key_lookup(server: JwksServer,
                                                        keys: dict[str, Key],
                                                        clock: Clock) -> None:
    v = make(server.url, clock)
    for alg in ("none", "None", "NONE", ""):
        header = _b64(json.dumps({"alg": alg, "typ": "JWT", "kid": "rsa-1"}).encode())
        body = _b64(json.dumps(claims()).encode())
        for token in (f"{header}.{body}.", f"{header}.{body}.{_b64(b'x')}"):
            assert await refused(v, token) == "algorithm not allowed"
    assert server.hits == 0
    await v.aclose()


def _hs256_with_public_pem(key: Key, payload: dict[str, Any]) -> str:
    # The classic confusion attack: HMAC keyed with the issuer's public key.
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    body = _b64(json.dumps(payload).encode())
    mac = hmac.new(key.public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(mac)}"


async def test_hs256_signed_with_the_rsa_public_key_is_refused(server: JwksServer,
                                                               keys: dict[str, Key],
                                                               clock: Clock) -> None:
    token = _hs256_with_public_pem(keys["rsa"], claims())
    v = make(server.url, clock)
    assert await refused(v, token) == "algorithm not allowed"
    # Even a (KV-delivered, unvalidated) setting that lists HS256 cannot enable it.
    v2 = make(server.url, clock, algorithms=["RS256", "HS256", "none"])
    assert v2.algorithms == ["RS256"]
    assert await refused(v2, token) == "algorithm not allowed"
    assert server.hits == 0
    # Second layer, independent of the allowlist: no JWK of the set is an HMAC
    # key, so even a lookup for HS256 finds nothing to verify with.
    assert not key_fits(keys["rsa"].jwk, "HS256")
    with pytest.raises(KeyLookupError):
        await v.jwks.candidates("rsa-1", "HS256")
    # And pyjwt itself refuses an HS256 token against the RSA PyJWK.
    (rsa_key,) = await v.jwks.candidates("rsa-1", "RS256")
    with pytest.raises(jwt.InvalidAlgorithmError):
        jwt.decode(token, key=rsa_key, algorithms=["HS256"], audience=AUDIENCE)
    await v.aclose()
    await v2.aclose()


async def test_key_type_must_match_the_algorithm(server: JwksServer, keys: dict[str, Key],
                                                 clock: Clock) -> None:
    v = make(server.url, clock, algorithms=["RS256", "ES256", "PS256"])
    # An RS256 token naming the EC key, and an ES256 token naming the RSA key.
    rs_for_ec = keys["rsa"].sign(claims(), kid="ec-1")
    es_for_rsa = keys["ec"].sign(claims(), kid="rsa-1")
    msg = "signing key does not match the token's algorithm"
    assert await refused(v, rs_for_ec) == msg
    assert await refused(v, es_for_rsa) == msg
    # The RSA JWK says alg RS256: a PS256 token may not use it either.
    assert await refused(v, keys["rsa"].sign(claims(), alg="PS256")) == msg
    assert server.hits == 1  # a known kid never triggers a refetch
    await v.aclose()


async def test_jku_header_is_ignored_and_kid_is_opaque(server: JwksServer,
                                                       keys: dict[str, Key],
                                                       clock: Clock) -> None:
    evil = keys["evil"]
    with JwksServer([evil.jwk]) as attacker:
        v = make(server.url, clock)
        token = evil.sign(claims(), headers={"jku": attacker.url, "x5u": attacker.url})
        assert await refused(v, token) == "unknown signing key"
        assert attacker.hits == 0
        for kid in ("../../dev/null", "' OR 1=1 --", "rsa-1/../ec-1"):
            assert await refused(v, evil.sign(claims(), kid=kid)) == "unknown signing key"
        assert server.paths and set(server.paths) == {"/.well-known/jwks.json"}
        await v.aclose()


async def test_forged_signature_with_a_known_kid_is_refused(server: JwksServer,
                                                            keys: dict[str, Key],
                                                            clock: Clock) -> None:
    v = make(server.url, clock)
    forged = keys["evil"].sign(claims(), kid="rsa-1")
    assert await refused(v, forged) == "bad signature"
    good = keys["rsa"].sign(claims())
    head, _body, sig = good.split(".")
    tampered = _b64(json.dumps(claims(role="admin", sub="someone-else")).encode())
    assert await refused(v, f"{head}.{tampered}.{sig}") == "bad signature"
    await v.aclose()


# --------------------------------------------------------------------------- JWKS cache


async def test_unknown_kid_refetches_once_then_is_rate_limited(server: JwksServer,
                                                               keys: dict[str, Key],
                                                               clock: Clock) -> None:
    v = make(server.url, clock)
    await v.verify(keys["rsa"].sign(claims()))
    assert server.hits == 1
    clock.advance(31)  # past min_refresh_interval since the first fetch
    assert await refused(v, keys["rsa"].sign(claims(), kid="nope-1")) == "unknown signing key"
    assert server.hits == 2  # exactly one refetch
    clock.advance(5)  # within min_refresh_interval: no refetch for another random kid
    for i in range(20):
        assert await refused(v, keys["rsa"].sign(claims(), kid=f"random-{i}")) == \
            "unknown signing key"
    assert server.hits == 2
    clock.advance(30)
    await refused(v, keys["rsa"].sign(claims(), kid="nope-2"))
    assert server.hits == 3
    await v.aclose()


async def test_key_rotation_new_kid_accepted_after_one_refetch(server: JwksServer,
                                                               keys: dict[str, Key],
                                                               clock: Clock) -> None:
    v = make(server.url, clock)
    await v.verify(keys["rsa"].sign(claims()))
    server.set_keys([keys["rsa2"].jwk])  # the IdP rotates: rsa-1 retired, rsa-2 new
    clock.advance(60)
    ident = await v.verify(keys["rsa2"].sign(claims(sub="after-rotation")))
    assert ident.subject == "after-rotation"
    assert server.hits == 2
    # The retired key is gone from the new set (no further fetch: rate limited).
    assert await refused(v, keys["rsa"].sign(claims())) == "unknown signing key"
    assert server.hits == 2
    await v.aclose()


async def test_cache_ttl_refetches(server: JwksServer, keys: dict[str, Key],
                                   clock: Clock) -> None:
    v = make(server.url, clock)
    token = keys["rsa"].sign(claims())
    await v.verify(token)
    clock.advance(899)
    await v.verify(token)
    assert server.hits == 1
    clock.advance(2)
    await v.verify(token)
    assert server.hits == 2
    await v.aclose()


async def test_jwks_down_stale_keys_still_verify(server: JwksServer, keys: dict[str, Key],
                                                 clock: Clock,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    v = make(server.url, clock)
    token = keys["rsa"].sign(claims())
    await v.verify(token)
    server.status = 503
    clock.advance(1000)  # the cached set is past its TTL
    with caplog.at_level(logging.WARNING, logger="gandalf.jwt"):
        assert (await v.verify(token)).subject == "user-1"
    assert server.hits == 2
    assert any("still using the keys" in r.getMessage() for r in caplog.records)
    # Further requests inside min_refresh_interval do not retry the dead IdP.
    for _ in range(5):
        await v.verify(token)
    assert server.hits == 2
    # Unknown kids are still refused (never accepted unverified).
    assert await refused(v, keys["rsa"].sign(claims(), kid="new")) == "unknown signing key"
    # Fully down (connection refused): still served from the stale set.
    server.stop()
    clock.advance(31)
    assert (await v.verify(token)).subject == "user-1"
    await v.aclose()


async def test_no_keys_at_all_fails_closed(keys: dict[str, Key], clock: Clock) -> None:
    srv = JwksServer([keys["rsa"].jwk]).start()
    url = srv.url
    srv.stop()  # nothing listens there any more
    v = make(url, clock)
    assert await refused(v, keys["rsa"].sign(claims())) == "signing keys unavailable"
    await v.aclose()


@pytest.mark.parametrize("body", [b"<html>", b'{"keys": "x"}', b'{"keys": []}',
                                  json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0",
                                                        "kid": "rsa-1"}]}).encode(),
                                  b" " * (1024 * 1024 + 10)])
async def test_bad_jwks_documents_are_refused(body: bytes, keys: dict[str, Key],
                                              clock: Clock) -> None:
    with JwksServer() as srv:
        srv.body = body
        v = make(srv.url, clock)
        assert await refused(v, keys["rsa"].sign(claims())) == "signing keys unavailable"
        await v.aclose()


async def test_concurrent_verifications_share_one_fetch(server: JwksServer,
                                                        keys: dict[str, Key],
                                                        clock: Clock) -> None:
    server.delay = 0.2
    v = make(server.url, clock)
    tokens = [keys["rsa"].sign(claims(sub=f"u{i}")) for i in range(10)]
    tokens += [keys["ec"].sign(claims(sub=f"e{i}")) for i in range(10)]
    idents = await asyncio.gather(*(v.verify(t) for t in tokens))
    assert sorted(i.subject for i in idents) == sorted([f"u{i}" for i in range(10)]
                                                       + [f"e{i}" for i in range(10)])
    assert server.hits == 1
    await v.aclose()


async def test_cancelled_caller_does_not_cancel_the_shared_fetch(server: JwksServer,
                                                                 keys: dict[str, Key],
                                                                 clock: Clock) -> None:
    server.delay = 0.2
    v = make(server.url, clock)
    token = keys["rsa"].sign(claims())
    first = asyncio.ensure_future(v.verify(token))
    second = asyncio.ensure_future(v.verify(token))
    await asyncio.sleep(0.05)
    first.cancel()
    assert (await second).subject == "user-1"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert server.hits == 1
    await v.aclose()


async def test_aclose_during_a_fetch_fails_the_waiters_cleanly(server: JwksServer,
                                                                keys: dict[str, Key],
                                                                clock: Clock) -> None:
    server.delay = 0.3
    v = make(server.url, clock)
    pending = asyncio.ensure_future(v.verify(keys["rsa"].sign(claims())))
    await asyncio.sleep(0.05)
    await v.aclose()
    with pytest.raises(JwtError, match="signing keys unavailable"):
        await pending
    # Closed: no new fetch is started.
    assert await refused(v, keys["rsa"].sign(claims())) == "signing keys unavailable"
    assert server.hits == 1


async def test_token_without_kid_needs_exactly_one_key_of_its_type(keys: dict[str, Key],
                                                                   clock: Clock) -> None:
    with JwksServer([keys["rsa"].jwk, keys["ec"].jwk]) as srv:
        v = make(srv.url, clock)
        assert (await v.verify(keys["rsa"].sign(claims(), kid=None))).role == "admin"
        assert (await v.verify(keys["ec"].sign(claims(), kid=None))).role == "admin"
        await v.aclose()
    with JwksServer([keys["rsa"].jwk, keys["rsa2"].jwk]) as srv:
        v = make(srv.url, clock)
        assert "several keys" in await refused(v, keys["rsa"].sign(claims(), kid=None))
        await v.aclose()


# --------------------------------------------------------------------------- malformed


@pytest.mark.parametrize("token", ["garbage", "a.b", "a.b.c", "a.b.c.d", "..", "é.é.é",
                                   _b64(b"not json") + ".e30.", "x" * 20000])
async def test_malformed_tokens(token: str, server: JwksServer, clock: Clock) -> None:
    v = make(server.url, clock)
    assert await refused(v, token) == "malformed token"
    assert server.hits == 0
    await v.aclose()


async def test_errors_carry_no_token_material(server: JwksServer, keys: dict[str, Key],
                                              clock: Clock) -> None:
    v = make(server.url, clock)
    secret_sub = "CANARY-SUBJECT-1234"
    for c in (claims(sub=secret_sub, aud="CANARY-AUD"), claims(sub=secret_sub, exp=1),
              claims(sub=secret_sub, iss="CANARY-ISS")):
        token = keys["rsa"].sign(c)
        msg = await refused(v, token)
        assert "CANARY" not in msg and token[:20] not in msg
    await v.aclose()


async def test_misconfigured_settings_refuse_everything(server: JwksServer,
                                                        keys: dict[str, Key],
                                                        clock: Clock) -> None:
    token = keys["rsa"].sign(claims())
    for over in ({"enabled": False}, {"issuer": ""}, {"jwks_url": "file:///etc/passwd"}):
        v = make(server.url, clock, **over)
        assert "not" in await refused(v, token)
        await v.aclose()
    # Unknown default_role: tokens without a role claim fail closed.
    v = make(server.url, clock, default_role="root")
    assert await refused(v, keys["rsa"].sign(claims(role=None))) == "no usable role claim"
    await v.aclose()
    assert server.hits == 1
