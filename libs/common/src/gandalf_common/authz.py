"""Roles, permissions and the org -> team -> key inheritance of limits.

Permissions are the original's bitmask (behaviour-spec §6), every bit
enforced. Inheritance: a child can only narrow what its parent allows — a
model must pass the allowlist of every level, numeric limits take the
smallest set value (0 = unlimited, None = inherit).
"""

from __future__ import annotations

from enum import IntFlag
from fnmatch import fnmatchcase

from .records import Limits


class Perm(IntFlag):
    USE_MODELS = 1
    MANAGE_OWN_KEYS = 2
    VIEW_OWN_USAGE = 4
    VIEW_ALL_USAGE = 8
    MANAGE_ALL_KEYS = 16
    MANAGE_PROVIDERS = 32
    MANAGE_ROUTES = 64
    MANAGE_ORGS = 128


ALL = Perm(255)
ROLE_PERMS: dict[str, Perm] = {
    "admin": ALL,
    "member": Perm.USE_MODELS | Perm.MANAGE_OWN_KEYS | Perm.VIEW_OWN_USAGE,
    "viewer": Perm.VIEW_OWN_USAGE | Perm.VIEW_ALL_USAGE,
    "service_account": Perm.USE_MODELS,
}
ROLES = tuple(ROLE_PERMS)
BUDGET_PERIODS = ("daily", "weekly", "monthly", "lifetime")


def perms_of(role: str) -> Perm:
    return ROLE_PERMS.get(role, Perm(0))


def model_allowed(model: str, patterns: list[str] | tuple[str, ...] | None) -> bool:
    """``None`` (or empty) allows everything; else an exact alias or a glob."""
    if not patterns:
        return True
    return any(model == p or fnmatchcase(model, p) for p in patterns)


def _narrow_limit(parent: int | float | None, child: int | float | None
                  ) -> int | float | None:
    if child is None:
        return parent
    if parent is None or parent == 0:
        return child
    if child == 0:
        return parent  # unlimited below a limit is still the limit
    return min(parent, child)


def model_rules(*levels: Limits | None) -> tuple[tuple[str, ...], ...]:
    """The allowlists of every level that has one: a model must pass them all
    (so a team or key can only narrow its org's list, globs included)."""
    return tuple(tuple(lv.allowed_models) for lv in levels
                 if lv is not None and lv.allowed_models)


def allowed_by_all(model: str, rules: tuple[tuple[str, ...], ...]) -> bool:
    return all(model_allowed(model, rule) for rule in rules)


def effective(*levels: Limits | None) -> Limits:
    """The numeric limits that apply to a key: ``effective(org, team, key)``
    (allowlists: :func:`model_rules`)."""
    out = Limits()
    for level in levels:
        if level is None:
            continue
        out = Limits(
            allowed_models=level.allowed_models or out.allowed_models,
            rpm_limit=_narrow_limit(out.rpm_limit, level.rpm_limit),  # type: ignore[arg-type]
            tpm_limit=_narrow_limit(out.tpm_limit, level.tpm_limit),  # type: ignore[arg-type]
            max_budget=_narrow_limit(out.max_budget, level.max_budget),
            budget_period=level.budget_period or out.budget_period)
    return out
