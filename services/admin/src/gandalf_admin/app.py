"""The admin service: owns the database schema and the configuration in it,
serves ``/admin/v1/*`` over NATS (``ADMIN_HTTP``, queue ``ADMIN_QUEUE``) and
replicates every change to NATS KV, which every other service mirrors.

Start: migrate; then, under the replication lock (safe with several
replicas), bootstrap the YAML and fully sync DB -> KV, so KV equals the
database after every start; then answer requests.
"""

from __future__ import annotations

import asyncio
import logging
import os

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from gandalf_common import contract
from gandalf_common.bus import ENVELOPE_RESERVE, serve_pings, unsubscribe_all
from gandalf_common.callersig import CallerSigner, load_bus_secret
from gandalf_common.config import GatewayConfig
from gandalf_common.contract import AdminRequest, AdminResponse, Pong, encode
from gandalf_common.crypto import SecretBox, SecretError
from gandalf_common.kv import ensure_buckets
from gandalf_common.logsafe import clean
from gandalf_common.pg import migrate
from gandalf_common.records import CONFIG_BUCKET, KEYS_BUCKET

from .bootstrap import BootstrapError, bootstrap, check_secrets
from .deps import Deps
from .errors import ApiError, from_db_error, internal
from .openapi import admin_openapi
from .replicate import Replicator
from .routes import dispatch
from .store import Store
from .wire import Request, error_response, parse_query

log = logging.getLogger("gandalf.admin")


async def open_buckets(nc: NATS, keys_bucket: str, config_bucket: str
                       ) -> dict[str, KeyValue]:
    """The replication buckets (created when missing); other names are for tests."""
    if (keys_bucket, config_bucket) == (KEYS_BUCKET, CONFIG_BUCKET):
        return await ensure_buckets(nc)
    js = nc.jetstream()
    out: dict[str, KeyValue] = {}
    for bucket in (keys_bucket, config_bucket):
        try:
            out[bucket] = await js.key_value(bucket)
        except BucketNotFoundError:
            out[bucket] = await js.create_key_value(bucket=bucket, history=1)
    return out


