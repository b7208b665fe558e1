"""``/admin/v1/*`` on the public port: authenticated here, forwarded over
NATS to the admin service (any replica), answered as it answers.

The ingress vouches for the caller (``Caller`` in the request, signed with
the bus secret it shares with the admin service); the admin service decides
what that caller may do, with one route table.
"""

from __future__ import annotations

import logging

from nats.errors import NoRespondersError

from gandalf_common import contract
from gandalf_common.callersig import BUS_SECRET_ENV, CallerSigner, call_admin, load_bus_secret
from gandalf_common.contract import AdminRequest, admin_response_decoder
from gandalf_common.errors import GatewayError

from .handlers import Gateway, Scope, _ClientGone, authorization, send_gateway_error
from .relay import Receive, Send

#: Admin bodies are small (the original's limit); they also fit one NATS message.
MAX_ADMIN_BODY = 1024 * 1024 - 16 * 1024
ADMIN_TIMEOUT_S = 15.0

log = logging.getLogger("gandalf.ingress")


class AdminProxy:
    def __init__(self, gateway: Gateway, signer: CallerSigner | None = None) -> None:
        self.gw = gateway
        if signer is None:
            secret = load_bus_secret(required=False)
            signer = CallerSigner(secret) if secret else None
            if signer is None:
                log.warning("%s is not set: /admin/v1 answers 503 on this ingress",
                            BUS_SECRET_ENV)
        self.signer = signer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw = self.gw
        try:
            identity = await gw.keys.authenticate(authorization(scope))
            body = await gw.read(scope, receive, MAX_ADMIN_BODY)
            if gw.relay is None:
                raise GatewayError("gateway is starting", status=503)
            if self.signer is None:
                raise GatewayError(f"the admin API is off on this ingress: {BUS_SECRET_ENV} "
                                   "is not set", status=503, code="admin_unavailable")
            request = AdminRequest(
                request_id=scope["state"]["request_id"], method=scope["method"],
                path=scope["path"], query=scope.get("query_string", b"").decode("latin-1"),
                body=body, caller=identity.caller())
            try:
                answer = await call_admin(gw.relay.nc, contract.ADMIN_HTTP, request,
                                          self.signer, ADMIN_TIMEOUT_S)
            except NoRespondersError:
                raise GatewayError("the admin service is not running", status=503,
                                   code="admin_unavailable", retry_after=1) from None
            except TimeoutError:
                raise GatewayError("the admin service did not answer in time", status=504,
                                   code="admin_timeout") from None
        except _ClientGone:
            return
        except GatewayError as exc:
            await send_gateway_error(send, exc)
            return
        response = admin_response_decoder.decode(answer)
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                   for k, v in response.headers]
        if not any(k == b"content-type" for k, _ in headers) and response.body:
            headers.append((b"content-type", b"application/json"))
        await send({"type": "http.response.start", "status": response.status,
                    "headers": headers})
        await send({"type": "http.response.body", "body": response.body})
