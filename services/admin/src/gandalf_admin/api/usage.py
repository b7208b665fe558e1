"""``/admin/v1/usage``: billed requests and their rollups (read-only; the
usage service writes both tables).

- ``GET /usage?org_id&team_id&key_id&model&provider&status&since&until&offset&limit``:
  raw records, newest first, in the list envelope. ``status`` is a code
  (``429``) or a class (``5xx``).
- ``GET /usage/summary?org_id&team_id&key_id&model&provider&period&since&until``:
  ``{"data": [UsageRollup...]}`` of one period (``hourly``, the default, or
  ``daily``), newest bucket first. The rollups are kept incrementally, so
  the current, unfinished hour and day are included.

``since``/``until`` are RFC 3339 with any offset, compared as instants:
``since <= t < until`` (``t`` is ``created_at``, or ``bucket`` for rollups).

Who sees what: a global admin every org (or ``?org_id=``); an org admin or
viewer (``VIEW_ALL_USAGE``) its own org (``?org_id=`` of another org is 403,
see ``access.authorize``); a member (``VIEW_OWN_USAGE`` only) the rows of its
own key, or of its user when it has one (rollups: the user's keys).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Final

import msgspec
from msgspec import Meta

from gandalf_common.authz import Perm
from gandalf_common.contract import AdminResponse

from ..access import Access
from ..deps import Deps
from ..errors import bad_request
from ..store.usage_ports import PERIODS, UsageFilter
from ..wire import Request, envelope, json_response, page_of

#: A summary is one message: past this many rows, ask for a narrower query.
MAX_SUMMARY_ROWS: Final = 2000

_Instant = Annotated[datetime, Meta(tz=True)]
#: ``+05:30`` sent unencoded in a query string arrives as `` 05:30``.
_SPACED_OFFSET = re.compile(r"^(?P<head>.*\d) (?P<offset>\d{2}:?\d{2})$")
_STATUS_CLASS = re.compile(r"^(?P<digit>[1-5])xx$", re.I)


def _instant(query: dict[str, str], name: str) -> datetime | None:
    raw = query.get(name, "").strip()
    if not raw:
        return None
    m = _SPACED_OFFSET.match(raw)
    if m:
        raw = f"{m.group('head')}+{m.group('offset')}"
    try:
        return msgspec.convert(raw, _Instant)
    except msgspec.ValidationError:
        raise bad_request(f"{name} must be an RFC 3339 time with an offset, e.g. "
                          f"2026-03-01T10:00:00Z or 2026-03-01T10:00:00+05:30", name) from None


def _status(query: dict[str, str]) -> tuple[int | None, int | None]:
    raw = query.get("status", "").strip()
    if not raw:
        return None, None
    m = _STATUS_CLASS.match(raw)
    if m:
        low = int(m.group("digit")) * 100
        return low, low + 99
    if raw.isdigit() and 100 <= int(raw) <= 599:
        return int(raw), int(raw)
    raise bad_request("status must be an HTTP status (429) or a class (5xx)", "status")


def _text(query: dict[str, str], name: str) -> str | None:
    return query.get(name) or None


def usage_filter(query: dict[str, str], access: Access, *, statuses: bool) -> UsageFilter:
    """The query's filters, confined to what the caller may see."""
    since, until = _instant(query, "since"), _instant(query, "until")
    if since is not None and until is not None and until < since:
        raise bad_request("until must not be before since", "until")
    status_min = status_max = None
    if statuses:
        status_min, status_max = _status(query)
    elif query.get("status"):
        raise bad_request("rollups are not split by status; use /admin/v1/usage", "status")
    c = access.caller
    owned_only = not access.perms & Perm.VIEW_ALL_USAGE
    return UsageFilter(
        org_id=access.list_org(query), team_id=_text(query, "team_id"),
        key_id=_text(query, "key_id"), model=_text(query, "model"),
        provider=_text(query, "provider"), status_min=status_min, status_max=status_max,
        since=since, until=until, owned_only=owned_only,
        owner_key_id=(c.key_id or None) if owned_only else None,
        owner_user_id=(c.user_id or None) if owned_only else None)


async def list_usage(req: Request, access: Access, deps: Deps) -> AdminResponse:
    page = page_of(req.query)
    where = usage_filter(req.query, access, statuses=True)
    rows, total = await deps.usage.records(where, page)
    return json_response(200, envelope(rows, page, total))


async def usage_summary(req: Request, access: Access, deps: Deps) -> AdminResponse:
    period = req.query.get("period") or "hourly"
    if period not in PERIODS:
        raise bad_request(f"period must be one of {', '.join(PERIODS)}", "period")
    where = usage_filter(req.query, access, statuses=False)
    rows = await deps.usage.rollups(where, period, MAX_SUMMARY_ROWS + 1)
    if len(rows) > MAX_SUMMARY_ROWS:
        raise bad_request(f"more than {MAX_SUMMARY_ROWS} rollups match: narrow since/until "
                          "or filter by org, team, key, model or provider", "since",
                          code="summary_too_large")
    return json_response(200, {"data": rows})
