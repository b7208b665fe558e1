"""The SSRF policy: every IPv6 form of a forbidden address, host names
resolved at validation time, the workers' connect-time check (which also
defeats DNS rebinding), and cloud providers on ambient credentials."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import aiohttp
import pytest

from admin_harness import admin_service
from gandalf_common.config import GatewayConfig, ProviderAuthConfig, ProviderConfig, SecurityConfig
from gandalf_common.endpoints import endpoint_problem
from gandalf_common.netguard import ForbiddenAddressError, forbidden, guarded_socket_factory
from gandalf_workers.pools import runnable
from gandalf_workers.providers.base import UpstreamFailure
from gandalf_workers.providers.registry import build_provider
from mock_upstream import MockUpstream

DEFAULT = SecurityConfig()
STRICT = SecurityConfig(block_private=True)
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}

#: 169.254.169.254 (the metadata address) in every form that reaches it.
METADATA_FORMS = [
    "169.254.169.254", "::ffff:169.254.169.254", "::ffff:a9fe:a9fe", "::169.254.169.254",
    "64:ff9b::a9fe:a9fe", "64:ff9b::169.254.169.254", "64:ff9b:1::a9fe:a9fe",
    "2002:a9fe:a9fe::", "2002:a9fe:a9fe:1::1",
    "2001:0:4136:e378:8000:63bf:5601:5601",  # Teredo, client 169.254.169.254 (obfuscated)
    "2001:0:a9fe:a9fe::1",                    # Teredo, server 169.254.169.254
    "fe80::1", "fd00:ec2::254", "100.100.100.200",
]
PRIVATE_FORMS = ["127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.0.1", "100.64.0.1", "0.0.0.0",
                 "::1", "::", "fd12::1", "::ffff:127.0.0.1", "64:ff9b::7f00:1",
                 "2002:7f00:1::", "::127.0.0.1"]


@pytest.mark.parametrize("address", METADATA_FORMS)
def test_metadata_forms_are_forbidden(address: str) -> None:
    assert forbidden(ipaddress.ip_address(address), DEFAULT) is not None


@pytest.mark.parametrize("address", PRIVATE_FORMS)
def test_private_forms_are_allowed_by_default_refused_when_strict(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert forbidden(ip, DEFAULT) is None  # local model servers keep working
    assert forbidden(ip, STRICT) is not None
    # An allowlisted CIDR permits its addresses.
    net = "::/0" if ip.version == 6 else "0.0.0.0/0"
    assert forbidden(ip, SecurityConfig(block_private=True, upstream_allowlist=[net])) is None


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700::1111", "64:ff9b::808:808",
                                     "2002:808:808::"])
def test_public_addresses_pass(address: str) -> None:
    assert forbidden(ipaddress.ip_address(address), STRICT) is None


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address


async def test_admin_refuses_every_form_and_resolved_names(nats_url: str,
                                                          fresh_pg_dsn: str) -> None:
    cfg = GatewayConfig(security=STRICT)
    async with admin_service(nats_url, fresh_pg_dsn, cfg) as admin:
        for i, address in enumerate(METADATA_FORMS + PRIVATE_FORMS):
            status, payload = await admin.call("POST", "/admin/v1/providers", body={
                "name": f"p{i}", "type": "openai", "base_url": f"http://{_bracket(address)}/v1"})
            assert (status, payload["error"]["param"]) == (400, "base_url"), (address, payload)
        # A name is resolved: localhost is loopback, refused under block_private.
        status, payload = await admin.call("POST", "/admin/v1/providers", body={
            "name": "named", "type": "openai", "base_url": "http://localhost:8000/v1"})
        assert status == 400 and "resolves to" in payload["error"]["message"], payload
        # A name that does not resolve here is left to the workers' check.
        status, _ = await admin.call("POST", "/admin/v1/providers", body={
            "name": "later", "type": "openai", "base_url": "https://no-such-host.invalid/v1"})
        assert status == 201


async def test_worker_refuses_forbidden_addresses_at_connect_time() -> None:
    """The name passed no check (it may even have resolved elsewhere before):
    what it resolves to right before the connect decides."""
    with MockUpstream() as mock:
        url = f"http://localhost:{mock.port}/v1"
        for security, reaches in ((DEFAULT, True), (STRICT, False),
                                  (SecurityConfig(block_private=True,
                                                  upstream_allowlist=["127.0.0.0/8", "::1/128"]),
                                   True)):
            provider = build_provider(ProviderConfig(name="o", type="openai", base_url=url,
                                                     timeout_ms=5000), security)
            before = len(mock.requests)
            try:
                if reaches:
                    await provider.complete("chat", CHAT, ttfb_timeout=5)
                else:
                    with pytest.raises(UpstreamFailure) as info:
                        await provider.complete("chat", CHAT, ttfb_timeout=5)
                    assert info.value.code == "upstream_unreachable"
            finally:
                await provider.aclose()
            assert (len(mock.requests) > before) == reaches, security


class _Rebinding(aiohttp.abc.AbstractResolver):
    """A name whose DNS answer changed since it was validated."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        ip = ipaddress.ip_address(self.answers[host])
        fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        return [{"hostname": host, "host": str(ip), "port": port, "family": fam,
                 "proto": 0, "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        return None


@pytest.mark.parametrize("answer", ["169.254.169.254", "::ffff:169.254.169.254",
                                    "64:ff9b::a9fe:a9fe"])
async def test_connect_time_hook_sees_the_resolved_address(answer: str) -> None:
    connector = aiohttp.TCPConnector(resolver=_Rebinding({"rebound.test": answer}),
                                     socket_factory=guarded_socket_factory(DEFAULT))
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await session.get("http://rebound.test/latest/meta-data/",
                              timeout=aiohttp.ClientTimeout(total=5))
    cause: BaseException | None = info.value
    while cause is not None and not isinstance(cause, ForbiddenAddressError):
        cause = cause.__cause__ or getattr(cause, "os_error", None)
    assert isinstance(cause, ForbiddenAddressError), info.value


def _cloud(hosting: str, base_url: str, **auth: Any) -> ProviderConfig:
    auth_type = "gcp_oauth" if hosting == "vertex" else "aws_sigv4"
    return ProviderConfig(name="c", type="anthropic", hosting=hosting, region="us-east1",
                          project="p", base_url=base_url,
                          auth=ProviderAuthConfig(type=auth_type, **auth))


@pytest.mark.parametrize(("hosting", "official"), [
    ("vertex", "https://us-east1-aiplatform.googleapis.com"),
    ("vertex", "https://aiplatform.googleapis.com"),
    ("bedrock", "https://bedrock-runtime.us-east-1.amazonaws.com"),
    ("bedrock", "https://bedrock-runtime-fips.us-east-1.amazonaws.com")])
def test_ambient_cloud_credentials_only_reach_official_endpoints(hosting: str,
                                                                 official: str) -> None:
    assert endpoint_problem(_cloud(hosting, official)) is None
    for custom in ("http://127.0.0.1:9000", "https://evil.example.com",
                   "https://aiplatform.googleapis.com.evil.example.com",
                   official.replace("https://", "http://")):
        ambient = _cloud(hosting, custom)
        assert endpoint_problem(ambient) is not None, custom
        with pytest.raises(ValueError, match="allow_custom_endpoint"):
            runnable(ambient)  # the worker will not build it from a KV record
        opted_in = _cloud(hosting, custom)
        assert endpoint_problem(ProviderConfig(**{
            **{f: getattr(opted_in, f) for f in opted_in.__struct_fields__},
            "allow_custom_endpoint": True})) is None
    # Explicit credentials are the provider's own: any endpoint the SSRF policy allows.
    own = {"credentials_file": "/etc/sa.json"} if hosting == "vertex" else {
        "access_key_id": "AKIAEXAMPLE"}
    assert endpoint_problem(_cloud(hosting, "http://127.0.0.1:9000", **own)) is None


async def test_admin_api_applies_the_endpoint_rule(nats_url: str, fresh_pg_dsn: str) -> None:
    body = {"name": "br", "type": "anthropic", "hosting": "bedrock", "region": "us-east-1",
            "base_url": "https://bedrock.example.com"}
    async with admin_service(nats_url, fresh_pg_dsn) as admin:
        status, payload = await admin.call("POST", "/admin/v1/providers", body=body)
        assert (status, payload["error"]["param"]) == (400, "base_url"), payload
        assert "allow_custom_endpoint" in payload["error"]["message"]
        status, payload = await admin.call("POST", "/admin/v1/providers",
                                           body={**body, "allow_custom_endpoint": True})
        assert status == 201 and payload["allow_custom_endpoint"] is True
        status, payload = await admin.call("POST", "/admin/v1/providers", body={
            **body, "name": "br2", "base_url": ""})  # the official default
        assert status == 201, payload


async def test_entra_token_request_passes_the_same_guard() -> None:
    """The client secret goes to authority_host: refused there too when the
    name resolves to a forbidden address at connect time."""
    from gandalf_workers.providers.auth import EntraClientCredentials
    from mock_cloud import MOCK_ENTRA_CLIENT

    client_id, secret = MOCK_ENTRA_CLIENT
    with MockUpstream() as mock:
        authority = f"http://localhost:{mock.port}"
        for security, reaches in ((DEFAULT, True), (STRICT, False)):
            auth = EntraClientCredentials("az", tenant_id="t", client_id=client_id,
                                          client_secret=secret, authority=authority,
                                          security=security)
            before = len(mock.token_requests)
            if reaches:
                await auth._fetch()
            else:
                with pytest.raises(UpstreamFailure) as info:
                    await auth._fetch()
                assert info.value.code == "upstream_auth_error"
            assert (len(mock.token_requests) > before) == reaches
