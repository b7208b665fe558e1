"""Admin calls carry a signed caller: a process that can publish on the bus
cannot claim to be an admin (issue: "the bus is open", forged Caller)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import msgspec
import pytest

from admin_harness import admin_service
from gandalf_common import contract
from gandalf_common.callersig import BusSecretError, CallerSigner, call_admin, load_bus_secret
from gandalf_common.config import GatewayConfig
from gandalf_common.contract import AdminRequest, Caller

FORGED_ADMIN = Caller(key_id="", org_id="default", role="admin", auth="admin_key")


def _request(caller: Caller = FORGED_ADMIN) -> AdminRequest:
    return AdminRequest(request_id=uuid.uuid4().hex, method="GET", path="/admin/v1/keys",
                        caller=caller)


def _signer() -> CallerSigner:
    secret = load_bus_secret(required=True)
    assert secret is not None
    return CallerSigner(secret)


async def _raw(nc: object, subject: str, data: bytes, reply: str | None = None
               ) -> contract.AdminResponse:
    """What any process on the bus can do: publish bytes, read the answer."""
    inbox = reply or nc.new_inbox()  # type: ignore[attr-defined]
    sub = await nc.subscribe(inbox, max_msgs=1)  # type: ignore[attr-defined]
    await nc.publish(subject, data, reply=inbox)  # type: ignore[attr-defined]
    msg = await sub.next_msg(timeout=10)
    return contract.admin_response_decoder.decode(msg.data)


async def test_a_forged_unsigned_admin_caller_is_refused(nats_url: str,
                                                         fresh_pg_dsn: str) -> None:
    async with admin_service(nats_url, fresh_pg_dsn) as admin:
        answer = await _raw(admin.nc, admin.subject, contract.encode(_request()))
        assert answer.status == 401
        assert b"unsigned" in answer.body and b'"keys"' not in answer.body
        # The genuine path still works.
        status, _ = await admin.call("GET", "/admin/v1/keys")
        assert status == 200


async def test_signatures_with_another_secret_or_altered_fields_are_refused(
        nats_url: str, fresh_pg_dsn: str) -> None:
    async with admin_service(nats_url, fresh_pg_dsn) as admin:
        inbox = admin.nc.new_inbox()
        wrong = CallerSigner(b"x" * 40).sign(_request(), inbox)
        assert (await _raw(admin.nc, admin.subject, contract.encode(wrong), inbox)).status == 401
        # Signed for a member, then the caller swapped for an admin: refused.
        member = Caller(key_id="k1", org_id="default", role="member")
        signed = _signer().sign(_request(member), inbox)
        swapped = msgspec.structs.replace(signed, caller=FORGED_ADMIN)
        answer = await _raw(admin.nc, admin.subject, contract.encode(swapped), inbox)
        assert answer.status == 401 and b"bad signature" in answer.body


async def test_a_captured_call_cannot_be_replayed(nats_url: str, fresh_pg_dsn: str) -> None:
    async with admin_service(nats_url, fresh_pg_dsn) as admin:
        signer = _signer()
        request = AdminRequest(request_id=uuid.uuid4().hex, method="POST",
                               path="/admin/v1/keys", body=b'{"name": "stolen"}',
                               caller=Caller(key_id="k-global-admin", role="admin"))
        first_inbox = admin.nc.new_inbox()
        signed = signer.sign(request, first_inbox)
        assert (await _raw(admin.nc, admin.subject, contract.encode(signed),
                           first_inbox)).status == 201
        # To another inbox (to read the new key's secret): the signature fails.
        elsewhere = await _raw(admin.nc, admin.subject, contract.encode(signed))
        assert elsewhere.status == 401 and b"bad signature" in elsewhere.body
        # To the same inbox again: a replay.
        again = await _raw(admin.nc, admin.subject, contract.encode(signed), first_inbox)
        assert again.status == 401 and b"replayed" in again.body
        # Signed long ago: stale.
        old = signer.sign(msgspec.structs.replace(request, request_id=uuid.uuid4().hex),
                          first_inbox, now=time.time() - 600)
        stale = await _raw(admin.nc, admin.subject, contract.encode(old), first_inbox)
        assert stale.status == 401 and b"stale" in stale.body
        status, body = await admin.call("GET", "/admin/v1/keys")
        assert status == 200 and sum(k["name"] == "stolen" for k in body["data"]) == 1


async def test_signed_calls_round_trip(nats_url: str, fresh_pg_dsn: str) -> None:
    async with admin_service(nats_url, fresh_pg_dsn) as admin:
        answer = await call_admin(admin.nc, admin.subject, _request(), _signer(), 10)
        assert contract.admin_response_decoder.decode(answer).status == 200


async def test_the_admin_service_will_not_start_without_the_secret(
        nats_url: str, fresh_pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GANDALF_BUS_SECRET")
    async with admin_service(nats_url, fresh_pg_dsn, GatewayConfig(), start=False) as admin:
        with pytest.raises(BusSecretError, match="GANDALF_BUS_SECRET"):
            await admin.service.start(admin.nc)
    monkeypatch.setenv("GANDALF_BUS_SECRET", "short")
    with pytest.raises(BusSecretError, match="too short"):
        load_bus_secret(required=True)


def test_gandalf_admin_without_the_secret_is_one_line_and_status_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GANDALF_BUS_SECRET"}
    config = tmp_path / "g.yaml"
    config.write_text("database: {url: 'postgresql://127.0.0.1:1/none'}\n")
    done = subprocess.run([sys.executable, "-m", "gandalf_app.cli", "--config", str(config),
                           "--nats-url", "nats://127.0.0.1:1", "admin"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "GANDALF_BUS_SECRET" in done.stderr and "Traceback" not in done.stderr
