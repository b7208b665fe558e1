"""The member narrowing rule: a member (``MANAGE_OWN_KEYS`` without
``MANAGE_ALL_KEYS``) may only create or edit keys that allow no more than
the key it authenticates with, and may not change its own key's limits.

"Narrower" compares key-level values (the child shares the parent's org and
team, so the team and org limits apply to both alike):

- ``rpm_limit``/``tpm_limit``: ``None`` and ``0`` are unlimited at key level;
  a limited parent demands a limit no larger than its own;
- ``allowed_models``: ``None`` allows every model; a parent list demands a
  list whose every entry the parent's list allows;
- ``expires_at``: a parent that expires demands an expiry no later;
- ``max_budget``: a parent with a budget demands one no larger than what the
  parent has left in its current period, over the same ``budget_period``.

On create, fields the member leaves out are inherited from its key (the
budget as what is left of it), so "mint a key" never means "mint a wider key".
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from gandalf_common.authz import model_allowed
from gandalf_common.periods import period_start

from ..errors import ApiError, forbidden
from ..store.ports import Repos
from ..store.rows import KeyRow

#: Keys one member may have minted at a time (its principal's ``created_by``).
MAX_MINTED_KEYS = 20

#: What a member may never change on the key it authenticates with.
OWN_KEY_FIXED = ("org_id", "team_id", "allowed_models", "rpm_limit", "tpm_limit",
                 "max_budget", "budget_period", "expires_at", "role", "user_id")


def _unlimited(value: float | None) -> bool:
    return not value  # None inherits, 0 is unlimited: neither caps this key


def widening(parent: KeyRow, child: KeyRow, remaining: float | None
             ) -> tuple[str, str] | None:
    """``(field, message)`` when ``child`` allows more than ``parent``, else None.

    ``remaining`` is the parent's budget left in its period (None: no budget).
    """
    if child.org_id != parent.org_id:
        return "org_id", "a key you create must stay in your organization"
    if child.team_id != parent.team_id:
        return "team_id", "a key you create must stay in your key's team"
    for name in ("rpm_limit", "tpm_limit"):
        mine, cap = getattr(child, name), getattr(parent, name)
        if not _unlimited(cap) and (_unlimited(mine) or mine > cap):
            return name, f"{name} must be set and at most {cap} (your key's limit)"
    if parent.allowed_models:
        if not child.allowed_models:
            return "allowed_models", "allowed_models must be a subset of your key's list"
        for model in child.allowed_models:
            if not model_allowed(model, parent.allowed_models):
                return "allowed_models", f"allowed_models: {model!r} is not allowed by your key"
    if parent.expires_at is not None and (
            child.expires_at is None or child.expires_at > parent.expires_at):
        return "expires_at", f"expires_at must be set and no later than your key's " \
                             f"({parent.expires_at.isoformat()})"
    if remaining is not None:
        if child.max_budget is None or child.max_budget > remaining:
            return "max_budget", f"max_budget must be set and at most {remaining:g} " \
                                 "(what your key has left)"
        if (child.budget_period or "lifetime") != (parent.budget_period or "lifetime"):
            return "budget_period", "budget_period must equal your key's budget_period"
    return None


def check_narrower_than(parent: KeyRow, child: KeyRow, remaining: float | None) -> None:
    found = widening(parent, child, remaining)
    if found is not None:
        field, message = found
        raise forbidden(f"members may only manage keys narrower than their own: {message}",
                        field)


def inherited(parent: KeyRow, remaining: float | None, given: dict[str, Any]
              ) -> dict[str, Any]:
    """Create defaults: the parent's limits for every field ``given`` leaves out."""
    out: dict[str, Any] = {"team_id": parent.team_id, "allowed_models": parent.allowed_models,
           "rpm_limit": parent.rpm_limit, "tpm_limit": parent.tpm_limit,
           "expires_at": parent.expires_at}
    if remaining is not None:
        out.update(max_budget=remaining, budget_period=parent.budget_period)
    out.update(given)
    return out


async def remaining_budget(repos: Repos, parent: KeyRow) -> float | None:
    if not parent.max_budget:
        return None
    since = datetime.fromtimestamp(period_start(parent.budget_period, time.time()), UTC)
    spent = await repos.keys.spend_since(parent.id, since)
    return max(0.0, parent.max_budget - spent)


async def member_key(repos: Repos, key_id: str) -> KeyRow:
    """The key a member authenticates with (403 when it is gone)."""
    row = await repos.keys.get(key_id) if key_id else None
    if row is None:
        raise forbidden("the API key you authenticate with no longer exists")
    return row


def check_own_key_edit(current: KeyRow, row: KeyRow) -> None:
    for name in OWN_KEY_FIXED:
        if getattr(current, name) != getattr(row, name):
            raise forbidden(f"members cannot change {name} of the key they authenticate "
                            "with; ask an admin", name)


async def check_mint_cap(repos: Repos, principal: str) -> None:
    if await repos.keys.count_created_by(principal) >= MAX_MINTED_KEYS:
        raise ApiError(403, f"you already created {MAX_MINTED_KEYS} keys, the most a "
                       "member may have; delete one first", code="key_limit_reached")
