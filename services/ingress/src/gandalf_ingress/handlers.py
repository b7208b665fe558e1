"""The OpenAI-compatible endpoints. Hot path: authenticate, read and validate
the body, check the route locally, publish, relay. No database, no upstream
call from here."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import msgspec

from gandalf_common import contract
from gandalf_common.bus import BodyStore, inline_limit
from gandalf_common.contract import RouteRequest
from gandalf_common.errors import (
    BadRequestError,
    GatewayError,
    ModelNotFoundError,
    PayloadTooLargeError,
)
from gandalf_common.live import LiveConfig
from gandalf_common.pricing import PriceBook

from .admission import RateLimits
from .auth import Authenticator, Identity
from .budgets import Budgets
from .caching import Caching, mark, serve_hit, usage_of
from .doors import OpenAIDoor
from .metrics import CLIENT_DISCONNECTS, UPSTREAM_ERRORS
from .pipeline import Admission, Door
from .relay import Receive, Relay, Send, send_json_error
from .schemas import parse_chat, parse_embeddings
from .semantic import SemanticCache, mark_semantic_hit
from .usage import Outcome, UsageRecorder

if TYPE_CHECKING:
    from .response_owners import ResponseOwners

Scope = dict[str, Any]
_json_decode = msgspec.json.Decoder().decode


class _ClientGone(Exception):
    pass


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def authorization(scope: Scope) -> str | None:
    """The Authorization header; two of them are ambiguous, so refused."""
    values = [v for k, v in scope["headers"] if k == b"authorization"]
    if len(values) > 1:
        raise BadRequestError("more than one Authorization header", code="duplicate_header")
    return values[0].decode("latin-1") if values else None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """Read the whole body, refusing more than ``limit`` bytes early."""
    length = header(scope, b"content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLargeError(f"request body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(f"request body is larger than {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_gateway_error(send: Send, exc: GatewayError) -> int:
    return await send_json_error(send, exc.status, exc.body(), exc.retry_after)


class Gateway:
    """State shared by the endpoints; built once in the app's lifespan."""

    def __init__(self, *, keys: Authenticator, live: LiveConfig, max_body: int,
                 write_timeout: float, read_timeout: float, relay: Relay | None = None,
                 bodies: BodyStore | None = None, usage: UsageRecorder | None = None,
                 budgets: Budgets | None = None, limits: RateLimits | None = None,
                 caching: Caching | None = None) -> None:
        self.keys = keys
        self.live = live
        self.usage = usage or UsageRecorder(None, PriceBook())
        self.budgets = budgets or Budgets()
        self.limits = limits or RateLimits(live.cfg, None)
        self.caching = caching or Caching(live.cfg, None)
        #: Every routed alias (others are 404), and those /v1/models lists:
        #: a route whose providers are all disabled answers 503, unlisted.
        #: Recomputed when providers or routes change (admin API, KV).
        self.aliases: set[str] = set()
        self.servable: set[str] = set()
        self._catalog()
        live.on_change(self._on_change)
        self.max_body = max_body
        self.write_timeout = write_timeout
        self.read_timeout = read_timeout
        self.relay = relay
        self.bodies = bodies
        #: The opt-in semantic cache (semantic.py); set by the app when configured.
        self.semantic: SemanticCache | None = None
        self.coalescing = live.cfg.coalescing.enabled
        #: Owners of stored Responses API responses (response_owners.py).
        self.responses: ResponseOwners | None = None
        #: The ordered admission steps every door goes through (pipeline.py).
        self.admission = Admission(self)

    async def read(self, scope: Scope, receive: Receive, limit: int) -> bytes:
        """The request body, at most ``limit`` bytes within ``read_timeout`` (408)."""
        try:
            async with asyncio.timeout(self.read_timeout):
                return await read_body(scope, receive, limit)
        except TimeoutError:
            raise GatewayError(f"request body not received within {self.read_timeout:g}s",
                               status=408, code="request_timeout") from None

    def needs_payload(self, identity: Identity) -> bool:
        """Decode the body to a dict only when the cache, a TPM limit or a budget
        reservation needs it (the estimate reads the messages)."""
        if self.caching.cache is not None or identity.budgets:
            return True
        return self.limits.limiter is not None and self.limits.limits_of(identity)[1] > 0

    def _on_change(self, kind: str, _ident: str, _value: Any) -> None:
        if kind in ("provider", "route"):
            self._catalog()

    def _catalog(self) -> None:
        live = self.live
        enabled = {name for name, p in live.providers.items() if p.enabled}
        self.aliases = set(live.routes)
        self.servable = {alias for alias, r in live.routes.items()
                         if any(t.provider in enabled for t in r.targets)}


