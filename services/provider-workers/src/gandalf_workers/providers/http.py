"""The upstream HTTP client shared by the adapters: httpx on the aiohttp
transport, one keep-alive pool per provider instance.

Requests go straight to the transport. httpx's ``AsyncClient`` adds a
cookie jar, redirect and auth handling and a second round of URL/header
merging that a gateway never needs; measured under load they were about a
sixth of the worker's CPU.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import httpx
import msgspec
from httpx_aiohttp import AiohttpTransport

from gandalf_common.config import SecurityConfig

from .auth import Auth
from .base import UpstreamFailure
from .guarded import guarded_connector

#: Builds a provider's failure from an error answer: (provider, status, body, headers).
FailureFactory = Callable[[str, int, bytes, httpx.Headers], UpstreamFailure]
_json_decode = msgspec.json.Decoder().decode

#: Longest silence tolerated between two reads of a running response.
READ_IDLE_S = 300.0


class UpstreamHTTP:
    def __init__(self, name: str, *, max_connections: int, connect_timeout: float,
                 security: SecurityConfig | None = None) -> None:
        self.name = name
        limit = max(1, max_connections)
        # Every resolved address is judged right before its connect (SSRF,
        # DNS rebinding); see gandalf_common.netguard.
        guard = security or SecurityConfig()

        def session() -> aiohttp.ClientSession:
            connector = guarded_connector(guard, limit=limit, keepalive_timeout=90,
                                          ttl_dns_cache=300)
            return aiohttp.ClientSession(connector=connector,
                                         cookie_jar=aiohttp.DummyCookieJar(),
                                         auto_decompress=False)

        self._transport = AiohttpTransport(client=session)
        self._connect_timeout = connect_timeout
        self._extensions = {"timeout": {"connect": connect_timeout, "read": READ_IDLE_S,
                                        "pool": None}}

    async def post(self, url: httpx.URL, headers: dict[str, str], body: bytes,
                   ttfb_timeout: float) -> httpx.Response:
        """Send and return once the response headers arrived (body unread).

        ``ttfb_timeout`` bounds connect + time to first byte only.
        """
        return await self.send("POST", url, headers, body, ttfb_timeout)

    async def send(self, method: str, url: httpx.URL, headers: dict[str, str], body: bytes,
                   ttfb_timeout: float) -> httpx.Response:
        request = httpx.Request(method, url, headers=headers, content=body,
                                extensions=self._extensions)
        started = time.monotonic()
        try:
            async with asyncio.timeout(ttfb_timeout):
                return await self._transport.handle_async_request(request)
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            if isinstance(exc, httpx.ConnectTimeout) and (
                    time.monotonic() - started < min(ttfb_timeout, self._connect_timeout) * 0.9):
                # The aiohttp transport reports refused connections and DNS
                # failures as ConnectTimeout; one that came early is neither.
                raise UpstreamFailure(f"{self.name}: upstream connection failed ({exc})",
                                      status=502, code="upstream_unreachable") from exc
            raise connect_failure(self.name, exc, ttfb_timeout) from exc

    async def call(self, method: str, url: httpx.URL, headers: dict[str, str], body: bytes,
                   auth: Auth, ttfb_timeout: float) -> httpx.Response:
        """Add credentials for these exact bytes (SigV4 signs them), then send."""
        await auth.apply(method, url, headers, body)
        return await self.send(method, url, headers, body, ttfb_timeout)

    async def aclose(self) -> None:
        await self._transport.aclose()


async def read_ok(provider: str, response: httpx.Response, failure: FailureFactory) -> bytes:
    """The whole body of a non-stream answer; an error answer raises ``failure``."""
    try:
        body = await response.aread()
    except httpx.HTTPError as exc:
        raise UpstreamFailure(f"{provider}: response body cut ({type(exc).__name__})",
                              status=502, code="upstream_read_error") from exc
    finally:
        await response.aclose()
    if response.status_code != 200:
        raise failure(provider, response.status_code, body, response.headers)
    return body


def decode_json(provider: str, body: bytes) -> Any:
    try:
        return _json_decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise UpstreamFailure(f"{provider}: upstream sent invalid JSON", status=502,
                              code="upstream_invalid_response") from exc


def connect_failure(provider: str, exc: BaseException, timeout: float) -> UpstreamFailure:
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return UpstreamFailure(f"{provider}: no response within {timeout:g}s", status=504,
                               type="timeout_error", code="upstream_timeout")
    return UpstreamFailure(f"{provider}: upstream connection failed ({type(exc).__name__})",
                           status=502, code="upstream_unreachable")
