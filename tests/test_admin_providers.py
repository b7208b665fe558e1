"""Providers through the admin API: the YAML loader's validation, the
base_url guard, and secrets that are write-only (sealed in the database and
in KV, masked in every response)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from admin_harness import TEST_ENCRYPTION_KEY, AdminClient, admin_service
from gandalf_common.config import GatewayConfig, SecurityConfig
from gandalf_common.crypto import SecretBox, parse_key
from gandalf_common.live import provider_config
from gandalf_common.records import PROVIDER_PREFIX, config_key, provider_decoder

CANARY = "sk-canary-123456"


async def _error(admin: AdminClient, method: str, path: str, body: Any) -> tuple[int, str]:
    status, payload = await admin.call(method, path, body=body)
    return status, payload["error"]["param"]


async def test_secrets_are_write_only(nats_url: str, fresh_pg_dsn: str) -> None:
    box = SecretBox(parse_key(TEST_ENCRYPTION_KEY))
    async with admin_service(nats_url, fresh_pg_dsn) as admin:
        seen: list[bytes] = []

        async def call(method: str, path: str, body: Any = None) -> dict[str, Any]:
            resp = await admin.request(method, path, body=body)
            assert resp.status < 300, resp
            seen.append(resp.body)
            return msgspec.json.decode(resp.body)  # type: ignore[no-any-return]

        created = await call("POST", "/admin/v1/providers", {
            "name": "oa", "type": "openai", "api_key": CANARY, "models": ["gpt-4o"]})
        assert created["api_key"] == "sk-...3456" and created["auth"]["api_key"] == "sk-...3456"
        assert created["base_url"] == "https://api.openai.com/v1"  # the loader's default
        got = await call("GET", "/admin/v1/providers/oa")
        await call("GET", "/admin/v1/providers")
        # A GET body PUT back keeps the secret (the mask means "unchanged").
        echoed = await call("PUT", "/admin/v1/providers/oa", {**got, "priority": 2})
        assert echoed["priority"] == 2 and echoed["api_key"] == "sk-...3456"
        raw = (await admin.kv_config())[config_key(PROVIDER_PREFIX, "oa")]
        seen.append(raw)
        assert all(CANARY.encode() not in blob for blob in seen)
        async with admin.db() as db:
            row = await db.fetchrow("SELECT * FROM providers WHERE id = 'oa'")
        assert row["secrets_enc"].startswith("v1.") and CANARY not in str(dict(row))
        # Only a holder of the key (a worker) gets the plaintext back from KV.
        record = provider_decoder.decode(raw)
        assert record.secrets_enc == row["secrets_enc"]
        assert provider_config(record, box).api_key == CANARY
        # Absent keeps; null clears; a new value replaces.
        kept = await call("PUT", "/admin/v1/providers/oa", {"name": "oa", "type": "openai"})
        assert kept["api_key"] == "sk-...3456" and kept["priority"] == 0  # full replace
        new = await call("PUT", "/admin/v1/providers/oa", {"type": "openai", "api_key": "short"})
        assert new["api_key"] == "***"
        cleared = await call("PUT", "/admin/v1/providers/oa", {"type": "openai", "api_key": None})
        assert cleared["api_key"] is None
        record = provider_decoder.decode(
            (await admin.kv_config())[config_key(PROVIDER_PREFIX, "oa")])
        assert record.secrets_enc == ""
        # Cloud secrets are sealed too.
        status, bedrock = await admin.call("POST", "/admin/v1/providers", body={
            "name": "br", "type": "anthropic", "hosting": "bedrock", "region": "us-east-1",
            "auth": {"access_key_id": "AKIAEXAMPLE", "secret_access_key": CANARY}})
        assert status == 201 and CANARY not in str(bedrock)
        assert bedrock["auth"]["type"] == "aws_sigv4"
        assert bedrock["auth"]["secret_access_key"] == "sk-...3456"
        assert bedrock["base_url"] == "https://bedrock-runtime.us-east-1.amazonaws.com"
        record = provider_decoder.decode(
            (await admin.kv_config())[config_key(PROVIDER_PREFIX, "br")])
        assert provider_config(record, box).auth.secret_access_key == CANARY


async def test_provider_validation(nats_url: str, fresh_pg_dsn: str) -> None:
    async with admin_service(nats_url, fresh_pg_dsn) as admin:
        path = "/admin/v1/providers"
        cases: list[tuple[dict[str, Any], str]] = [
            ({"type": "openai"}, "name"),
            ({"name": "x", "type": "cohere"}, "type"),
            ({"name": "cohere"}, "type"),  # the type defaults to the name
            ({"name": "bad.name", "type": "openai"}, "name"),  # ids are NATS subject tokens
            ({"name": "x", "type": "anthropic", "hosting": "vertex"}, "region"),
            ({"name": "x", "type": "openai", "hosting": "bedrock", "region": "r"}, "hosting"),
            ({"name": "x", "type": "openai", "auth": {"type": "magic"}}, "auth.type"),
            ({"name": "x", "type": "openai", "auth": {"type": "azure_entra"}}, "auth.tenant_id"),
            ({"name": "x", "type": "openai", "weight": 0}, "weight"),
            ({"name": "x", "type": "openai", "base": "http://a"}, "base"),
        ]
        for body, param in cases:
            assert await _error(admin, "POST", path, body) == (400, param), body
        assert (await admin.call("POST", path, body={"id": "o1", "name": "Main OpenAI",
                                                     "type": "openai"}))[0] == 201
        assert await _error(admin, "POST", path, {"id": "o1", "type": "openai"}) == (409, "id")
        assert await _error(admin, "PUT", f"{path}/o1", {"id": "o2", "type": "openai"}) == (
            400, "id")
        assert (await admin.call("PUT", f"{path}/nope", body={"type": "openai"}))[0] == 404
        assert (await admin.call("DELETE", f"{path}/o1"))[0] == 204
        assert config_key(PROVIDER_PREFIX, "o1") not in await admin.kv_config()


@pytest.mark.parametrize("allowlist", [[], ["api.openai.com", "*.azure.com", "10.0.0.0/8"]])
async def test_base_url_guard(nats_url: str, fresh_pg_dsn: str, allowlist: list[str]) -> None:
    cfg = GatewayConfig(security=SecurityConfig(upstream_allowlist=allowlist))
    refused = ["file:///etc/passwd", "ftp://api.openai.com", "http://user:pw@api.openai.com",
               "http://169.254.169.254/latest", "http://[fd00:ec2::254]/",
               "http://[::ffff:169.254.169.254]/", "http://2852039166/",
               "http://0xa9.0xfe.0xa9.0xfe/", "http://metadata.google.internal/",
               "http://[fe80::1]/", "http://"]
    allowed = ["https://api.openai.com/v1", "https://x.openai.azure.com", "http://10.1.2.3:8000"]
    if allowlist:
        refused += ["https://evil.example.com/v1", "http://192.168.1.1/", "http://11.0.0.1/"]
    else:
        allowed += ["https://evil.example.com/v1", "http://192.168.1.1/"]
    async with admin_service(nats_url, fresh_pg_dsn, cfg) as admin:
        for i, url in enumerate(refused):
            body = {"name": f"p{i}", "type": "openai", "base_url": url}
            assert await _error(admin, "POST", "/admin/v1/providers", body) == (
                400, "base_url"), url
        for i, url in enumerate(allowed):
            status, payload = await admin.call("POST", "/admin/v1/providers", body={
                "name": f"ok{i}", "type": "openai", "base_url": url})
            assert status == 201, (url, payload)


async def test_secret_needs_an_encryption_key(nats_url: str, fresh_pg_dsn: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GANDALF_ENCRYPTION_KEY", raising=False)
    async with admin_service(nats_url, fresh_pg_dsn, encryption_key=None) as admin:
        status, payload = await admin.call("POST", "/admin/v1/providers", body={
            "name": "oa", "type": "openai", "api_key": CANARY})
        assert status == 400 and payload["error"]["code"] == "encryption_key_missing"
        assert "GANDALF_ENCRYPTION_KEY" in payload["error"]["message"]
        # Without a secret (a local Ollama) nothing needs sealing.
        assert (await admin.call("POST", "/admin/v1/providers", body={
            "name": "ollama", "base_url": "http://localhost:11434"}))[0] == 201
