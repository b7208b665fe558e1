"""Usage is stored before the client has its answer: the moment a response
has ended (a JSON body, a stream's [DONE]), its event is in the USAGE
stream, so a process killed right after answering has billed the request.

No usage service runs here: events stay in the stream to be looked at."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
import pytest_asyncio

from gandalf_common import contract
from gandalf_common.bus import connect
from gandalf_common.contract import UsageEvent
from gandalf_common.errors import GatewayError
from gandalf_common.pricing import PriceBook
from gandalf_common.usage_stream import ensure_usage_stream
from gandalf_ingress.usage import UsagePublisher, UsageRecorder
from managed_harness import ADMIN_KEY, ManagedGateway, start_managed

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def managed(managed_nats_url: str, fresh_pg_dsn: str, mock_upstream: Any
                  ) -> AsyncIterator[ManagedGateway]:
    import nats

    nc = await nats.connect(managed_nats_url)
    try:  # this test reads the stream's newest event: no consumer, no leftovers
        await nc.jetstream().delete_stream(contract.USAGE_STREAM)
    except Exception:  # absent
        pass
    await ensure_usage_stream(nc)
    await nc.close()
    gw = await start_managed(managed_nats_url, fresh_pg_dsn, mock_upstream.base_url)
    yield gw
    await gw.close()


async def _newest_event(gw: ManagedGateway) -> dict[str, Any]:
    msg = await gw.nc.jetstream().get_last_msg(contract.USAGE_STREAM, contract.USAGE_SUBJECT)
    return json.loads(msg.data)


async def test_the_event_is_stored_when_the_answer_arrives(managed: ManagedGateway) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(timeout=30) as http:
        for i in range(20):
            r = await http.post(f"{managed.url}/v1/chat/completions", headers=headers,
                                json={**body, "user": f"u{i}"})
            assert r.status_code == 200, r.text
            # No wait at all: the event must already be there.
            event = await _newest_event(managed)
            assert event["request_id"] == r.headers["x-request-id"], i
        for i in range(10):
            async with http.stream("POST", f"{managed.url}/v1/chat/completions",
                                   headers=headers,
                                   json={**body, "stream": True, "user": f"s{i}"}) as r:
                assert r.status_code == 200
                request_id = r.headers["x-request-id"]
                async for line in r.aiter_lines():
                    if line == "data: [DONE]":
                        event = await _newest_event(managed)
                        assert event["request_id"] == request_id, i
                        break
                else:
                    pytest.fail("no [DONE]")
        # A client's X-Request-Id is echoed, never the usage key: reusing one
        # bills every request.
        seen = set()
        for _ in range(2):
            r = await http.post(f"{managed.url}/v1/chat/completions",
                                headers={**headers, "x-request-id": "same-id"}, json=body)
            assert r.status_code == 200 and r.headers["x-request-id"] == "same-id"
            event = await _newest_event(managed)
            assert event["request_id"] == r.headers["x-gandalf-request-id"]
            seen.add(event["request_id"])
        assert len(seen) == 2
        # A refusal is answered and billed the same way (a request, no tokens).
        r = await http.post(f"{managed.url}/v1/chat/completions", headers=headers,
                            json={**body, "model": "no-such-model"})
        assert r.status_code == 404
        event = await _newest_event(managed)
        assert event["request_id"] == r.headers["x-request-id"]
        assert event["status"] == 404


async def test_without_an_ack_the_event_is_kept_and_stored_later(own_nats: Any) -> None:
    """NATS gone when a response ends: the answer is not held past the bound,
    the event waits in memory (counted) and is stored once NATS is back."""
    nc = await connect(own_nats.url, "durable-test")
    publisher = UsagePublisher(nc)
    await publisher.start()
    try:
        event = UsageEvent(request_id="held-1", ts=time.time(), org_id="default",
                           key_id="k", endpoint="chat", model="m", status=200)
        assert await publisher.record_durably(event, wait=2.0)
        await asyncio.to_thread(own_nats.stop)
        t0 = time.monotonic()
        later = msgspec.structs.replace(event, request_id="held-2")
        assert not await publisher.record_durably(later, wait=1.0)
        assert time.monotonic() - t0 < 3.0
        assert publisher.backlog == 1
        # At the bound, new requests are refused rather than piling events up.
        recorder = UsageRecorder(publisher, PriceBook())
        recorder.admit()
        publisher.backlog_limit = 1
        with pytest.raises(GatewayError) as refused:
            recorder.admit()
        assert refused.value.status == 503 and refused.value.code == "usage_backlog"
        await asyncio.to_thread(own_nats.start)
        deadline = time.monotonic() + 20
        while publisher.backlog and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert publisher.backlog == 0
        recorder.admit()
        msg = await nc.jetstream().get_last_msg(contract.USAGE_STREAM, contract.USAGE_SUBJECT)
        assert json.loads(msg.data)["request_id"] == "held-2"
    finally:
        await publisher.stop(2.0)
        await nc.close()



async def test_durable_publishes_open_no_subscription_per_event(own_nats: Any) -> None:
    """Each durable publish waits for its ack on the process's one JetStream
    reply inbox: 300 events leave the connection's subscriptions as they were
    (a context per publish subscribed an inbox each time and never let go:
    ~15 % of the gateway's CPU per request, and memory growing with traffic)."""
    nc = await connect(own_nats.url, "durable-subs")
    await ensure_usage_stream(nc)
    publisher = UsagePublisher(nc)
    await publisher.start()
    try:
        event = UsageEvent(request_id="subs-0", ts=time.time(), org_id="default",
                           key_id="k", endpoint="chat", model="m", status=200)
        assert await publisher.record_durably(event)
        before = len(nc._subs)  # the first publish opens the one ack inbox
        for i in range(1, 301):
            assert await publisher.record_durably(
                msgspec.structs.replace(event, request_id=f"subs-{i}"))
        assert len(nc._subs) == before
    finally:
        await publisher.stop(2.0)
        await nc.close()


async def test_no_byte_of_an_answer_leaves_unless_its_started_event_is_stored(
        own_nats: Any) -> None:
    """NATS unreachable: the started event cannot be stored, so the answer is
    replaced by a 503 ``usage_unavailable`` (nothing of it goes out), and the
    pipeline records the request as that 503."""
    from gandalf_common.contract import UsageStarted
    from gandalf_ingress.holdend import HoldEnd

    nc = await connect(own_nats.url, "started-gate")
    await ensure_usage_stream(nc)
    publisher = UsagePublisher(nc)
    await publisher.start()
    try:
        started = UsageStarted(request_id="gate-1", ts=time.time(), endpoint="chat", model="m")
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        # Stored: the answer goes out as it is.
        state: dict[str, Any] = {}
        held = HoldEnd(send, state)
        held.hold_start(asyncio.ensure_future(publisher.record_started(started)))
        await held({"type": "http.response.start", "status": 200, "headers": []})
        await held({"type": "http.response.body", "body": b'{"ok":1}'})
        await held.release()
        assert [m.get("status") for m in sent[:1]] == [200] and sent[1]["body"] == b'{"ok":1}'
        assert "usage_unavailable" not in state
        # NATS gone: not stored, so no byte of the answer leaves.
        await asyncio.to_thread(own_nats.stop)
        sent.clear()
        held = HoldEnd(send, state)
        later = msgspec.structs.replace(started, request_id="gate-2")
        held.hold_start(asyncio.ensure_future(publisher.record_started(later, wait=1.0)))
        await held({"type": "http.response.start", "status": 200, "headers": []})
        await held({"type": "http.response.body", "body": b'{"answer":', "more_body": True})
        await held({"type": "http.response.body", "body": b'"secret"}'})
        await held.release()
        assert sent[0]["status"] == 503
        body = b"".join(m.get("body", b"") for m in sent[1:])
        assert json.loads(body)["error"]["code"] == "usage_unavailable"
        assert b"answer" not in body and b"secret" not in body
        assert state["usage_unavailable"] is True
        assert publisher.backlog == 1  # kept, stored once NATS is back
    finally:
        await publisher.stop(0.5)
        with contextlib.suppress(OSError):  # the server is gone
            await nc.close()
