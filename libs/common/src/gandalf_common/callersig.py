"""Signed caller identity on admin calls.

The ingress authenticates ``/admin/v1/*`` callers and forwards the call over
NATS; the admin service authorizes with the ``Caller`` in the message. Being
able to publish on the bus must not be enough to claim to be an admin, so the
ingress signs each call with a secret it shares with the admin service only
(``GANDALF_BUS_SECRET``; ``gandalf up`` generates one into its state
directory), and the admin refuses unsigned, forged, stale or replayed calls.

The signature covers the reply subject too: a captured call replayed with
another reply inbox fails verification, so its answer (say, a new key's
secret) can only go back to the ingress that asked.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import time

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError

from .contract import AdminRequest, encode
from .startup import StartupError

__all__ = ["BUS_SECRET_ENV", "MAX_SKEW_S", "BusSecretError", "CallerSigner", "call_admin",
           "load_bus_secret"]

BUS_SECRET_ENV = "GANDALF_BUS_SECRET"
#: How old (or how far in the future) a signed call may be.
MAX_SKEW_S = 30.0
_MIN_SECRET_CHARS = 32


class BusSecretError(StartupError):
    """The bus secret is missing or too short where it is needed."""


def load_bus_secret(*, required: bool) -> bytes | None:
    """``GANDALF_BUS_SECRET`` as bytes; None when unset and not ``required``."""
    value = os.environ.get(BUS_SECRET_ENV, "")
    if not value:
        if required:
            raise BusSecretError(
                f"{BUS_SECRET_ENV} is not set: the ingress and the admin service need the "
                "same secret (at least 32 characters) when they run as separate processes; "
                "`gandalf up` and `gandalf node` set one up themselves")
        return None
    if len(value) < _MIN_SECRET_CHARS:
        raise BusSecretError(f"{BUS_SECRET_ENV} is too short: use at least "
                             f"{_MIN_SECRET_CHARS} random characters")
    return value.encode()


class CallerSigner:
    """Signs admin calls (ingress) and verifies them (admin service)."""

    def __init__(self, secret: bytes, *, max_skew_s: float = MAX_SKEW_S) -> None:
        self._secret = secret
        self._max_skew_s = max_skew_s
        # request id -> when it may be forgotten (it is stale by then anyway).
        self._seen: dict[str, float] = {}

    def _mac(self, request: AdminRequest, reply: str, signed_at: float) -> str:
        signed = msgspec.msgpack.encode([
            request.request_id, request.method, request.path, request.query,
            hashlib.sha256(request.body).digest(), encode(request.caller), reply, signed_at])
        return hmac.new(self._secret, signed, hashlib.sha256).hexdigest()

    def sign(self, request: AdminRequest, reply: str, now: float | None = None) -> AdminRequest:
        signed_at = time.time() if now is None else now
        return msgspec.structs.replace(request, signed_at=signed_at,
                                       signature=self._mac(request, reply, signed_at))

    def verify(self, request: AdminRequest, reply: str, now: float | None = None) -> str | None:
        """None when the call is genuine and fresh, else why it is refused."""
        if not request.signature:
            return "unsigned admin call"
        unsigned = msgspec.structs.replace(request, signed_at=0.0, signature="")
        if not hmac.compare_digest(self._mac(unsigned, reply, request.signed_at),
                                   request.signature):
            return "bad signature on admin call"
        now = time.time() if now is None else now
        if abs(now - request.signed_at) > self._max_skew_s:
            return "stale admin call"
        if request.request_id in self._seen:
            return "replayed admin call"
        if len(self._seen) > 10_000:
            self._seen = {k: t for k, t in self._seen.items() if t > now}
        self._seen[request.request_id] = now + 2 * self._max_skew_s
        return None


async def call_admin(nc: NATS, subject: str, request: AdminRequest, signer: CallerSigner,
                     timeout: float) -> bytes:
    """Send a signed admin call and return the answer's payload. Raises
    ``NoRespondersError`` when no admin service listens and ``TimeoutError``."""
    # An inbox of our own: its name is part of what is signed.
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, max_msgs=1)
    try:
        await nc.publish(subject, encode(signer.sign(request, inbox)), reply=inbox)
        try:
            msg = await sub.next_msg(timeout=timeout)
        except Exception as exc:  # nats-py's own TimeoutError
            raise TimeoutError("the admin service did not answer in time") from exc
        if msg.headers and msg.headers.get("Status") == "503" and not msg.data:
            raise NoRespondersError
        return msg.data
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
