"""HTTP clients whose connections pass the SSRF policy right before they
are made (``gandalf_common.netguard``): the upstream pool and the token
endpoints a provider's secrets are sent to."""

from __future__ import annotations

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from gandalf_common.config import SecurityConfig
from gandalf_common.netguard import guarded_socket_factory


def guarded_connector(security: SecurityConfig, **options: object) -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(socket_factory=guarded_socket_factory(security),
                                **options)  # type: ignore[arg-type]


def guarded_client(security: SecurityConfig, *, timeout: float) -> httpx.AsyncClient:
    """A one-off httpx client (token requests) on a guarded aiohttp connector."""

    def session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=guarded_connector(security),
                                     cookie_jar=aiohttp.DummyCookieJar())

    return httpx.AsyncClient(transport=AiohttpTransport(client=session), timeout=timeout)
