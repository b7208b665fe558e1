"""The ``started`` usage event: published at admission, overlapping the
upstream call, and stored before the response's first byte.

If the process dies after the client got any byte, the usage service still
has this event: with no ``finished`` event within its deadline it bills the
request from the estimate reserved here (a flagged row), and a ``finished``
that comes later settles it (see gandalf_usage/pending.py).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from gandalf_common.contract import Usage, UsageStarted

if TYPE_CHECKING:
    from .auth import Identity
    from .usage import UsageRecorder

_TASKS: set[asyncio.Task[bool]] = set()


def publish_started(recorder: UsageRecorder, scope: dict[str, Any], *, request_id: str,
                    started: float, identity: Identity, endpoint: str, model: str,
                    stream: bool, tokens: int) -> None:
    """Start storing the event; the response's first byte waits for it."""
    publisher = recorder.publisher
    if publisher is None:
        return
    # The estimate is priced as input: it is an allowance, not a split.
    cost = recorder.prices.cost(Usage(prompt_tokens=tokens, completion_tokens=0,
                                      total_tokens=tokens), model, "", "")
    event = UsageStarted(
        request_id=request_id, ts=started, org_id=identity.org_id, team_id=identity.team_id,
        key_id=identity.key_id, user_id=identity.user_id, auth=identity.auth,
        endpoint=endpoint, model=model, stream=stream, estimated_tokens=tokens,
        estimated_cost_usd=cost)
    task = asyncio.ensure_future(publisher.record_started(event))
    _TASKS.add(task)  # a strong reference until it is done
    task.add_done_callback(_TASKS.discard)
    hold = scope.get("state", {}).get("hold_start")
    if hold is not None:
        hold(task)
