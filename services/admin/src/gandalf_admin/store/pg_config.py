"""Providers, routes and auth settings in PostgreSQL (asyncpg adapters)."""

from __future__ import annotations

import builtins  # the repositories' list() methods shadow the builtin in annotations
from typing import Any

import asyncpg
import msgspec

from .pg_common import to_row, to_rows, values
from .ports import Page
from .rows import ProviderRow, RouteRow

_P_COLS = ("id", "name", "type", "base_url", "models", "priority", "weight", "enabled",
           "max_rps", "max_concurrency", "timeout_ms", "hosting", "region", "project",
           "api_version", "model_map", "auth_type", "auth", "secrets_enc", "secret_hints",
           "allow_custom_endpoint")
# models may be NULL in rows written before the admin API (it meant "none").
_P_SELECT = ("SELECT " + ", ".join("coalesce(models, '{}') AS models" if c == "models" else c
                                   for c in _P_COLS) + ", created_at, updated_at FROM providers")
_R_COLS = ("id", "model_alias", "targets", "strategy", "cache_ttl_s")
_R_SELECT = f"SELECT {', '.join(_R_COLS)}, created_at, updated_at FROM routes"


def _marks(n: int) -> str:
    return ", ".join(f"${i}" for i in range(1, n + 1))


def _stamped(row: ProviderRow | RouteRow, rec: asyncpg.Record) -> dict[str, Any]:
    data = {f: getattr(row, f) for f in row.__struct_fields__}
    data.update(created_at=rec["created_at"], updated_at=rec["updated_at"])
    return data


class PgProviderRepo:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._c = conn

    async def get(self, provider_id: str) -> ProviderRow | None:
        rec = await self._c.fetchrow(_P_SELECT + " WHERE id = $1", provider_id)
        return to_row(rec, ProviderRow) if rec else None

    async def list(self, page: Page) -> tuple[builtins.list[ProviderRow], int]:
        recs = await self._c.fetch(_P_SELECT + " ORDER BY priority, id LIMIT $1 OFFSET $2",
                                   page.limit, page.offset)
        return to_rows(recs, ProviderRow), await self._c.fetchval(
            "SELECT count(*) FROM providers")

    async def all(self) -> builtins.list[ProviderRow]:
        return to_rows(await self._c.fetch(_P_SELECT), ProviderRow)

    async def insert(self, row: ProviderRow, *, if_missing: bool = False
                     ) -> ProviderRow | None:
        conflict = " ON CONFLICT (id) DO NOTHING" if if_missing else ""
        rec = await self._c.fetchrow(
            f"INSERT INTO providers ({', '.join(_P_COLS)}) VALUES ({_marks(len(_P_COLS))})"
            f"{conflict} RETURNING created_at, updated_at", *values(row, _P_COLS))
        return ProviderRow(**_stamped(row, rec)) if rec else None

    async def update(self, row: ProviderRow) -> ProviderRow | None:
        sets = ", ".join(f"{c} = ${i}" for i, c in enumerate(_P_COLS[1:], start=2))
        rec = await self._c.fetchrow(
            f"UPDATE providers SET {sets}, updated_at = now() WHERE id = $1 "
            "RETURNING created_at, updated_at", *values(row, _P_COLS))
        return ProviderRow(**_stamped(row, rec)) if rec else None

    async def delete(self, provider_id: str) -> bool:
        return await self._c.fetchval(
            "DELETE FROM providers WHERE id = $1 RETURNING true", provider_id) is not None


def _route_values(row: RouteRow) -> builtins.list[object]:
    targets = msgspec.to_builtins(row.targets)
    return [row.id, row.model_alias, targets, row.strategy, row.cache_ttl_s]


class PgRouteRepo:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._c = conn

    async def get(self, route_id: str) -> RouteRow | None:
        rec = await self._c.fetchrow(_R_SELECT + " WHERE id = $1", route_id)
        return to_row(rec, RouteRow) if rec else None

    async def by_alias(self, alias: str) -> RouteRow | None:
        rec = await self._c.fetchrow(_R_SELECT + " WHERE model_alias = $1", alias)
        return to_row(rec, RouteRow) if rec else None

    async def list(self, page: Page) -> tuple[builtins.list[RouteRow], int]:
        recs = await self._c.fetch(_R_SELECT + " ORDER BY model_alias LIMIT $1 OFFSET $2",
                                   page.limit, page.offset)
        return to_rows(recs, RouteRow), await self._c.fetchval("SELECT count(*) FROM routes")

    async def all(self) -> builtins.list[RouteRow]:
        return to_rows(await self._c.fetch(_R_SELECT), RouteRow)

    async def using_provider(self, provider_id: str) -> builtins.list[RouteRow]:
        recs = await self._c.fetch(
            _R_SELECT + " WHERE targets @> $1::jsonb ORDER BY model_alias",
            [{"provider_id": provider_id}])
        return to_rows(recs, RouteRow)

    async def insert(self, row: RouteRow, *, if_missing: bool = False) -> RouteRow | None:
        # if_missing is keyed by alias: the YAML names routes by alias only.
        conflict = " ON CONFLICT (model_alias) DO NOTHING" if if_missing else ""
        rec = await self._c.fetchrow(
            f"INSERT INTO routes ({', '.join(_R_COLS)}) VALUES ({_marks(len(_R_COLS))})"
            f"{conflict} RETURNING created_at, updated_at", *_route_values(row))
        return RouteRow(**_stamped(row, rec)) if rec else None

    async def update(self, row: RouteRow) -> RouteRow | None:
        sets = ", ".join(f"{c} = ${i}" for i, c in enumerate(_R_COLS[1:], start=2))
        rec = await self._c.fetchrow(
            f"UPDATE routes SET {sets}, updated_at = now() WHERE id = $1 "
            "RETURNING created_at, updated_at", *_route_values(row))
        return RouteRow(**_stamped(row, rec)) if rec else None

    async def delete(self, route_id: str) -> bool:
        return await self._c.fetchval(
            "DELETE FROM routes WHERE id = $1 RETURNING true", route_id) is not None


class PgAuthSettingsRepo:
    """``auth_settings``: name -> JSON document (kept as bytes for msgspec)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._c = conn

    async def get(self, name: str) -> bytes | None:
        value = await self._c.fetchval("SELECT value FROM auth_settings WHERE name = $1", name)
        return None if value is None else msgspec.json.encode(value)

    async def all(self) -> dict[str, bytes]:
        recs = await self._c.fetch("SELECT name, value FROM auth_settings")
        return {r["name"]: msgspec.json.encode(r["value"]) for r in recs}

    async def put(self, name: str, value: bytes, *, if_missing: bool = False) -> bool:
        doc = msgspec.json.decode(value)
        if if_missing:
            return await self._c.fetchval(
                "INSERT INTO auth_settings (name, value) VALUES ($1, $2) "
                "ON CONFLICT (name) DO NOTHING RETURNING true", name, doc) is not None
        await self._c.execute(
            "INSERT INTO auth_settings (name, value) VALUES ($1, $2) ON CONFLICT (name) "
            "DO UPDATE SET value = excluded.value, updated_at = now()", name, doc)
        return True
