"""Native provider APIs on the ingress: ``/v1/messages`` (Anthropic),
``/v1beta/models/*`` (Gemini), ``/openai/deployments/*`` (Azure) and
``/api/*`` (Ollama), through the same pipeline as the universal API: auth,
model allowlist, routing with failover, usage.

The model in the body or URL is a gateway alias; the worker rewrites it to
the target's real model and adds the provider's credentials. The client's
gateway key never leaves the ingress: only an allowlist of headers travels.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

import msgspec

from gandalf_common import contract
from gandalf_common.bus import inline_limit
from gandalf_common.contract import NativeCall, RouteRequest
from gandalf_common.errors import (
    BadRequestError,
    GatewayError,
    ModelNotFoundError,
    PayloadTooLargeError,
)

from .auth import Identity
from .body_policy import decode_body
from .doors import NativeDoor
from .handlers import Gateway, Scope, _ClientGone, admit_listing, header
from .relay import NativeRelay, Receive, Send
from .usage import Outcome

if TYPE_CHECKING:
    from .pipeline import Ticket

#: Path parameters must look like model names and API actions (as the original).
_SAFE = re.compile(r"[A-Za-z0-9._-]{1,128}")
#: The header each API's SDK sends its key in, when not ``Authorization``.
_KEY_HEADERS = {contract.KIND_ANTHROPIC: b"x-api-key", contract.KIND_GEMINI: b"x-goog-api-key",
                contract.KIND_AZURE: b"api-key"}
#: Client headers that change the upstream's behaviour and carry no secret.
_FORWARDED = {contract.KIND_ANTHROPIC: (b"anthropic-version", b"anthropic-beta")}
_OLLAMA_ACTIONS = frozenset({"chat", "generate", "embed"})


def credentials(scope: Scope, kind: str) -> str | None:
    """``Authorization``, else the API's own key header (or Gemini's ``?key=``),
    as a bearer value for the key table."""
    values = [v for k, v in scope["headers"] if k == b"authorization"]
    if len(values) > 1:
        raise BadRequestError("more than one Authorization header", code="duplicate_header")
    if values:
        return str(values[0].decode("latin-1"))
    name = _KEY_HEADERS.get(kind)
    value = header(scope, name) if name else None
    if value is None and kind == contract.KIND_GEMINI:
        value = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"))).get("key")
    return f"Bearer {value}" if value else None


class NativeEndpoint:
    """One native API through the admission pipeline (``pipeline.py``);
    ``_target`` gives (model, action, stream) from its path and body."""

    def __init__(self, gateway: Gateway, kind: str) -> None:
        self.gw = gateway
        self.kind = kind
        self.door = NativeDoor(kind)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw = self.gw
        adm = gw.admission
        ticket = adm.open(scope, self.door)
        body = b""
        try:
            identity = await adm.authenticate(ticket, scope)
            body = await gw.read(scope, receive, gw.max_body)
            req, data = self._route_request(scope, identity, body, ticket.request_id)
            req = await self.prepare(req, data, identity)
            ticket.model, ticket.stream = req.model, req.stream
            adm.check_budget(ticket)
            # No cache on the native doors: their bodies pass through unchanged.
            assert req.native is not None
            await adm.admit(ticket, scope, self.door.estimate(req.native.action, data, body))
            if gw.relay is None:
                raise GatewayError("gateway is starting", status=503)
            if len(body) > inline_limit(gw.relay.nc):
                if gw.bodies is None:
                    raise PayloadTooLargeError("request body too large for the message bus")
                await gw.bodies.put(ticket.request_id, body)
                req = msgspec.structs.replace(req, body=b"", body_ref=ticket.request_id)
        except _ClientGone:
            await adm.release(ticket)
            return
        except GatewayError as exc:
            ticket.stream = False
            await adm.refuse(ticket, send, exc)
            return
        outcome = Outcome()
        status = await NativeRelay(gw.relay)(req, send, receive, outcome,
                                             on_end=self.on_end(ticket))
        await adm.settle(ticket, outcome, status=status, body_size=len(body))
        if req.body_ref and gw.bodies is not None:
            await gw.bodies.delete(req.body_ref)

    async def prepare(self, req: RouteRequest, data: dict[str, Any],
                      identity: Identity) -> RouteRequest:
        """A door's own checks and routing constraints (none by default)."""
        return req

    def on_end(self, ticket: Ticket) -> Callable[[Outcome], Awaitable[None]] | None:
        """What to do once the answer is in, before the client sees its end."""
        return None

    def _route_request(self, scope: Scope, identity: Identity, body: bytes,
                       request_id: str) -> tuple[RouteRequest, dict[str, Any]]:
        data = _object(body)
        model, action, stream = self._target(scope, data)
        if not model:
            raise BadRequestError("model is required", code="missing_model", param="model")
        identity.check_model(model)
        if model not in self.gw.aliases:
            raise ModelNotFoundError(model)
        query = ""
        if self.kind == contract.KIND_GEMINI:
            pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"))
            query = urlencode([(k, v) for k, v in pairs if k != "key"])
        forwarded = [(k.decode(), v.decode("latin-1")) for k, v in scope["headers"]
                     if k in _FORWARDED.get(self.kind, ())]
        return RouteRequest(
            request_id=request_id, op=contract.OP_NATIVE, model=model, body=body,
            stream=stream, deadline=time.time() + self.gw.write_timeout,
            key_id=identity.key_id, org_id=identity.org_id,
            team_id=identity.team_id, user_id=identity.user_id,
            native=NativeCall(kind=self.kind, action=action, query=query,
                              headers=forwarded)), data

    def _target(self, scope: Scope, data: dict[str, Any]) -> tuple[str, str, bool]:
        params = scope.get("path_params", {})
        if self.kind == contract.KIND_ANTHROPIC:
            action = "messages/count_tokens" if scope["path"].endswith("/count_tokens") \
                else "messages"
            return _str(data, "model"), action, data.get("stream") is True and \
                action == "messages"
        if self.kind == contract.KIND_GEMINI:
            model, _, action = str(params.get("target", "")).rpartition(":")
            if not _SAFE.fullmatch(model) or not _SAFE.fullmatch(action):
                raise BadRequestError("invalid path parameters", code="invalid_path")
            return model, action, action == "streamGenerateContent"
        if self.kind == contract.KIND_RESPONSES:
            return _str(data, "model"), "responses", data.get("stream") is True
        if self.kind == contract.KIND_AZURE:
            deployment = str(params.get("deployment", ""))
            if not _SAFE.fullmatch(deployment):
                raise BadRequestError("invalid path parameters", code="invalid_path")
            action = "embeddings" if scope["path"].endswith("/embeddings") \
                else "chat/completions"
            return deployment, action, data.get("stream") is True and \
                action == "chat/completions"
        action = str(params.get("action", ""))
        if action not in _OLLAMA_ACTIONS:
            raise GatewayError(f"unknown path {scope['path']}", status=404, code="unknown_path")
        # Ollama streams unless told not to.
        return _str(data, "model"), action, action != "embed" and data.get("stream") is not False


