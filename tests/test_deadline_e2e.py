"""Request deadlines across the pipeline: the ingress's deadline
(``server.write_timeout``) travels in the ``Gandalf-Deadline`` header to the
router and on to the worker (never in the body), a worker drops work that
arrives after it, and the remaining time bounds the upstream wait and retry
sleeps."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import nats.errors
import pytest

from gandalf_common import contract
from gandalf_common.bus import connect
from gandalf_common.contract import ExecRequest, RouteRequest, encode
from gandalf_common.metrics_hub import REGISTRY
from gateway_harness import TEST_KEY, UPSTREAM_KEY, free_port, pipeline

INSTANCE = "dl"


def config(port: int, upstream: str, *, write_timeout: str,
           retries: str = "{max_attempts: 1}") -> str:
    return f"""
server: {{addr: "127.0.0.1:{port}", write_timeout: {write_timeout}}}
rate_limits: {{default_rpm: 0, default_tpm: 0}}
retries: {retries}
cache: {{enabled: false}}
providers:
  - {{name: {INSTANCE}, type: openai, base_url: "{upstream}", api_key: {UPSTREAM_KEY}}}
routes:
  - model_alias: ok
    targets: [{{provider: {INSTANCE}, model: dl-ok}}]
  - model_alias: slow
    targets: [{{provider: {INSTANCE}, model: delay-4000}}]
  - model_alias: throttled
    targets: [{{provider: {INSTANCE}, model: x+fail-503+retry-after-10}}]
  - model_alias: flaky
    targets: [{{provider: {INSTANCE}, model: y+fail-503}}]
keys:
  - {{name: t, key: {TEST_KEY}, role: admin}}
"""


@asynccontextmanager
async def gateway(nats_url: str, upstream: Any, **kw: str) -> AsyncIterator[str]:
    async with pipeline(nats_url, config(free_port(), upstream.base_url, **kw)) as url:
        yield url


async def ask(url: str, model: str) -> tuple[httpx.Response, float]:
    async with httpx.AsyncClient(timeout=15) as http:
        t0 = time.monotonic()
        r = await http.post(url + "/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": "x"}]},
            headers={"authorization": f"Bearer {TEST_KEY}"})
        return r, time.monotonic() - t0


def expired_count() -> float:
    return REGISTRY.get_sample_value("gandalf_worker_expired_total",
                                     {"provider": INSTANCE}) or 0.0


async def test_the_deadline_travels_in_a_header(managed_nats_url: str, upstream: Any) -> None:
    async with gateway(managed_nats_url, upstream, write_timeout="7s") as url:
        nc = await connect(managed_nats_url, "deadline-spy")
        try:
            routed: asyncio.Queue[Any] = asyncio.Queue()
            executed: asyncio.Queue[Any] = asyncio.Queue()
            # Plain subscriptions (no queue group): copies, the services still answer.
            await nc.subscribe(contract.ROUTER_CHAT, cb=routed.put)
            await nc.subscribe(contract.provider_subject(INSTANCE, "chat"), cb=executed.put)
            await nc.flush()
            sent = time.time()
            r, _ = await ask(url, "ok")
            assert r.status_code == 200, r.text
            to_router = await asyncio.wait_for(routed.get(), 2)
            to_worker = await asyncio.wait_for(executed.get(), 2)
        finally:
            await nc.close()
    deadline = float(to_router.headers[contract.DEADLINE_HEADER])
    assert sent + 7 - 0.5 <= deadline <= sent + 7 + 1.5, deadline - sent
    # The router forwards the ingress's deadline unchanged (not a new one).
    assert to_worker.headers[contract.DEADLINE_HEADER] == to_router.headers[
        contract.DEADLINE_HEADER]
    route = contract.route_decoder.decode(to_router.data)
    assert route.model == "ok" and route.deadline == 0
    exec_req = contract.exec_decoder.decode(to_worker.data)
    assert exec_req.target_model == "dl-ok" and exec_req.route.deadline == 0
    assert exec_req.route.request_id == route.request_id


async def test_a_worker_drops_a_request_whose_deadline_has_passed(managed_nats_url: str,
                                                                   upstream: Any) -> None:
    async with gateway(managed_nats_url, upstream, write_timeout="20s"):
        nc = await connect(managed_nats_url, "deadline-client")
        try:
            replies: asyncio.Queue[Any] = asyncio.Queue()
            inbox = nc.new_inbox()
            await nc.subscribe(inbox, cb=replies.put)
            await nc.flush()

            def exec_req(request_id: str, model: str) -> bytes:
                body = json.dumps({"model": "ok", "messages": [
                    {"role": "user", "content": "x"}]}).encode()
                return encode(ExecRequest(
                    route=RouteRequest(request_id=request_id, op=contract.OP_CHAT,
                                       model="ok", body=body),
                    provider=INSTANCE, target_model=model, reply_to=inbox))

            subject = contract.provider_subject(INSTANCE, contract.OP_CHAT)
            before = expired_count()
            with pytest.raises(nats.errors.TimeoutError):
                await nc.request(subject, exec_req("expired-1", "dl-expired"), timeout=0.5,
                                 headers={contract.DEADLINE_HEADER: str(time.time() - 1)})
            assert expired_count() == before + 1
            assert replies.empty()
            assert upstream.requests == []

            # The same request with time left is served: the drop above was the deadline's.
            ctl = await nc.request(subject, exec_req("in-time-1", "dl-in-time"), timeout=5,
                                   headers={contract.DEADLINE_HEADER: str(time.time() + 5)})
            assert isinstance(contract.ctl_decoder.decode(ctl.data), contract.Started)
            done = contract.reply_decoder.decode((await asyncio.wait_for(replies.get(), 2)).data)
            assert isinstance(done, contract.Complete) and done.status == 200
            assert [r.model for r in upstream.requests] == ["dl-in-time"]
            assert expired_count() == before + 1
        finally:
            await nc.close()


async def test_a_worker_bounds_its_upstream_wait_by_the_time_left(managed_nats_url: str,
                                                                  upstream: Any) -> None:
    """Without the ingress (whose own 504 and cancel would hide it): the
    worker gives up on the upstream when the header's deadline comes."""
    async with gateway(managed_nats_url, upstream, write_timeout="20s"):
        nc = await connect(managed_nats_url, "deadline-client")
        try:
            body = json.dumps({"model": "slow", "messages": [
                {"role": "user", "content": "x"}]}).encode()
            req = ExecRequest(route=RouteRequest(request_id="bounded-1", op=contract.OP_CHAT,
                                                 model="slow", body=body),
                              provider=INSTANCE, target_model="delay-4000",
                              reply_to=nc.new_inbox())
            t0 = time.monotonic()
            ctl = await nc.request(contract.provider_subject(INSTANCE, contract.OP_CHAT),
                                   encode(req), timeout=5,
                                   headers={contract.DEADLINE_HEADER: str(time.time() + 0.8)})
            elapsed = time.monotonic() - t0
        finally:
            await nc.close()
    failed = contract.ctl_decoder.decode(ctl.data)
    assert isinstance(failed, contract.Failed), failed
    assert failed.status == 504 and failed.code == "upstream_timeout", failed
    assert 0.6 <= elapsed < 1.6, elapsed  # the deadline, not the provider's 60 s timeout
    assert await upstream.wait_closed_async(0, timeout=1.0)