class AdminService:
    def __init__(self, cfg: GatewayConfig, dsn: str, *, box: SecretBox | None = None,
                 subject: str = contract.ADMIN_HTTP, keys_bucket: str = KEYS_BUCKET,
                 config_bucket: str = CONFIG_BUCKET, signer: CallerSigner | None = None
                 ) -> None:
        """``signer`` defaults to one keyed with ``GANDALF_BUS_SECRET``; ``box``
        defaults to ``SecretBox.from_env()``; ``subject`` and the
        bucket names exist so tests can run beside other admin services."""
        self.cfg = cfg
        self.dsn = dsn
        self.subject = subject
        self.keys_bucket = keys_bucket
        self.config_bucket = config_bucket
        self._box = box
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.store: Store | None = None
        self.repl: Replicator | None = None
        self.deps: Deps | None = None
        self._nc: NATS | None = None
        self._signer = signer

    async def start(self, nc: NATS) -> None:
        self._nc = nc
        if self._signer is None:
            secret = load_bus_secret(required=True)
            assert secret is not None
            self._signer = CallerSigner(secret)
        pong = encode(Pong(service="admin", pid=os.getpid()))
        if not self.dsn:
            log.warning("no database configured (database.url): the admin API answers 503")
            self._subs.append(await nc.subscribe(self.subject, queue=contract.ADMIN_QUEUE,
                                                 cb=self._on_request))
            self._subs.append(await serve_pings(nc, contract.PING_ADMIN, "admin", pong))
            self._subs.append(await self._serve_openapi(nc))
            return
        try:
            box = self._box or SecretBox.from_env()
        except SecretError as exc:
            raise BootstrapError(str(exc)) from None
        check_secrets(self.cfg, box)  # fail before touching anything
        applied = await migrate(self.dsn)
        log.info("database schema up to date (applied: %s)", ", ".join(applied) or "none")
        self.store = store = await Store.open(self.dsn)
        try:
            kv = await open_buckets(nc, self.keys_bucket, self.config_bucket)
            self.repl = Replicator(store, kv, keys_bucket=self.keys_bucket,
                                   config_bucket=self.config_bucket,
                                   connected=lambda: nc.is_connected)
            async with store.locked() as conn:
                await bootstrap(conn, self.cfg, box)
                await self.repl.sync_locked(conn)
        except BaseException:
            await store.close()
            self.store = None
            raise
        self.deps = Deps(cfg=self.cfg, store=store, repl=self.repl, box=box, nc=nc)
        self._subs.append(await nc.subscribe(self.subject, queue=contract.ADMIN_QUEUE,
                                             cb=self._on_request))
        self._subs.append(await serve_pings(nc, contract.PING_ADMIN, "admin", pong))
        self._subs.append(await self._serve_openapi(nc))

    @staticmethod
    async def _serve_openapi(nc: NATS) -> Subscription:
        document = msgspec.json.encode(admin_openapi())

        async def answer(msg: Msg) -> None:
            await msg.respond(document)

        return await nc.subscribe(contract.ADMIN_OPENAPI, cb=answer)

    async def stop(self, timeout: float) -> None:
        await unsubscribe_all(self._subs)
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for task in pending:
                task.cancel()
        if self.repl is not None:
            await self.repl.stop()
        if self.store is not None:
            await self.store.close()
            self.store = None

    # ------------------------------------------------------------ requests

    async def _on_request(self, msg: Msg) -> None:
        # nats-py runs a subscription's callbacks one at a time: hand each
        # request to its own task so a slow write does not hold up reads.
        task = asyncio.create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: Msg) -> None:
        try:
            request = contract.admin_request_decoder.decode(msg.data)
        except Exception:  # noqa: BLE001 - a malformed message gets a 400, not silence
            response = error_response(ApiError(400, "malformed admin request",
                                               code="invalid_request"))
        else:
            refused = self._signer.verify(request, msg.reply) if self._signer else "no bus secret"
            if refused is None:
                response = await self.handle(request)
            else:
                # Whoever sent it can publish on the bus but is not the ingress.
                # %r: these came off the bus unauthenticated; no log forging.
                log.warning("admin call refused: %s (request %r, %r %r)", refused,
                            request.request_id, request.method, request.path)
                response = error_response(ApiError(401, f"admin call refused: {refused}",
                                                   code="unauthenticated"))
        if msg.reply and self._nc is not None:
            await self._nc.publish(msg.reply, encode(response))

    async def handle(self, request: AdminRequest) -> AdminResponse:
        """One admin call, start to finish; never raises."""
        req = Request(method=request.method, path=request.path,
                      query=parse_query(request.query), body=request.body,
                      caller=request.caller, request_id=request.request_id)
        try:
            if self.deps is None:
                raise ApiError(503, "the admin API needs a database (database.url)",
                               code="admin_unavailable")
            response = await dispatch(req, self.deps)
        except ApiError as exc:
            response = error_response(exc)
        except Exception as exc:
            mapped = from_db_error(exc)
            if mapped.status >= 500:
                log.exception("admin %s %s failed (request %s)", clean(req.method),
                              clean(req.path), clean(req.request_id))
            response = error_response(mapped)
        response = self._fits(response)
        c = req.caller
        log.info("admin %s %s -> %d (request %s, caller %s/%s/%s via %s)", req.method,
                 req.path, response.status, req.request_id, c.org_id, c.role,
                 c.key_id or c.user_id or "-", c.auth)
        return response

    def _fits(self, response: AdminResponse) -> AdminResponse:
        """A reply must fit one NATS message; a huge page says so."""
        limit = (self._nc.max_payload if self._nc is not None else 1 << 20) - ENVELOPE_RESERVE
        if len(response.body) <= limit:
            return response
        err = internal()
        err.message = "response too large for one message: ask for a smaller limit"
        err.code = "response_too_large"
        return error_response(err)
