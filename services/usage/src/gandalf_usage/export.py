"""``gandalf usage export``: the raw usage rows of a time window, for billing.

One line per request (``created_at >= --from`` and ``< --to``, oldest
first), read through a server-side cursor so any window fits in memory.
Columns are :data:`COLUMNS` in that order, then those of
:data:`OPTIONAL_COLUMNS` the schema has (a later migration may add them).
Timestamps are RFC 3339 UTC (``2026-03-01T04:30:00Z``, microseconds when
present), ``cost_usd`` is the stored decimal as a string
(``"0.01250000"``), booleans are ``true``/``false``, absent values are
empty (CSV) or ``null`` (JSONL).
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, TextIO

import asyncpg
import msgspec

from .replay import table_columns

FORMATS: Final = ("csv", "jsonl")
COLUMNS: Final = (
    "id", "request_id", "created_at", "org_id", "team_id", "key_id", "user_id",
    "caller_jwt_sub", "caller_service", "model", "provider_id", "provider_model",
    "status_code", "stream", "cached", "prompt_tokens", "completion_tokens",
    "cached_tokens", "total_tokens", "cost_usd", "latency_ms", "ttft_ms", "error_class",
)
#: Event fields migrations 004 and 007 added to the raw rows (exported when present).
OPTIONAL_COLUMNS: Final = ("auth", "endpoint", "coalesced", "estimated", "provisional")
_PREFETCH = 1000
_json = msgspec.json.Encoder()


def _plain(value: Any) -> Any:
    """A column value as JSON shows it."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, Decimal):
        return format(value, "f")  # never exponent notation ("0E-8")
    return value


def _cell(value: Any) -> str:
    """A column value as CSV shows it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(_plain(value))


async def export_columns(conn: asyncpg.Connection) -> list[str]:
    present = await table_columns(conn, "usage_records")
    return list(COLUMNS) + [c for c in OPTIONAL_COLUMNS if c in present]


async def export(conn: asyncpg.Connection, since: datetime, until: datetime, fmt: str,
                 out: TextIO) -> int:
    """Write the rows of ``[since, until)`` to ``out``; the number of rows."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    columns = await export_columns(conn)
    writer = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
    if writer is not None:
        writer.writerow(columns)
    count = 0
    sql = (f"SELECT {', '.join(columns)} FROM usage_records "
           "WHERE created_at >= $1 AND created_at < $2 ORDER BY created_at, id")
    # A cursor needs a transaction; one snapshot also keeps the file consistent.
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        async for rec in conn.cursor(sql, since, until, prefetch=_PREFETCH):
            if writer is not None:
                writer.writerow([_cell(v) for v in rec.values()])
            else:
                row = {c: _plain(v) for c, v in zip(columns, rec.values(), strict=True)}
                out.write(_json.encode(row).decode() + "\n")
            count += 1
    return count
