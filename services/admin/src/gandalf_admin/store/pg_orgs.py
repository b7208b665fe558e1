"""Organizations and teams in PostgreSQL (asyncpg adapters of the ports)."""

from __future__ import annotations

import builtins  # the repositories' list() methods shadow the builtin in annotations

import asyncpg

from .pg_common import to_row, to_rows, values
from .ports import Page
from .rows import OrgRow, TeamRow

_LIMITS = ("allowed_models", "rpm_limit", "tpm_limit", "max_budget", "budget_period")
_ORG_COLS = ("id", "name", *_LIMITS)
_ORG_SELECT = f"SELECT {', '.join(_ORG_COLS)}, created_at FROM organizations"
_TEAM_COLS = ("id", "org_id", "name", *_LIMITS)
_TEAM_SELECT = f"SELECT {', '.join(_TEAM_COLS)}, created_at FROM teams"


def _placeholders(n: int) -> str:
    return ", ".join(f"${i}" for i in range(1, n + 1))


class PgOrgRepo:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._c = conn

    async def get(self, org_id: str) -> OrgRow | None:
        rec = await self._c.fetchrow(_ORG_SELECT + " WHERE id = $1", org_id)
        return to_row(rec, OrgRow) if rec else None

    async def list(self, org_id: str | None, page: Page) -> tuple[builtins.list[OrgRow], int]:
        recs = await self._c.fetch(
            _ORG_SELECT + " WHERE ($1::text IS NULL OR id = $1) ORDER BY created_at, id"
            " LIMIT $2 OFFSET $3", org_id, page.limit, page.offset)
        total = await self._c.fetchval(
            "SELECT count(*) FROM organizations WHERE ($1::text IS NULL OR id = $1)", org_id)
        return to_rows(recs, OrgRow), total

    async def all(self) -> builtins.list[OrgRow]:
        return to_rows(await self._c.fetch(_ORG_SELECT), OrgRow)

    async def insert(self, row: OrgRow, *, if_missing: bool = False) -> OrgRow | None:
        conflict = " ON CONFLICT (id) DO NOTHING" if if_missing else ""
        rec = await self._c.fetchrow(
            f"INSERT INTO organizations ({', '.join(_ORG_COLS)}) "
            f"VALUES ({_placeholders(len(_ORG_COLS))}){conflict} RETURNING created_at",
            *values(row, _ORG_COLS))
        if rec is None:
            return None
        return OrgRow(**{**_fields(row), "created_at": rec["created_at"]})

    async def update(self, row: OrgRow) -> OrgRow | None:
        sets = ", ".join(f"{c} = ${i}" for i, c in enumerate(_ORG_COLS[1:], start=2))
        rec = await self._c.fetchrow(
            f"UPDATE organizations SET {sets} WHERE id = $1 RETURNING created_at",
            *values(row, _ORG_COLS))
        return OrgRow(**{**_fields(row), "created_at": rec["created_at"]}) if rec else None

    async def delete(self, org_id: str) -> bool:
        return await self._c.fetchval(
            "DELETE FROM organizations WHERE id = $1 RETURNING true", org_id) is not None


class PgTeamRepo:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._c = conn

    async def get(self, team_id: str) -> TeamRow | None:
        rec = await self._c.fetchrow(_TEAM_SELECT + " WHERE id = $1", team_id)
        return to_row(rec, TeamRow) if rec else None

    async def list(self, org_id: str | None, page: Page) -> tuple[builtins.list[TeamRow], int]:
        recs = await self._c.fetch(
            _TEAM_SELECT + " WHERE ($1::text IS NULL OR org_id = $1) ORDER BY created_at, id"
            " LIMIT $2 OFFSET $3", org_id, page.limit, page.offset)
        total = await self._c.fetchval(
            "SELECT count(*) FROM teams WHERE ($1::text IS NULL OR org_id = $1)", org_id)
        return to_rows(recs, TeamRow), total

    async def all(self) -> builtins.list[TeamRow]:
        return to_rows(await self._c.fetch(_TEAM_SELECT), TeamRow)

    async def in_org(self, org_id: str) -> builtins.list[TeamRow]:
        return to_rows(await self._c.fetch(_TEAM_SELECT + " WHERE org_id = $1", org_id),
                       TeamRow)

    async def insert(self, row: TeamRow) -> TeamRow:
        rec = await self._c.fetchrow(
            f"INSERT INTO teams ({', '.join(_TEAM_COLS)}) "
            f"VALUES ({_placeholders(len(_TEAM_COLS))}) RETURNING created_at",
            *values(row, _TEAM_COLS))
        return TeamRow(**{**_fields(row), "created_at": rec["created_at"]})

    async def update(self, row: TeamRow) -> TeamRow | None:
        sets = ", ".join(f"{c} = ${i}" for i, c in enumerate(_TEAM_COLS[1:], start=2))
        rec = await self._c.fetchrow(
            f"UPDATE teams SET {sets} WHERE id = $1 RETURNING created_at",
            *values(row, _TEAM_COLS))
        return TeamRow(**{**_fields(row), "created_at": rec["created_at"]}) if rec else None

    async def delete(self, team_id: str) -> bool:
        return await self._c.fetchval(
            "DELETE FROM teams WHERE id = $1 RETURNING true", team_id) is not None


def _fields(row: OrgRow | TeamRow) -> dict[str, object]:
    return {f: getattr(row, f) for f in row.__struct_fields__}
