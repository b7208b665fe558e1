"""Usage events off the stream: decode, then make sure the database can
store every value, so one bad event is rejected on its own instead of
failing (and endlessly retrying) the batch it arrived in."""

from __future__ import annotations

import math

import msgspec

from gandalf_common.contract import (
    UsageEvent,
    UsageStarted,
    usage_json_decoder,
    usage_started_decoder,
)

INT4_MAX = 2**31 - 1
INT8_MAX = 2**63 - 1
#: usage_records.cost_usd is numeric(18, 8): below 10^10.
COST_MAX = 1e10 - 1
#: 9999-12-31T23:59:59Z: past it Postgres has no timestamptz.
TS_MAX = 253402300799.0

_TOKENS = ("prompt_tokens", "completion_tokens", "cached_tokens", "total_tokens")
_TEXT = ("org_id", "team_id", "key_id", "user_id", "auth", "endpoint", "model", "provider",
         "provider_model", "error_class")
_STARTED_TEXT = ("org_id", "team_id", "key_id", "user_id", "auth", "endpoint", "model")


class MalformedEventError(ValueError):
    """Not a usage event we can bill: the message is terminated."""


def _clamp_int4(value: int) -> int:
    return min(max(value, 0), INT4_MAX)


def decode_event(data: bytes) -> UsageEvent:
    """The event in ``data``, with informative fields brought into range.

    Billing fields (request id, time, tokens, cost) are never altered: an
    impossible value there makes the event malformed. Status and latencies
    are only informative, so they are clamped; NUL characters, which
    Postgres text cannot hold, are dropped from text fields.
    """
    try:
        event = usage_json_decoder.decode(data)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        raise MalformedEventError(str(exc)) from None
    if not event.request_id or "\x00" in event.request_id:
        raise MalformedEventError("empty or invalid request_id")
    if not (math.isfinite(event.ts) and 0 <= event.ts <= TS_MAX):
        raise MalformedEventError(f"ts out of range: {event.ts!r}")
    for name in _TOKENS:
        if not 0 <= getattr(event, name) <= INT8_MAX:
            raise MalformedEventError(f"{name} out of range")
    if not (math.isfinite(event.cost_usd) and 0 <= event.cost_usd <= COST_MAX):
        raise MalformedEventError(f"cost_usd out of range: {event.cost_usd!r}")
    fixes: dict[str, object] = {}
    for name in _TEXT:
        value: str = getattr(event, name)
        if "\x00" in value:
            fixes[name] = value.replace("\x00", "")
    for name in ("status", "latency_ms"):
        value_i: int = getattr(event, name)
        if value_i != _clamp_int4(value_i):
            fixes[name] = _clamp_int4(value_i)
    if event.ttft_ms is not None and event.ttft_ms != _clamp_int4(event.ttft_ms):
        fixes["ttft_ms"] = _clamp_int4(event.ttft_ms)
    return msgspec.structs.replace(event, **fixes) if fixes else event


def decode_started(data: bytes) -> UsageStarted:
    """A ``started`` event, checked like a finished one (its estimate bills
    the request if the finished event never comes)."""
    try:
        event = usage_started_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise MalformedEventError(str(exc)) from None
    if not event.request_id or "\x00" in event.request_id:
        raise MalformedEventError("empty or invalid request_id")
    if not (math.isfinite(event.ts) and 0 <= event.ts <= TS_MAX):
        raise MalformedEventError(f"ts out of range: {event.ts!r}")
    if not 0 <= event.estimated_tokens <= INT8_MAX:
        raise MalformedEventError("estimated_tokens out of range")
    cost = event.estimated_cost_usd
    if not (math.isfinite(cost) and 0 <= cost <= COST_MAX):
        raise MalformedEventError(f"estimated_cost_usd out of range: {cost!r}")
    fixes = {name: getattr(event, name).replace("\x00", "") for name in _STARTED_TEXT
             if "\x00" in getattr(event, name)}
    return msgspec.structs.replace(event, **fixes) if fixes else event
