"""Shared asyncpg plumbing for the adapters: connection setup and row
conversion."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
import msgspec

T = TypeVar("T")

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.decode


async def init_connection(conn: asyncpg.Connection) -> None:
    """jsonb as Python values (route targets, model maps, auth fields)."""
    await conn.set_type_codec("jsonb", encoder=lambda v: _json_encode(v).decode(),
                              decoder=_json_decode, schema="pg_catalog")


def to_row(record: asyncpg.Record, cls: type[T]) -> T:
    # numeric comes back as Decimal; budgets are plain floats everywhere else.
    data = {k: float(v) if isinstance(v, Decimal) else v for k, v in record.items()}
    return msgspec.convert(data, cls, from_attributes=False)


def to_rows(records: list[asyncpg.Record], cls: type[T]) -> list[T]:
    return [to_row(r, cls) for r in records]


def money(value: float | None) -> Decimal | None:
    """A float budget as numeric, without binary-float noise (0.1 stays 0.1)."""
    return None if value is None else Decimal(repr(value))


def values(row: Any, columns: tuple[str, ...]) -> list[Any]:
    """The row's values for ``columns``, budgets as numeric."""
    out = []
    for c in columns:
        v = getattr(row, c)
        out.append(money(v) if c == "max_budget" else v)
    return out
