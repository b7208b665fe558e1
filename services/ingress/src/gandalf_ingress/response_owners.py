"""Owners of stored Responses API responses, in a NATS KV bucket.

Why KV and not PostgreSQL: the ingress already holds a NATS connection (and
no database connection), a lookup is by one key, and the bucket's TTL
expires entries as OpenAI expires the responses themselves. A response is
visible only to the org that created it (to the key itself when the key has
no org); anyone else gets the 404 an unknown id gets.
"""

from __future__ import annotations

import asyncio
import re

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue

from gandalf_common.contract import RESPONSES_BUCKET, RESPONSES_TTL, ResponseOwner
from gandalf_common.errors import BadRequestError, GatewayError

from .auth import Identity

#: What a response id may look like (also a valid KV key).
_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_decode = msgspec.json.Decoder(ResponseOwner).decode


def check_id(value: str, param: str = "response_id") -> str:
    if not _ID.fullmatch(value):
        raise BadRequestError(f"invalid {param}", param=param, code="invalid_value")
    return value


def not_found(response_id: str) -> GatewayError:
    return GatewayError(f"Response with id '{response_id}' not found.", status=404,
                        type="invalid_request_error", code="not_found")


class ResponseOwners:
    """The bucket is opened (or created) on first use, as the body store is:
    an ingress starts whether or not JetStream answers yet."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._kv: KeyValue | None = None
        self._lock = asyncio.Lock()

    async def _bucket(self) -> KeyValue:
        if self._kv is not None:
            return self._kv
        async with self._lock:
            if self._kv is None:
                js = self.nc.jetstream()
                try:
                    self._kv = await js.key_value(RESPONSES_BUCKET)
                except BucketNotFoundError:
                    self._kv = await js.create_key_value(bucket=RESPONSES_BUCKET, history=1,
                                                         ttl=RESPONSES_TTL)
            return self._kv

    async def put(self, response_id: str, owner: ResponseOwner) -> None:
        if _ID.fullmatch(response_id):
            await (await self._bucket()).put(response_id, msgspec.json.encode(owner))

    async def owned(self, response_id: str, identity: Identity) -> ResponseOwner:
        """The owner record if this caller's org created it; 404 otherwise."""
        try:
            entry = await (await self._bucket()).get(check_id(response_id))
        except KeyNotFoundError:
            raise not_found(response_id) from None
        except (NatsError, TimeoutError) as exc:
            raise GatewayError("response owners are unavailable", status=503,
                               code="owners_unavailable") from exc
        if entry.value is None:
            raise not_found(response_id)
        try:
            owner = _decode(entry.value)
        except msgspec.DecodeError:
            raise not_found(response_id) from None
        mine = (owner.org_id == identity.org_id) if owner.org_id else (
            owner.key_id == identity.key_id)
        if not mine:
            raise not_found(response_id)
        return owner

    async def forget(self, response_id: str) -> None:
        """Best effort: a record left behind only leads to the upstream's 404."""
        try:
            await (await self._bucket()).delete(response_id)
        except (NatsError, TimeoutError):
            pass
