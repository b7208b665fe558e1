"""``GET /admin/v1/usage`` and ``/admin/v1/usage/summary`` on a real admin
service (NATS + PostgreSQL), over rows seeded with SQL (independent of the
usage service that normally writes them).

One admin service and database for the module: every test only reads.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import asyncpg
import pytest_asyncio

from admin_harness import GLOBAL_ADMIN, AdminClient, admin_service, caller
from gandalf_common.contract import Caller

T0 = datetime(2026, 3, 1, 4, 0, tzinfo=UTC)  # = 2026-03-01T09:30:00+05:30
M = timedelta(minutes=1)
NOW_HOUR = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)

ORG_ADMIN = caller("admin", "acme")
VIEWER = caller("viewer", "acme")
SERVICE = caller("service_account", "acme")
BETA_ADMIN = caller("admin", "beta")

# request_id, created_at, org, team, key, user, model, provider, status, tokens(p, c), cost
RECORDS: list[tuple[Any, ...]] = [
    ("r1", T0, "acme", "t1", "ka1", "alice", "gpt-4o", "openai", 200, (10, 5), "0.0125"),
    ("r2", T0 + 30 * M, "acme", "t1", "ka1", "alice", "claude", "anthropic", 429, (0, 0),
     "0"),
    ("r3", T0 + 60 * M, "acme", "t2", "ka2", "bob", "gpt-4o", "azure", 502, (7, 0), "0.001"),
    ("r4", T0 + 90 * M, "beta", None, "kb1", None, "gpt-4o", "openai", 200, (3, 3), "0.5"),
    # A JWT request of alice's (no key) and a user-less key's request.
    ("r5", T0 + 120 * M, "acme", None, None, "alice", "gpt-4o", "openai", 200, (1, 1),
     "0.0001"),
    ("r6", T0 + 150 * M, "acme", "t1", "ka3", None, "gpt-4o", "openai", 200, (2, 2),
     "0.0002"),
]
BULK = 1205  # org "bulk": pagination past 1000


async def _seed(dsn: str, keys: dict[str, str]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            "INSERT INTO usage_records (request_id, created_at, org_id, team_id, key_id, "
            "user_id, model, provider_id, provider_model, status_code, prompt_tokens, "
            "completion_tokens, total_tokens, cost_usd, latency_ms, stream, ttft_ms, "
            "error_class) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $7 || '-2025', $9, $10, "
            "$11, $10::bigint + $11::bigint, $12::numeric, 100, $9::int = 200, 40, "
            "CASE WHEN $9::int >= 400 THEN 'upstream_error' END)",
            [(rid, at, org, team, keys.get(key, key), user, model, prov, status, p, c, cost)
             for rid, at, org, team, key, user, model, prov, status, (p, c), cost in RECORDS])
        await conn.execute(
            "INSERT INTO usage_records (request_id, created_at, org_id, key_id, model, "
            "total_tokens) SELECT 'bulk-' || i, $1::timestamptz + i * interval '1 second', "
            "'bulk', 'kbulk', 'gpt-4o', i FROM generate_series(1, $2) AS i", T0, BULK)
        rollups = [
            # org, team, key, model, provider, period, bucket, requests, cost
            ("acme", "t1", keys["ka1"], "gpt-4o", "openai", "hourly", T0, 1, "0.0125"),
            ("acme", "t1", keys["ka1"], "claude", "anthropic", "hourly", T0, 1, "0"),
            ("acme", "t2", keys["ka2"], "gpt-4o", "azure", "hourly", T0 + 60 * M, 1, "0.001"),
            ("beta", "", "kb1", "gpt-4o", "openai", "hourly", T0 + 60 * M, 1, "0.5"),
            ("acme", "t1", keys["ka1"], "gpt-4o", "openai", "daily",
             T0.replace(hour=0), 2, "0.0125"),
            ("beta", "", "kb1", "gpt-4o", "openai", "daily", T0.replace(hour=0), 1, "0.5"),
            # The current, unfinished hour (rollups are incremental).
            ("acme", "t1", keys["ka1"], "gpt-4o", "openai", "hourly", NOW_HOUR, 4, "0.04"),
        ]
        await conn.executemany(
            "INSERT INTO usage_rollups (org_id, team_id, key_id, model, provider_id, period, "
            "bucket, request_count, prompt_tokens, completion_tokens, total_tokens, "
            "cost_usd, cached_count) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::bigint, "
            "10 * $8::bigint, $8::bigint, 11 * $8::bigint, $9::numeric, 0)", rollups)
    finally:
        await conn.close()


@pytest_asyncio.fixture(scope="module")
async def seeded(nats_url: str, pg_admin_dsn: str) -> AsyncIterator[tuple[AdminClient,
                                                                          dict[str, str]]]:
    """An admin service over seeded usage; keys ka1 (alice), ka2 (bob), ka3 (no user)."""
    name = f"gandalf_test_{uuid.uuid4().hex[:12]}"
    admin_conn = await asyncpg.connect(pg_admin_dsn)
    await admin_conn.execute(f'CREATE DATABASE "{name}"')
    base, sep, query = pg_admin_dsn.partition("?")
    dsn = f"{base.rpartition('/')[0]}/{name}{sep}{query}"
    try:
        async with admin_service(nats_url, dsn) as admin:
            for org in ("acme", "beta"):
                status, _ = await admin.call("POST", "/admin/v1/organizations",
                                             body={"id": org, "name": org})
                assert status == 201
            keys: dict[str, str] = {}
            for name_, user in (("ka1", "alice"), ("ka2", "bob"), ("ka3", None)):
                status, key = await admin.call("POST", "/admin/v1/keys",
                                               body={"org_id": "acme", "user_id": user})
                assert status == 201
                keys[name_] = key["id"]
            await _seed(dsn, keys)
            yield admin, keys
    finally:
        await admin_conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin_conn.close()


async def records(admin: AdminClient, who: Caller = GLOBAL_ADMIN, *, raw_query: str = "",
                  **query: Any) -> tuple[int, Any]:
    q = raw_query or urlencode(query)
    return await admin.call("GET", "/admin/v1/usage", query=q, caller=who)


def ids(body: Any) -> list[str]:
    return [r["request_id"] for r in body["data"]]


async def test_records_shape_filters_and_order(seeded: tuple[AdminClient, dict[str, str]]
                                               ) -> None:
    admin, keys = seeded
    status, body = await records(admin, org_id="acme")
    assert status == 200
    assert ids(body) == ["r6", "r5", "r3", "r2", "r1"]  # newest first
    assert body["pagination"] == {"offset": 0, "limit": 50, "total": 5}
    r1 = body["data"][-1]
    assert set(r1) == {"id", "key_id", "user_id", "team_id", "org_id", "caller_jwt_sub",
                       "caller_service", "model", "provider_id", "prompt_tokens",
                       "completion_tokens", "total_tokens", "cost_usd", "cached",
                       "latency_ms", "status_code", "request_id", "created_at",
                       "provider_model", "cached_tokens", "stream", "ttft_ms", "error_class"}
    assert r1["created_at"] == "2026-03-01T04:00:00Z"
    assert (r1["key_id"], r1["user_id"], r1["team_id"]) == (keys["ka1"], "alice", "t1")
    assert (r1["provider_id"], r1["provider_model"], r1["cost_usd"]) == ("openai",
                                                                         "gpt-4o-2025", 0.0125)
    assert (r1["total_tokens"], r1["stream"], r1["ttft_ms"], r1["error_class"]) == (
        15, True, 40, None)
    assert body["data"][2]["error_class"] == "upstream_error"

    for query, want in [
        ({"team_id": "t1"}, ["r6", "r2", "r1"]),
        ({"key_id": keys["ka1"]}, ["r2", "r1"]),
        ({"model": "claude"}, ["r2"]),
        ({"provider": "azure"}, ["r3"]),
        ({"status": "200", "org_id": "acme"}, ["r6", "r5", "r1"]),
        ({"status": "4xx"}, ["r2"]),
        ({"status": "5xx"}, ["r3"]),
        ({"org_id": "beta"}, ["r4"]),
        ({"org_id": "acme", "model": "gpt-4o", "provider": "openai", "team_id": "t1"},
         ["r6", "r1"]),
    ]:
        status, body = await records(admin, **query)
        assert status == 200 and ids(body) == want, query
        assert body["pagination"]["total"] == len(want)
    status, body = await records(admin)  # a global admin: every org
    assert status == 200 and body["pagination"]["total"] == len(RECORDS) + BULK


async def test_times_are_instants_whatever_the_offset(
        seeded: tuple[AdminClient, dict[str, str]]) -> None:
    admin, _ = seeded
    # 10:00+05:30 is 04:30Z: r2 and later; 10:30+05:30 (05:00Z) is excluded.
    status, body = await records(admin, org_id="acme", since="2026-03-01T10:00:00+05:30",
                                 until="2026-03-01T10:30:00+05:30")
    assert status == 200 and ids(body) == ["r2"]
    status, body = await records(admin, org_id="acme", since="2026-02-28T23:30:00-05:00")
    assert ids(body) == ["r6", "r5", "r3", "r2"]
    # since is inclusive, until exclusive, at the exact instant.
    status, body = await records(admin, org_id="acme", since="2026-03-01T04:00:00Z",
                                 until="2026-03-01T05:00:00.000Z")
    assert ids(body) == ["r2", "r1"]
    # An unencoded "+" arrives as a space; it still means the offset.
    status, body = await records(admin, raw_query="org_id=acme&since=2026-03-01T10:00:00"
                                                  "+05:30&until=2026-03-01T10:30:00%2B05:30")
    assert status == 200 and ids(body) == ["r2"]
    for query, param in [({"since": "2026-03-01"}, "since"),
                         ({"until": "2026-03-01T10:00:00"}, "until"),  # no offset
                         ({"since": "yesterday"}, "since"),
                         ({"since": "2026-03-02T00:00:00Z", "until": "2026-03-01T00:00:00Z"},
                          "until"),
                         ({"status": "2xy"}, "status"),
                         ({"limit": "1001"}, "limit"),
                         ({"limit": "0"}, "limit")]:
        status, body = await records(admin, **query)
        assert status == 400 and body["error"]["param"] == param, (query, body)


async def test_pagination_up_to_1000(seeded: tuple[AdminClient, dict[str, str]]) -> None:
    admin, _ = seeded
    status, first = await records(admin, org_id="bulk", limit=1000)
    assert status == 200 and len(first["data"]) == 1000
    assert first["pagination"] == {"offset": 0, "limit": 1000, "total": BULK}
    assert first["data"][0]["request_id"] == f"bulk-{BULK}"
    status, rest = await records(admin, org_id="bulk", limit=1000, offset=1000)
    assert status == 200 and len(rest["data"]) == BULK - 1000
    seen = ids(first) + ids(rest)
    assert seen == [f"bulk-{i}" for i in range(BULK, 0, -1)]
    status, past = await records(admin, org_id="bulk", offset=5000)
    assert status == 200 and past["data"] == [] and past["pagination"]["total"] == BULK


async def summary(admin: AdminClient, who: Caller = GLOBAL_ADMIN, **query: Any
                  ) -> tuple[int, Any]:
    return await admin.call("GET", "/admin/v1/usage/summary", query=urlencode(query),
                            caller=who)


async def test_summary_hourly_and_daily_never_mixed(
        seeded: tuple[AdminClient, dict[str, str]]) -> None:
    admin, keys = seeded
    status, body = await summary(admin, org_id="acme")
    assert status == 200 and set(body) == {"data"}
    hourly = body["data"]
    assert {r["period"] for r in hourly} == {"hourly"}
    assert [r["bucket"] for r in hourly] == sorted((r["bucket"] for r in hourly), reverse=True)
    # The current hour is there (incremental rollups).
    now = hourly[0]
    assert now["bucket"] == NOW_HOUR.isoformat().replace("+00:00", "Z")
    assert now == {"org_id": "acme", "team_id": "t1", "key_id": keys["ka1"], "model": "gpt-4o",
                   "provider_id": "openai", "period": "hourly", "bucket": now["bucket"],
                   "request_count": 4, "prompt_tokens": 40, "completion_tokens": 4,
                   "cached_tokens": 0, "total_tokens": 44, "cost_usd": 0.04,
                   "cached_count": 0}
    assert len(hourly) == 4

    status, body = await summary(admin, org_id="acme", period="daily")
    assert status == 200
    assert [(r["period"], r["bucket"], r["request_count"]) for r in body["data"]] == [
        ("daily", "2026-03-01T00:00:00Z", 2)]
    status, body = await summary(admin, period="daily")  # global: both orgs
    assert sorted(r["org_id"] for r in body["data"]) == ["acme", "beta"]

    # Filters; since/until apply to the bucket, as instants.
    for query, want in [
        ({"model": "claude"}, [("claude", "2026-03-01T04:00:00Z")]),
        ({"provider": "azure"}, [("gpt-4o", "2026-03-01T05:00:00Z")]),
        ({"team_id": "t2"}, [("gpt-4o", "2026-03-01T05:00:00Z")]),
        ({"org_id": "beta"}, [("gpt-4o", "2026-03-01T05:00:00Z")]),
        ({"since": "2026-03-01T10:00:00+05:30", "until": "2026-03-01T11:00:00+05:30"},
         [("gpt-4o", "2026-03-01T05:00:00Z"), ("gpt-4o", "2026-03-01T05:00:00Z")]),
        ({"key_id": keys["ka1"], "until": "2026-03-02T00:00:00Z"},
         [("claude", "2026-03-01T04:00:00Z"), ("gpt-4o", "2026-03-01T04:00:00Z")]),
    ]:
        status, body = await summary(admin, **query)
        assert status == 200, (query, body)
        assert sorted((r["model"], r["bucket"]) for r in body["data"]) == sorted(want), query
    for query, param in [({"period": "weekly"}, "period"), ({"status": "200"}, "status"),
                         ({"since": "2026-03-01T00:00:00"}, "since")]:
        status, body = await summary(admin, **query)
        assert status == 400 and body["error"]["param"] == param


async def test_who_sees_what(seeded: tuple[AdminClient, dict[str, str]]) -> None:
    admin, keys = seeded
    alice = caller("member", "acme", key_id=keys["ka1"], user_id="alice")
    alice_jwt = Caller(org_id="acme", role="member", user_id="alice", auth="jwt")
    anon = caller("member", "acme", key_id=keys["ka3"])  # a key without a user
    beta_member = caller("member", "beta", key_id="kb1")

    # Org admins and viewers: their org, whatever they ask for.
    for who in (ORG_ADMIN, VIEWER):
        status, body = await records(admin, who)
        assert status == 200 and ids(body) == ["r6", "r5", "r3", "r2", "r1"]
        status, body = await records(admin, who, org_id="acme", key_id="kb1")
        assert status == 200 and body["data"] == []
        status, body = await summary(admin, who, period="daily")
        assert status == 200 and {r["org_id"] for r in body["data"]} == {"acme"}
    status, body = await records(admin, BETA_ADMIN)
    assert ids(body) == ["r4"]

    # Members: their key's rows, and their user's (a JWT request has no key).
    status, body = await records(admin, alice)
    assert status == 200 and ids(body) == ["r5", "r2", "r1"]
    status, body = await records(admin, alice_jwt)
    assert ids(body) == ["r5", "r2", "r1"]
    status, body = await records(admin, anon)
    assert ids(body) == ["r6"]
    status, body = await records(admin, alice, key_id=keys["ka2"])  # bob's key
    assert status == 200 and body["data"] == [] and body["pagination"]["total"] == 0
    status, body = await records(admin, beta_member)
    assert ids(body) == ["r4"]
    # Rollups are per key: the member's key, or its user's keys.
    for who in (alice, alice_jwt):
        status, body = await summary(admin, who)
        assert status == 200 and {r["key_id"] for r in body["data"]} == {keys["ka1"]}
        assert len(body["data"]) == 3
    status, body = await summary(admin, anon)
    assert status == 200 and body["data"] == []

    # Another org: 403 naming org_id, for everyone but a global admin.
    for who in (ORG_ADMIN, VIEWER, alice):
        for path in ("/admin/v1/usage", "/admin/v1/usage/summary"):
            status, body = await admin.call("GET", path, query="org_id=beta", caller=who)
            assert status == 403 and body["error"]["param"] == "org_id", (who, path)
    # No usage permission at all.
    for who in (SERVICE, caller("root", "acme")):
        for path in ("/admin/v1/usage", "/admin/v1/usage/summary"):
            status, body = await admin.call("GET", path, caller=who)
            assert status == 403 and body["error"]["code"] == "insufficient_permissions"