class _ModelOnly(msgspec.Struct):
    model: str = ""


_model_decoder = msgspec.json.Decoder(_ModelOnly)


def _payload(body: bytes) -> dict[str, Any]:
    """The body as a dict for the cache key and the token estimate ({} if it
    does not decode as one: the estimate then falls back to its size)."""
    try:
        data = _json_decode(body)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _model_of(body: bytes) -> str:
    """The requested model of a body that failed validation, if readable."""
    try:
        return _model_decoder.decode(body).model if body else ""
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return ""


class ProxyEndpoint:
    """``POST /v1/chat/completions`` and ``POST /v1/embeddings`` as raw ASGI."""

    def __init__(self, gateway: Gateway, op: str) -> None:
        self.gw = gateway
        self.op = op
        self.door = OpenAIDoor(op)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw = self.gw
        adm = gw.admission
        ticket = adm.open(scope, self.door)
        request_id = ticket.request_id
        body_ref = ""
        model = ""
        body = b""
        try:
            identity = await adm.authenticate(ticket, scope)
            body = await gw.read(scope, receive, gw.max_body)
            req, coalesce = self._route_request(identity, body, request_id)
            model = ticket.model = req.model
            adm.check_budget(ticket)
            payload = _payload(body) if coalesce or gw.needs_payload(identity) else {}
            cached = gw.caching.key_for(scope, payload, model=model, stream=req.stream,
                                        key_id=identity.key_id, org_id=identity.org_id) \
                if self.op == contract.OP_CHAT and payload else None
            if coalesce and payload:
                # The cache's key is the coalescing key (same request, same answer).
                key = cached[0] if cached is not None else gw.caching.key(
                    payload, model=model, key_id=identity.key_id, org_id=identity.org_id)
                req = msgspec.structs.replace(req, coalesce_key=key)
            if cached is not None:
                ticket.steps.append("cache")
                hit = await gw.caching.get(cached[0]) if cached[1] else None
                mark(scope["state"], hit is not None)
                if hit is not None:
                    # A hit costs a request, never tokens.
                    await adm.admit(ticket, scope, 0, reserve=False)
                    await serve_hit(send, hit, stream=req.stream,
                                    include_usage=req.include_usage)
                    ticket.stream = req.stream
                    await adm.settle(ticket, Outcome(status=200, usage=usage_of(hit)),
                                     status=200, cached=True)
                    return
            # --- semantic cache (semantic.py): after the exact miss, before limits ---
            probe = await gw.semantic.lookup(
                gw.relay, scope, payload, body, model=model, stream=req.stream,
                key_id=identity.key_id, org_id=identity.org_id) \
                if gw.semantic is not None and self.op == contract.OP_CHAT else None
            if probe is not None and probe.body is not None:
                mark_semantic_hit(scope["state"])
                await adm.admit(ticket, scope, 0, reserve=False)
                await serve_hit(send, probe.body, stream=req.stream,
                                include_usage=req.include_usage)
                ticket.stream = req.stream
                await adm.settle(ticket, Outcome(status=200, usage=usage_of(probe.body)),
                                 status=200, cached=True)
                return
            # --- end semantic cache ---
            ticket.stream = req.stream
            await adm.admit(ticket, scope, self.door.estimate(self.op, payload, body))
            relay = gw.relay
            if relay is None:
                raise GatewayError("gateway is starting", status=503)
            if len(body) > inline_limit(relay.nc):
                body_ref = await self._store_body(request_id, body)
                req = msgspec.structs.replace(req, body=b"", body_ref=body_ref)
        except _ClientGone:
            await adm.release(ticket)
            return
        except GatewayError as exc:
            # Refused after authentication: still recorded (once).
            ticket.model = model or _model_of(body)
            await adm.refuse(ticket, send, exc)
            return
        outcome = Outcome()
        ticket.stream = req.stream
        if req.stream:
            status = await relay.stream(req, send, receive, outcome)
        else:
            status = await relay.unary(req, send, receive, outcome)
        await adm.settle(ticket, outcome, status=status, body_size=len(body))
        if cached is not None and status == 200 and outcome.body is not None:
            await gw.caching.store(cached[0], outcome.body, model=req.model,
                                   key_id=identity.key_id, org_id=identity.org_id)
        if probe is not None and status == 200 and outcome.body is not None:  # semantic
            await gw.semantic.store(probe, outcome.body)  # type: ignore[union-attr]
        if status == 499:
            CLIENT_DISCONNECTS.inc()
        elif status >= 500:
            UPSTREAM_ERRORS.labels(str(status)).inc()
        if body_ref and gw.bodies is not None:
            await gw.bodies.delete(body_ref)

    def _route_request(self, identity: Identity, body: bytes,
                       request_id: str) -> tuple[RouteRequest, bool]:
        """The route request, and whether it may be coalesced (a deterministic,
        non-streaming chat with coalescing on)."""
        stream = False
        include_usage = False
        coalesce = False
        if self.op == contract.OP_CHAT:
            chat = parse_chat(body)
            model = chat.model
            stream = bool(chat.stream)
            include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
            coalesce = self.gw.coalescing and not stream and self.gw.caching.deterministic(
                n=chat.n, seed=chat.seed, temperature=chat.temperature)
        else:
            model = parse_embeddings(body).model
        identity.check_model(model)
        if model not in self.gw.aliases:
            raise ModelNotFoundError(model)
        return RouteRequest(
            request_id=request_id, op=self.op, model=model, body=body, stream=stream,
            include_usage=include_usage, deadline=time.time() + self.gw.write_timeout,
            key_id=identity.key_id, org_id=identity.org_id,
            team_id=identity.team_id, user_id=identity.user_id), coalesce

    async def _store_body(self, request_id: str, body: bytes) -> str:
        if self.gw.bodies is None:
            raise PayloadTooLargeError("request body too large for the message bus")
        try:
            await self.gw.bodies.put(request_id, body)
        except Exception as exc:
            raise GatewayError(f"cannot stage large request body: {type(exc).__name__}",
                               status=503, code="body_store_unavailable") from exc
        return request_id


