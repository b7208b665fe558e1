"""API keys in PostgreSQL (asyncpg adapter of ``KeyRepo``)."""

from __future__ import annotations

import builtins  # the repositories' list() methods shadow the builtin in annotations
from datetime import datetime

import asyncpg

from .pg_common import to_row, to_rows, values
from .ports import KeyFilter, Page
from .rows import KeyRow

_COLS = ("id", "key_hash", "key_prefix", "org_id", "role", "name", "user_id", "team_id",
         "allowed_models", "rpm_limit", "tpm_limit", "max_budget", "budget_period",
         "expires_at", "blocked", "created_by", "parent_key_id")
_SELECT = f"SELECT {', '.join(_COLS)}, last_used_at, created_at FROM api_keys"
#: $1 org, $2 team, $3 owner user, $4 owner principal, $5 owner key id. The
#: owner clause applies when any owner field is set (members).
_WHERE = """
 WHERE ($1::text IS NULL OR org_id = $1)
   AND ($2::text IS NULL OR team_id = $2)
   AND (($3::text IS NULL AND $4::text IS NULL AND $5::text IS NULL)
        OR user_id = $3 OR created_by = $4 OR id = $5)
"""


class PgKeyRepo:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._c = conn

    async def get(self, key_id: str) -> KeyRow | None:
        rec = await self._c.fetchrow(_SELECT + " WHERE id = $1", key_id)
        return to_row(rec, KeyRow) if rec else None

    async def by_hash(self, key_hash: str) -> KeyRow | None:
        rec = await self._c.fetchrow(_SELECT + " WHERE key_hash = $1", key_hash)
        return to_row(rec, KeyRow) if rec else None

    async def list(self, where: KeyFilter, page: Page) -> tuple[builtins.list[KeyRow], int]:
        args = (where.org_id, where.team_id, where.owner_user_id, where.owner_principal,
                where.owner_key_id)
        recs = await self._c.fetch(
            _SELECT + _WHERE + " ORDER BY created_at DESC, id DESC LIMIT $6 OFFSET $7",
            *args, page.limit, page.offset)
        total = await self._c.fetchval("SELECT count(*) FROM api_keys" + _WHERE, *args)
        return to_rows(recs, KeyRow), total

    async def all(self) -> builtins.list[KeyRow]:
        return to_rows(await self._c.fetch(_SELECT), KeyRow)

    async def in_org(self, org_id: str) -> builtins.list[KeyRow]:
        return to_rows(await self._c.fetch(_SELECT + " WHERE org_id = $1", org_id), KeyRow)

    async def in_team(self, team_id: str) -> builtins.list[KeyRow]:
        return to_rows(await self._c.fetch(_SELECT + " WHERE team_id = $1", team_id), KeyRow)

    async def insert(self, row: KeyRow, *, if_missing: bool = False) -> KeyRow | None:
        conflict = " ON CONFLICT (key_hash) DO NOTHING" if if_missing else ""
        marks = ", ".join(f"${i}" for i in range(1, len(_COLS) + 1))
        rec = await self._c.fetchrow(
            f"INSERT INTO api_keys ({', '.join(_COLS)}) VALUES ({marks}){conflict} "
            "RETURNING last_used_at, created_at", *values(row, _COLS))
        if rec is None:
            return None
        return _with(row, rec)

    async def update(self, row: KeyRow) -> KeyRow | None:
        # The hash, prefix, creator and parent never change.
        cols = tuple(c for c in _COLS
                     if c not in ("key_hash", "key_prefix", "created_by", "parent_key_id"))
        sets = ", ".join(f"{c} = ${i}" for i, c in enumerate(cols[1:], start=2))
        rec = await self._c.fetchrow(
            f"UPDATE api_keys SET {sets} WHERE id = $1 RETURNING last_used_at, created_at",
            *values(row, cols))
        return _with(row, rec) if rec else None

    async def descendants(self, key_id: str) -> builtins.list[KeyRow]:
        """Every key minted from ``key_id``, transitively (not the key itself)."""
        recs = await self._c.fetch(
            "WITH RECURSIVE d(id) AS (SELECT id FROM api_keys WHERE parent_key_id = $1"
            " UNION SELECT k.id FROM api_keys k JOIN d ON k.parent_key_id = d.id) "
            + _SELECT + " WHERE id IN (SELECT id FROM d)", key_id)
        return to_rows(recs, KeyRow)

    async def count_created_by(self, principal: str) -> int:
        count: int = await self._c.fetchval(
            "SELECT count(*) FROM api_keys WHERE created_by = $1", principal)
        return count

    async def block(self, key_ids: builtins.list[str]) -> builtins.list[KeyRow]:
        recs = await self._c.fetch(
            "UPDATE api_keys SET blocked = true WHERE id = ANY($1::text[]) AND NOT blocked "
            f"RETURNING {', '.join(_COLS)}, last_used_at, created_at", key_ids)
        return to_rows(recs, KeyRow)

    async def spend_since(self, key_id: str, since: datetime) -> float:
        value = await self._c.fetchval(
            "SELECT COALESCE(sum(cost_usd), 0) FROM usage_records"
            " WHERE key_id = $1 AND created_at >= $2", key_id, since)
        return float(value)

    async def delete(self, key_id: str) -> KeyRow | None:
        rec = await self._c.fetchrow(
            f"DELETE FROM api_keys WHERE id = $1 RETURNING {', '.join(_COLS)}, "
            "last_used_at, created_at", key_id)
        return to_row(rec, KeyRow) if rec else None


def _with(row: KeyRow, rec: asyncpg.Record) -> KeyRow:
    data = {f: getattr(row, f) for f in row.__struct_fields__}
    data.update(last_used_at=rec["last_used_at"], created_at=rec["created_at"])
    return KeyRow(**data)