def _object(body: bytes) -> dict[str, Any]:
    try:
        data = decode_body(body)  # and checked (body_policy.py)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        raise BadRequestError("request body is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequestError("request body must be a JSON object", code="invalid_json")
    return data


def _str(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequestError(f"{name} must be a string", param=name, code="invalid_type")
    return value or ""


class NativeModelsEndpoint:
    """The aliases this key may call, in a native API's list format (no
    upstream call; the allowlist applies, unlike the original)."""

    def __init__(self, gateway: Gateway, kind: str) -> None:
        self.gw = gateway
        self.kind = kind
        self.door = NativeDoor(kind)
        self._created = int(time.time())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        identity = await admit_listing(self.gw, scope, send, self.door)
        if identity is None:
            return
        names = []
        for alias in sorted(self.gw.servable):
            try:
                identity.check_model(alias)
            except GatewayError:
                continue
            names.append(alias)
        body = msgspec.json.encode(self._listing(names))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    def _listing(self, names: list[str]) -> dict[str, Any]:
        if self.kind == contract.KIND_GEMINI:
            return {"models": [{"name": f"models/{n}", "displayName": n,
                                "supportedGenerationMethods": [
                                    "generateContent", "streamGenerateContent",
                                    "countTokens", "embedContent"]} for n in names]}
        if self.kind == contract.KIND_OLLAMA:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._created))
            return {"models": [{"name": n, "model": n, "modified_at": stamp, "size": 0,
                                "digest": "", "details": {}} for n in names]}
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._created))
        return {"data": [{"type": "model", "id": n, "display_name": n, "created_at": stamp}
                         for n in names],
                "has_more": False, "first_id": names[0] if names else None,
                "last_id": names[-1] if names else None}
