"""OpenAI's Responses API on the ingress: ``POST /v1/responses`` and the
stored-response actions (``GET``/``DELETE /v1/responses/{id}``,
``GET .../input_items``, ``POST .../cancel``), through the same admission
pipeline as every other door.

OpenAI-type targets get the body natively; the worker translates it to chat
for every other type (``gandalf_workers.responses_exec``). A response an
OpenAI-type target stored is bound to its creator's org and to that provider
instance (``response_owners.py``): its actions and any ``previous_response_id``
naming it go to that instance only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.errors import Error as NatsError

from gandalf_common import contract
from gandalf_common.contract import NativeCall, ResponseOwner, RouteRequest
from gandalf_common.errors import BadRequestError, GatewayError

from .auth import Identity
from .doors import NativeDoor
from .handlers import Gateway, Scope, _ClientGone
from .native import NativeEndpoint
from .pipeline import Ticket
from .relay import NativeRelay, Receive, Send
from .response_owners import ResponseOwners, check_id
from .usage import Outcome

log = logging.getLogger("gandalf.ingress")

#: Input items one request may carry (the translators check it too).
MAX_INPUT_ITEMS = 2048


def _owners(gw: Gateway) -> ResponseOwners:
    owners = gw.responses
    if owners is None:
        raise GatewayError("gateway is starting", status=503)
    return owners


class ResponsesEndpoint(NativeEndpoint):
    """``POST /v1/responses``."""

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(gateway, contract.KIND_RESPONSES)

    async def prepare(self, req: RouteRequest, data: dict[str, Any],
                      identity: Identity) -> RouteRequest:
        items = data.get("input")
        if items is None or not isinstance(items, str | list):
            raise BadRequestError("input must be a string or an array of items",
                                  param="input", code="invalid_value")
        if isinstance(items, list) and len(items) > MAX_INPUT_ITEMS:
            raise BadRequestError(f"input has {len(items)} items; at most {MAX_INPUT_ITEMS} "
                                  "are allowed", param="input", code="too_many_items")
        previous = data.get("previous_response_id")
        if previous is None:
            return req
        if not isinstance(previous, str):
            raise BadRequestError("previous_response_id must be a string",
                                  param="previous_response_id", code="invalid_type")
        check_id(previous, "previous_response_id")
        owner = await _owners(self.gw).owned(previous, identity)
        # The conversation lives on the instance that stored it; a route
        # without that instance cannot continue it (the router says so).
        assert req.native is not None
        return msgspec.structs.replace(
            req, native=msgspec.structs.replace(req.native, pin=owner.provider))

    def on_end(self, ticket: Ticket) -> Callable[[Outcome], Awaitable[None]] | None:
        identity = ticket.identity
        owners = self.gw.responses
        if identity is None or owners is None:
            return None

        async def record(outcome: Outcome) -> None:
            if not (outcome.ref and outcome.provider):
                return
            try:
                await owners.put(outcome.ref, ResponseOwner(
                    org_id=identity.org_id, key_id=identity.key_id,
                    provider=outcome.provider, model=ticket.model))
            except (NatsError, TimeoutError) as exc:
                # The answer stands; only its later retrieval will 404.
                log.warning("response owner not recorded (%s): %s", type(exc).__name__,
                            outcome.ref)

        return record


class ResponsesStoredEndpoint:
    """One action on a stored response (``action``: retrieve, delete,
    input_items, cancel), sent to the instance that stored it."""

    def __init__(self, gateway: Gateway, action: str) -> None:
        assert action in contract.RESPONSES_STORED_ACTIONS
        self.gw = gateway
        self.action = action
        self.door = NativeDoor(contract.KIND_RESPONSES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw = self.gw
        adm = gw.admission
        ticket = adm.open(scope, self.door)
        try:
            identity = await adm.authenticate(ticket, scope)
            await gw.read(scope, receive, gw.max_body)  # nothing is forwarded from it
            response_id = str(scope.get("path_params", {}).get("response_id", ""))
            owner = await _owners(gw).owned(response_id, identity)
            identity.check_model(owner.model)
            ticket.model = owner.model
            adm.check_budget(ticket)
            await adm.admit(ticket, scope, 1, reserve=False)
            if gw.relay is None:
                raise GatewayError("gateway is starting", status=503)
        except _ClientGone:
            await adm.release(ticket)
            return
        except GatewayError as exc:
            await adm.refuse(ticket, send, exc)
            return
        query = scope.get("query_string", b"").decode("latin-1") \
            if self.action in ("retrieve", "input_items") else ""
        req = RouteRequest(
            request_id=ticket.request_id, op=contract.OP_NATIVE, model=owner.model,
            deadline=time.time() + gw.write_timeout, key_id=identity.key_id,
            org_id=identity.org_id, team_id=identity.team_id, user_id=identity.user_id,
            native=NativeCall(kind=contract.KIND_RESPONSES, action=self.action,
                              query=query, ref=response_id, pin=owner.provider))
        outcome = Outcome()
        status = await NativeRelay(gw.relay)(req, send, receive, outcome)
        if status == 404 or (status == 200 and self.action == "delete"):
            await _owners(gw).forget(response_id)
        await adm.settle(ticket, outcome, status=status)


def responses_routes(gateway: Gateway) -> list[Any]:
    from starlette.routing import Route

    base = "/v1/responses/{response_id}"
    return [
        Route("/v1/responses", ResponsesEndpoint(gateway), methods=["POST"]),
        Route(base, ResponsesStoredEndpoint(gateway, "retrieve"), methods=["GET"]),
        Route(base, ResponsesStoredEndpoint(gateway, "delete"), methods=["DELETE"]),
        Route(base + "/input_items", ResponsesStoredEndpoint(gateway, "input_items"),
              methods=["GET"]),
        Route(base + "/cancel", ResponsesStoredEndpoint(gateway, "cancel"), methods=["POST"]),
    ]
