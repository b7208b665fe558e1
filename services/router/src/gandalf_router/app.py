"""The router: picks a target for each request and fails over before the
first byte reached the client (invariant 2)."""

from __future__ import annotations

import asyncio
import logging
import os
import time

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from gandalf_common import contract
from gandalf_common.bus import serve_pings, unsubscribe_all
from gandalf_common.config import GatewayConfig
from gandalf_common.contract import (
    CODE_CLIENT_GONE,
    Cancel,
    ErrorReply,
    ExecRequest,
    Failed,
    Pong,
    RouteRequest,
    Started,
    ctl_decoder,
    encode,
    route_decoder,
)
from gandalf_common.errors import ModelNotFoundError

from .routing import RouteTable, verdict

log = logging.getLogger("gandalf.router")


class RouterService:
    def __init__(self, cfg: GatewayConfig) -> None:
        self.table = RouteTable(cfg)
        self._nc: NATS | None = None
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, nc: NATS) -> None:
        self._nc = nc
        self._subs.append(await nc.subscribe(
            contract.ROUTER_WILDCARD, queue=contract.ROUTER_QUEUE, cb=self._on_request,
            pending_msgs_limit=65536, pending_bytes_limit=256 * 1024 * 1024))
        pong = encode(Pong(service="router", pid=os.getpid()))
        self._subs.append(await serve_pings(nc, contract.PING_ROUTER, contract.ROUTER_QUEUE,
                                            pong))

    async def _on_request(self, msg: Msg) -> None:
        if not msg.reply:
            return
        req = route_decoder.decode(msg.data)
        task = asyncio.create_task(self._route(req, msg.reply), name=req.request_id)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _route(self, req: RouteRequest, reply_to: str) -> None:
        nc = self._nc
        assert nc is not None
        targets = self.table.targets(req.model)
        if targets is None:
            err = ModelNotFoundError(req.model)
            await nc.publish(reply_to, encode(ErrorReply(
                status=404, type="invalid_request_error", code=err.code, message=err.message)))
            return
        kind = req.native.kind if req.native is not None else ""
        able = self.table.able(targets, req.op, kind)
        if targets and not able:
            what = f"the {kind} API" if kind else f"the {req.op} operation"
            await nc.publish(reply_to, encode(ErrorReply(
                status=400, type="invalid_request_error", code="unsupported",
                message=f"no provider of model {req.model!r} supports {what}")))
            return
        targets = able
        failures: list[Failed] = []
        attempt = 0
        for attempt, target in enumerate(targets):
            remaining = req.deadline - time.time() if req.deadline else 300.0
            if remaining <= 0:
                failures.append(Failed(attempt=attempt, status=504, type="timeout_error",
                                       code="deadline_exceeded",
                                       message="request deadline exceeded"))
                break
            exec_req = ExecRequest(route=req, provider=target.provider,
                                   target_model=target.model, reply_to=reply_to,
                                   attempt=attempt)
            try:
                resp = await nc.request(contract.provider_subject(target.provider, req.op),
                                        encode(exec_req), timeout=remaining)
            except NoRespondersError:
                failures.append(Failed(attempt=attempt, status=503, code="no_worker",
                                       message=f"no worker is serving provider "
                                               f"{target.provider}"))
                continue
            except (TimeoutError, NatsTimeoutError):
                # Make sure a late start cannot mix with anything else.
                await nc.publish(contract.CANCEL, encode(Cancel(request_id=req.request_id,
                                                                attempt=attempt)))
                failures.append(Failed(attempt=attempt, status=504, type="timeout_error",
                                       code="deadline_exceeded",
                                       message=f"{target.provider}: no response before the "
                                               "request deadline"))
                break
            ctl = ctl_decoder.decode(resp.data)
            if isinstance(ctl, Started) or ctl.code == CODE_CLIENT_GONE:
                return  # served, or nobody is waiting any more
            failures.append(ctl)
            if not ctl.retryable:
                break
            log.info("target %s/%s failed (%s), trying next", target.provider, target.model,
                     ctl.message)
        await nc.publish(reply_to, encode(verdict(failures, attempts=attempt + 1)))

    async def stop(self, timeout: float) -> None:
        await unsubscribe_all(self._subs)
        if self._tasks:
            log.info("router: waiting for %d requests in flight", len(self._tasks))
            _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                log.warning("router: request %s still waiting at shutdown", task.get_name())
                task.cancel()
