"""A provider's stored secrets never follow a change of destination: a PUT
that moves base_url (or type, hosting, region...) must send them again.
What a worker would run is built from the replicated KV record and sent to
real mock upstreams, so the test sees which host gets which secret."""

from __future__ import annotations

from typing import Any

from admin_harness import TEST_ENCRYPTION_KEY, AdminClient, admin_service
from gandalf_common.crypto import SecretBox, parse_key
from gandalf_common.live import provider_config
from gandalf_common.records import PROVIDER_PREFIX, config_key, provider_decoder
from gandalf_workers.providers.registry import build_provider
from mock_upstream import MockUpstream

CANARY = "sk-canary-old-host-1234"
NEW_SECRET = "sk-for-the-new-host-5678"
PATH = "/admin/v1/providers/oa"
BOX = SecretBox(parse_key(TEST_ENCRYPTION_KEY))


async def _send_as_worker(admin: AdminClient) -> None:
    """One chat call with the provider exactly as a worker builds it from KV."""
    raw = (await admin.kv_config())[config_key(PROVIDER_PREFIX, "oa")]
    provider = build_provider(provider_config(provider_decoder.decode(raw), BOX))
    try:
        await provider.complete("chat", {"model": "gpt-4o", "messages": [
            {"role": "user", "content": "hi"}]}, ttfb_timeout=5)
    finally:
        await provider.aclose()


def _authorizations(mock: MockUpstream) -> set[str]:
    return {r.headers.get("authorization", "") for r in mock.requests}


async def test_changing_destination_requires_the_secret(nats_url: str,
                                                         fresh_pg_dsn: str) -> None:
    with MockUpstream() as old, MockUpstream() as new:
        async with admin_service(nats_url, fresh_pg_dsn) as admin:
            body: dict[str, Any] = {"type": "openai", "base_url": old.base_url,
                                    "api_key": CANARY, "models": ["gpt-4o"]}
            assert (await admin.call("POST", "/admin/v1/providers",
                                     body={"name": "oa", **body}))[0] == 201
            _, shown = await admin.call("GET", PATH)
            moves: list[dict[str, Any]] = [
                {"base_url": new.base_url},
                {"base_url": new.base_url, "api_key": shown["api_key"]},  # the mask: "keep"
                {"type": "ollama", "base_url": new.base_url},
            ]
            keep = {k: v for k, v in body.items() if k != "api_key"}
            for change in moves:
                status, payload = await admin.call("PUT", PATH, body={**keep, **change})
                assert status == 400, (change, payload)
                assert payload["error"]["code"] == "secret_required"
                assert payload["error"]["param"] == "api_key"
                assert CANARY not in str(payload)
            # Nothing moved: the worker still talks to the old host only.
            await _send_as_worker(admin)
            assert _authorizations(old) == {f"Bearer {CANARY}"} and not new.requests
            # Unrelated edits still keep the secret without resending it.
            assert (await admin.call("PUT", PATH, body={**keep, "priority": 3}))[0] == 200
            # With the secret, the move goes through and the new host gets only it.
            status, moved = await admin.call("PUT", PATH, body={
                **keep, "base_url": new.base_url, "api_key": NEW_SECRET})
            assert status == 200 and moved["base_url"] == new.base_url
            await _send_as_worker(admin)
            assert _authorizations(new) == {f"Bearer {NEW_SECRET}"}
            assert all(CANARY not in r.raw_body.decode(errors="replace")
                       and CANARY not in str(r.headers) for r in new.requests)
            # Clearing the secret while moving is fine too (nothing is carried over).
            status, _ = await admin.call("PUT", PATH, body={
                **keep, "base_url": old.base_url, "api_key": None})
            assert status == 200
