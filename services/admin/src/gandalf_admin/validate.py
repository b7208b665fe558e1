"""Field types and rules shared by the admin API bodies, and the inheritance
rule: a team or key may only narrow what its parents allow."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from gandalf_common.authz import model_allowed

from .errors import bad_request
from .store.rows import KeyRow, OrgRow, TeamRow

#: Anything larger is a typo, not a limit (and would overflow int4 columns).
MAX_LIMIT_VALUE = 10**9

LimitInt = Annotated[int, Meta(ge=0, le=MAX_LIMIT_VALUE)]
Budget = Annotated[float, Meta(ge=0, le=MAX_LIMIT_VALUE)]
ModelName = Annotated[str, Meta(min_length=1, max_length=256)]
Models = Annotated[list[ModelName], Meta(max_length=1000)]
#: Ids appear in URL paths: a conservative alphabet, no slashes or spaces.
Ident = Annotated[str, Meta(min_length=1, max_length=128,
                            pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$")]
Name = Annotated[str, Meta(min_length=1, max_length=256)]
Period = Literal["daily", "weekly", "monthly", "lifetime"]
Role = Literal["admin", "member", "viewer", "service_account"]
Timestamp = Annotated[datetime, Meta(tz=True)]


class LimitsBody(Struct, kw_only=True, forbid_unknown_fields=True):
    """Limit fields of orgs, teams and keys. Absent = unchanged (on update) or
    inherit (on create); an explicit ``null`` clears the value."""

    allowed_models: Models | UnsetType | None = UNSET
    rpm_limit: LimitInt | UnsetType | None = UNSET
    tpm_limit: LimitInt | UnsetType | None = UNSET
    max_budget: Budget | UnsetType | None = UNSET
    budget_period: Period | UnsetType | None = UNSET
    #: Read-only fields of the resource, accepted so a GET body can be PUT back.
    created_at: Any = UNSET
    last_used_at: Any = UNSET
    key_prefix: Any = UNSET


#: Response-only fields a body may echo back; never applied.
READ_ONLY = frozenset({"created_at", "last_used_at", "key_prefix", "updated_at"})


def changes_of(body: Struct, *, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The fields the body sets (explicit nulls included), normalised."""
    out: dict[str, Any] = {}
    for name in body.__struct_fields__:
        value = getattr(body, name)
        if value is UNSET or name in READ_ONLY or name in skip:
            continue
        if name == "allowed_models" and not value:
            value = None  # [] and null both mean "no list at this level" (inherit)
        elif isinstance(value, datetime):
            value = value.astimezone(UTC)  # any offset in, UTC out (as the DB returns it)
        out[name] = value
    return out


def check_narrower(child: OrgRow | TeamRow | KeyRow, parent: OrgRow | TeamRow,
                   parent_kind: str) -> None:
    """400 naming the field when ``child`` allows more than ``parent``."""
    if parent.allowed_models and child.allowed_models:
        for model in child.allowed_models:
            if not model_allowed(model, parent.allowed_models):
                raise bad_request(f"allowed_models: {model!r} is not allowed by the "
                                  f"{parent_kind} {parent.id!r}", "allowed_models")
    for name in ("rpm_limit", "tpm_limit", "max_budget"):
        mine, theirs = getattr(child, name), getattr(parent, name)
        # 0 below a set limit is harmless: the stricter parent still applies.
        if theirs and mine and mine > theirs:
            raise bad_request(f"{name} {mine:g} exceeds the {parent_kind} {parent.id!r} "
                              f"limit of {theirs:g}", name)


def to_builtins(value: Any) -> Any:
    return msgspec.to_builtins(value)


def given(value: Any) -> Any:
    """``None`` for an absent (UNSET) field, else the value."""
    return None if value is UNSET else value
