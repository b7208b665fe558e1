"""Property: whatever a member sends, no key write it gets accepted leaves a
key (its own or one it minted) allowing more than the key it authenticates
with. Random parent keys, random create/edit sequences, a real admin service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from admin_harness import AdminClient, admin_service

KEYS = "/admin/v1/keys"
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-3", "gemini-pro"]
TIMES = [None, "2029-01-01T00:00:00Z", "2030-01-01T00:00:00Z", "2031-01-01T00:00:00Z"]
PERIODS = [None, "daily", "monthly", "lifetime"]

_limit = st.sampled_from([None, 0, 1, 5, 10, 50, 1000])
_models = st.one_of(st.none(), st.lists(st.sampled_from(MODELS), min_size=1, max_size=4,
                                        unique=True))
_budget = st.sampled_from([None, 0.5, 1.0, 5.0, 20.0])
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "rpm_limit": _limit, "tpm_limit": _limit, "allowed_models": _models,
    "max_budget": _budget, "budget_period": st.sampled_from(PERIODS),
    "expires_at": st.sampled_from(TIMES), "team_id": st.sampled_from([None, "ml", "other"]),
    "name": st.sampled_from(["a", "b"]), "blocked": st.booleans()}
_body = st.fixed_dictionaries({}, optional=FIELDS)
_parent = st.fixed_dictionaries({}, optional={k: v for k, v in FIELDS.items()
                                              if k not in ("team_id", "name", "blocked")})
_op = st.tuples(st.sampled_from(["create", "edit_child", "edit_own"]), _body)


@pytest_asyncio.fixture
async def admin(nats_url: str, fresh_pg_dsn: str) -> AsyncIterator[AdminClient]:
    async with admin_service(nats_url, fresh_pg_dsn) as client:
        await client.call("POST", "/admin/v1/organizations", body={"id": "acme", "name": "A"})
        for team in ("ml", "other"):
            await client.call("POST", "/admin/v1/teams",
                              body={"id": team, "org_id": "acme", "name": team})
        yield client


def _ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def assert_not_wider(parent: dict[str, Any], key: dict[str, Any]) -> None:
    """An oracle written apart from the service's own check."""
    assert key["org_id"] == parent["org_id"] and key["team_id"] == parent["team_id"]
    for name in ("rpm_limit", "tpm_limit"):
        if parent[name]:
            assert key[name] and key[name] <= parent[name], (name, parent, key)
    if parent["allowed_models"]:
        assert key["allowed_models"], (parent, key)
        assert set(key["allowed_models"]) <= set(parent["allowed_models"]), (parent, key)
    if parent["expires_at"]:
        assert key["expires_at"] and _ts(key["expires_at"]) <= _ts(parent["expires_at"])
    if parent["max_budget"]:  # no traffic here: remaining == max_budget
        assert key["max_budget"] is not None and key["max_budget"] <= parent["max_budget"]
        assert (key["budget_period"] or "lifetime") == (parent["budget_period"] or "lifetime")


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(parent_limits=_parent, ops=st.lists(_op, min_size=1, max_size=6))
async def test_no_accepted_member_write_widens(admin: AdminClient,
                                               parent_limits: dict[str, Any],
                                               ops: list[tuple[str, dict[str, Any]]]) -> None:
    alice = await admin.member("acme", team_id="ml", **parent_limits)
    status, parent = await admin.call("GET", f"{KEYS}/{alice.key_id}")
    assert status == 200
    children: list[str] = []
    for kind, body in ops:
        if kind == "create":
            status, key = await admin.call("POST", KEYS, body=body, caller=alice)
            if status == 201:
                children.append(key["id"])
        else:
            target = children[-1] if kind == "edit_child" and children else alice.key_id
            status, key = await admin.call("PUT", f"{KEYS}/{target}", body=body, caller=alice)
        assert status in (200, 201, 400, 403), (status, key)
        if status >= 400:
            assert key["error"]["code"] != "internal_error"
            continue
        assert_not_wider(parent, key)
        status, own = await admin.call("GET", f"{KEYS}/{alice.key_id}")
        fixed = ("team_id", "allowed_models", "rpm_limit", "tpm_limit", "max_budget",
                 "budget_period", "expires_at")
        assert {f: own[f] for f in fixed} == {f: parent[f] for f in fixed}