async def test_the_client_gets_504_at_the_deadline_and_the_upstream_call_is_abandoned(
        managed_nats_url: str, upstream: Any) -> None:
    async with gateway(managed_nats_url, upstream, write_timeout="1s") as url:
        r, elapsed = await ask(url, "slow")
        assert r.status_code == 504, r.text
        assert 0.9 <= elapsed < 2.0, elapsed  # the deadline, not the upstream's 4 s
        err = r.json()["error"]
        assert err["type"] == "timeout_error"
        # The ingress's own 504, or the worker's (its upstream wait is bounded by
        # the same deadline), whichever comes first.
        assert err["code"] in ("timeout", "upstream_timeout"), err
        assert err["message"]
        assert [rec.model for rec in upstream.requests] == ["delay-4000"]
        # The worker hung up on the upstream rather than waiting out its 4 s.
        assert await upstream.wait_closed_async(0, timeout=1.5)
        rec = upstream.requests[0]
        assert rec.client_closed_at - rec.received_at < 2.0
        assert rec.status is None  # nothing was answered


async def test_retry_sleeps_never_outlast_the_deadline(managed_nats_url: str,
                                                       upstream: Any) -> None:
    retries = "{max_attempts: 3, base: 50ms, cap: 200ms}"
    async with gateway(managed_nats_url, upstream, write_timeout="2s", retries=retries) as url:
        # Retries are on: a plain 503 is tried three times within the deadline...
        r, elapsed = await ask(url, "flaky")
        assert r.status_code == 502 and elapsed < 1.5, (r.status_code, elapsed)
        assert [rec.model for rec in upstream.requests] == ["y+fail-503"] * 3
        upstream.clear_requests()
        # ...but a Retry-After of 10 s does not fit in a 2 s deadline: no retry,
        # no sleep; the client hears the upstream's answer at once.
        r, elapsed = await ask(url, "throttled")
        assert elapsed < 1.0, elapsed
        assert r.status_code == 502, r.text
        err = r.json()["error"]
        assert err["type"] == "api_error" and "503" in err["message"], err
        assert r.headers["retry-after"] == "10"  # the upstream's, passed on
        assert [rec.model for rec in upstream.requests] == ["x+fail-503+retry-after-10"]
