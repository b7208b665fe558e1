"""One admission pipeline for every door (universal, native, translated,
model lists). The steps, in order:

1. authenticate (the door says where its API carries the key)
2. read the body, 3. route and check the model allowlist (the endpoint)
4. budget check, 5. cache lookup where the API allows it (universal chat)
6. RPM/TPM admit, 7. budget reserve (``admit``)
8. relay, 9. settle: refund/charge the TPM estimate, release the budget
   reservation and record usage, exactly once (``settle`` / ``refuse``).

A :class:`Door` supplies only what differs per API: its credentials, how to
estimate tokens from its body shape, and its error shape. A refusal is
rendered by the door, with ``Retry-After`` and the ``X-Ratelimit-*`` headers
(the middleware adds those from ``state["headers"]``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from gandalf_common.contract import Usage
from gandalf_common.errors import GatewayError

from .holdend import release_response
from .relay import Send, send_json_error
from .started import publish_started

if TYPE_CHECKING:
    from .auth import Identity
    from .handlers import Gateway
    from .ratelimit.ports import Decision
    from .usage import Outcome

Scope = dict[str, Any]
_NOTHING = Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)


class Door(Protocol):
    """The API-specific bits of one family of routes."""

    #: The usage event's ``endpoint`` label.
    endpoint: str

    def credentials(self, scope: Scope) -> str | None:
        """The caller's key as an ``Authorization`` value (None: anonymous)."""
        ...

    def estimate(self, action: str, payload: dict[str, Any], body: bytes) -> int:
        """Tokens to reserve before the call (prompt + completion allowance)."""
        ...

    def error_body(self, exc: GatewayError) -> bytes:
        """A whole error response in this API's own shape."""
        ...


@dataclass(slots=True)
class Ticket:
    """One request's way through the pipeline: what it holds, and whether
    its usage was recorded (once)."""

    request_id: str
    started: float
    door: Door
    identity: Identity | None = None
    model: str = ""
    stream: bool = False
    decision: Decision | None = None
    held: list[tuple[str, str, float]] = field(default_factory=list)
    recorded: bool = False
    scope: Scope = field(default_factory=dict)
    #: The steps taken, in order (see ``ORDER``): what the step-order test reads.
    steps: list[str] = field(default_factory=list)


#: The order every door takes the steps in; a request may skip some (no
#: cache on this API, a refusal before the limits) but never reorder them.
ORDER = ("authenticate", "budget", "cache", "admit", "record", "settled")
#: Called with each finished ticket (tests watch the steps; nothing else does).
OBSERVERS: list[Callable[[Ticket], None]] = []


def _done(ticket: Ticket, last: str) -> None:
    ticket.steps.append(last)
    for observe in OBSERVERS:
        observe(ticket)


class Admission:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    def open(self, scope: Scope, door: Door) -> Ticket:
        return Ticket(request_id=scope["state"]["request_id"], started=time.time(), door=door,
                      scope=scope)

    async def authenticate(self, ticket: Ticket, scope: Scope) -> Identity:
        ticket.steps.append("authenticate")
        ticket.identity = await self.gw.keys.authenticate(ticket.door.credentials(scope))
        self.gw.usage.admit()  # 503 while too many usage events wait in memory
        return ticket.identity

    def check_budget(self, ticket: Ticket) -> None:
        assert ticket.identity is not None
        ticket.steps.append("budget")
        self.gw.budgets.check(ticket.identity)

    async def admit(self, ticket: Ticket, scope: Scope, tokens: int, *,
                    reserve: bool = True, bill: bool = True) -> None:
        """Take one request and ``tokens`` (429 when a bucket is empty), then
        reserve the budget for ``tokens`` (429 when it does not fit; the
        tokens just taken are handed back). Admitted and ``bill``: its
        ``started`` usage event goes out now (started.py)."""
        identity = ticket.identity
        assert identity is not None
        ticket.steps.append("admit")
        ticket.decision = await self.gw.limits.admit(scope["state"], identity, tokens)
        if reserve:
            try:
                ticket.held = await self.gw.budgets.reserve(identity, ticket.model, tokens)
            except GatewayError:
                await self.gw.limits.settle(identity, ticket.decision, _NOTHING)
                ticket.decision = None
                raise
        if bill:
            publish_started(self.gw.usage, scope, request_id=ticket.request_id,
                            started=ticket.started, identity=identity,
                            endpoint=ticket.door.endpoint, model=ticket.model,
                            stream=ticket.stream, tokens=tokens)

    def listed(self, ticket: Ticket) -> None:
        """A model listing ends here: it costs a request, records no usage."""
        _done(ticket, "settled")

    async def release(self, ticket: Ticket) -> None:
        held, ticket.held = ticket.held, []
        await self.gw.budgets.release(held)

    async def refuse(self, ticket: Ticket, send: Send, exc: GatewayError) -> None:
        """Answer a refusal in the door's shape; release what is held; record
        the refusal if the caller is known."""
        await self.release(ticket)
        if ticket.decision is not None and ticket.identity is not None:
            await self.gw.limits.settle(ticket.identity, ticket.decision, _NOTHING)
            ticket.decision = None
        await send_json_error(send, exc.status, ticket.door.error_body(exc), exc.retry_after)
        await self.record(ticket, status=exc.status, error=exc.code or exc.type or "")
        _done(ticket, "refused")

    async def settle(self, ticket: Ticket, outcome: Outcome, *, status: int,
                     body_size: int = 0, cached: bool = False) -> None:
        """After the answer: usage recorded, reservation released, TPM settled
        with the usage sniffed from the response (an unknown usage keeps the
        estimate)."""
        await self.record(ticket, status=status, outcome=outcome, body_size=body_size,
                          cached=cached)
        await self.release(ticket)
        if ticket.identity is not None and ticket.decision is not None:
            await self.gw.limits.settle(ticket.identity, ticket.decision, outcome.usage)
            ticket.decision = None
        _done(ticket, "settled")

    async def record(self, ticket: Ticket, *, status: int, outcome: Outcome | None = None,
                     body_size: int = 0, error: str = "", cached: bool = False) -> None:
        if ticket.recorded or ticket.identity is None:
            return
        ticket.recorded = True
        ticket.steps.append("record")
        if ticket.scope.get("state", {}).get("usage_unavailable"):
            # The client got a 503 instead of this answer (holdend.py); the
            # upstream call was still made, so its tokens are billed.
            status, error = 503, "usage_unavailable"
        await self.gw.usage.finished(
            request_id=ticket.request_id, started=ticket.started, identity=ticket.identity,
            endpoint=ticket.door.endpoint, model=ticket.model, stream=ticket.stream,
            status=status, outcome=outcome, body_size=body_size, error=error, cached=cached)
        # Stored: the answer may end now, before the bookkeeping that follows.
        await release_response(ticket.scope)