async def admit_listing(gw: Gateway, scope: Scope, send: Send,
                        door: Door) -> Identity | None:
    """A model list: authenticated and it costs a request (RPM); no tokens,
    no budget, no usage event. None when refused (the answer is sent)."""
    adm = gw.admission
    ticket = adm.open(scope, door)
    try:
        identity = await adm.authenticate(ticket, scope)
        await adm.admit(ticket, scope, 0, reserve=False, bill=False)
        adm.listed(ticket)
    except GatewayError as exc:
        ticket.identity = None  # a listing records no usage
        await adm.refuse(ticket, send, exc)
        return None
    return identity


class ModelsEndpoint:
    """``GET /v1/models``: the route aliases this key may call (no upstream calls)."""

    def __init__(self, gateway: Gateway, *, anthropic: Any = None) -> None:
        self.gw = gateway
        self._door = OpenAIDoor("models")
        self._created = int(time.time())
        #: Anthropic's SDK lists models on the same path; it always sends
        #: ``anthropic-version``, which OpenAI clients never do.
        self._anthropic = anthropic

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._anthropic is not None and header(scope, b"anthropic-version") is not None:
            await self._anthropic(scope, receive, send)
            return
        identity = await admit_listing(self.gw, scope, send, self._door)
        if identity is None:
            return
        data = []
        for alias in sorted(self.gw.servable):
            try:
                identity.check_model(alias)
            except GatewayError:
                continue
            data.append({"id": alias, "object": "model", "created": self._created,
                         "owned_by": "gandalf"})
        body = msgspec.json.encode({"object": "list", "data": data})
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

