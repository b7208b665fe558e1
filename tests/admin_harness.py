"""Start the admin service on real NATS and a fresh Postgres database, and
talk to it the way the ingress does: ``AdminRequest`` over NATS.

    async with admin_service(nats_url, fresh_pg_dsn, cfg) as admin:
        status, body = await admin.call("POST", "/admin/v1/keys", body={"name": "ci"})
        records = await admin.kv_keys()  # what every service mirrors

By default the service is *isolated*: its own request subject and its own
KV buckets (deleted on exit), so tests never see another admin service on
the shared NATS. ``isolated=False`` uses the real ``ADMIN_HTTP`` subject and
the real buckets (``gandalf_keys``/``gandalf_config``), for end-to-end tests
with an ingress and ``LiveConfig``; such tests must not run concurrently.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
from nats.aio.client import Client as NATS

from gandalf_admin.app import AdminService
from gandalf_admin.replicate import snapshot
from gandalf_common import contract
from gandalf_common.bus import connect
from gandalf_common.callersig import CallerSigner, call_admin, load_bus_secret
from gandalf_common.config import GatewayConfig
from gandalf_common.contract import AdminRequest, AdminResponse, Caller
from gandalf_common.crypto import SecretBox, generate_key, parse_key
from gandalf_common.records import CONFIG_BUCKET, KEYS_BUCKET, KeyRecord, key_decoder

#: A fixed encryption key for tests (so a second service can open the secrets).
TEST_ENCRYPTION_KEY = generate_key()

GLOBAL_ADMIN = Caller(key_id="k-global-admin", org_id="default", role="admin")


def caller(role: str, org_id: str = "default", *, key_id: str = "", user_id: str = "",
           team_id: str = "", auth: str = "apikey") -> Caller:
    return Caller(key_id=key_id or f"k-{role}-{org_id}", org_id=org_id, role=role,
                  user_id=user_id, team_id=team_id, auth=auth)


def _admin_request(method: str, path: str, body: Any, query: str,
                   caller: Caller) -> AdminRequest:
    if body is None:
        raw = b""
    elif isinstance(body, bytes):
        raw = body
    else:
        raw = msgspec.json.encode(body)
    return AdminRequest(request_id=uuid.uuid4().hex, method=method, path=path, query=query,
                        body=raw, caller=caller)


class AdminClient:
    """Sends admin calls over NATS and reads what the service replicated."""

    def __init__(self, nc: NATS, service: AdminService, dsn: str) -> None:
        self.nc = nc
        self.service = service
        self.dsn = dsn
        self.subject = service.subject
        self.keys_bucket = service.keys_bucket
        self.config_bucket = service.config_bucket

    async def request(self, method: str, path: str, *, body: Any = None, query: str = "",
                      caller: Caller = GLOBAL_ADMIN, timeout: float = 10.0) -> AdminResponse:
        req = _admin_request(method, path, body, query, caller)
        # Signed as the ingress signs: the admin refuses unsigned calls.
        signer = CallerSigner(load_bus_secret(required=True) or b"")
        answer = await call_admin(self.nc, self.subject, req, signer, timeout)
        return contract.admin_response_decoder.decode(answer)

    async def direct(self, method: str, path: str, *, body: Any = None, query: str = "",
                     caller: Caller = GLOBAL_ADMIN) -> AdminResponse:
        """The same call without NATS (bodies over max_payload, NATS down)."""
        return await self.service.handle(_admin_request(method, path, body, query, caller))

    async def call(self, method: str, path: str, *, body: Any = None, query: str = "",
                   caller: Caller = GLOBAL_ADMIN) -> tuple[int, Any]:
        """(status, decoded JSON body or None)."""
        resp = await self.request(method, path, body=body, query=query, caller=caller)
        return resp.status, (msgspec.json.decode(resp.body) if resp.body else None)

    async def member(self, org_id: str = "default", *, user_id: str = "", team_id: str = "",
                     role: str = "member", **fields: Any) -> Caller:
        """A caller authenticated with a real key (created by the global admin):
        members' key writes are bounded by the key they authenticate with."""
        body: dict[str, Any] = {"org_id": org_id, "role": role, **fields}
        if user_id:
            body["user_id"] = user_id
        if team_id:
            body["team_id"] = team_id
        status, key = await self.call("POST", "/admin/v1/keys", body=body)
        assert status == 201, key
        return Caller(key_id=key["id"], org_id=org_id, role=role, user_id=user_id,
                      team_id=team_id)

    # ------------------------------------------------------------ KV

    async def kv(self, bucket: str) -> dict[str, bytes]:
        js = self.nc.jetstream()
        return await snapshot(await js.key_value(bucket))

    async def kv_keys(self) -> dict[str, KeyRecord]:
        """The keys bucket: key hash -> KeyRecord."""
        return {k: key_decoder.decode(v) for k, v in (await self.kv(self.keys_bucket)).items()}

    async def kv_config(self) -> dict[str, bytes]:
        """The config bucket: ``org.<token>`` ... -> msgpack record."""
        return await self.kv(self.config_bucket)

    # ------------------------------------------------------------ DB

    @contextlib.asynccontextmanager
    async def db(self) -> AsyncIterator[asyncpg.Connection]:
        conn = await asyncpg.connect(self.dsn)
        try:
            yield conn
        finally:
            await conn.close()

    def twin(self, cfg: GatewayConfig | None = None) -> AdminService:
        """Another (unstarted) replica on the same database, subject and buckets."""
        return AdminService(cfg or self.service.cfg, self.dsn, box=self.service._box,
                            subject=self.subject, keys_bucket=self.keys_bucket,
                            config_bucket=self.config_bucket)


def box_for(encryption_key: str | None) -> SecretBox | None:
    return SecretBox(parse_key(encryption_key)) if encryption_key else None


@contextlib.asynccontextmanager
async def admin_service(nats_url: str, dsn: str, cfg: GatewayConfig | None = None, *,
                        isolated: bool = True,
                        encryption_key: str | None = TEST_ENCRYPTION_KEY,
                        start: bool = True) -> AsyncIterator[AdminClient]:
    """An AdminService on ``dsn`` (a fresh database) and a client for it.

    ``encryption_key=None`` leaves the key to ``GANDALF_ENCRYPTION_KEY``.
    ``start=False`` hands back the client before ``start`` (call
    ``await client.service.start(client.nc)`` yourself, e.g. to expect a failure).
    """
    nc = await connect(nats_url, "admin-test")
    tag = uuid.uuid4().hex[:12]
    names: dict[str, str] = {}
    if isolated:
        names = {"subject": f"gandalf.admin.test.{tag}", "keys_bucket": f"gandalf_keys_t{tag}",
                 "config_bucket": f"gandalf_config_t{tag}"}
    service = AdminService(cfg or GatewayConfig(), dsn, box=box_for(encryption_key), **names)
    client = AdminClient(nc, service, dsn)
    try:
        if start:
            await service.start(nc)
        yield client
    finally:
        await service.stop(5.0)
        if isolated:
            js = nc.jetstream()
            for bucket in (client.keys_bucket, client.config_bucket):
                with contextlib.suppress(Exception):
                    await js.delete_key_value(bucket)
        await nc.close()


__all__ = ["CONFIG_BUCKET", "GLOBAL_ADMIN", "KEYS_BUCKET", "TEST_ENCRYPTION_KEY", "AdminClient",
           "admin_service", "caller"]
