"""Token sources against the mock's token endpoints: cached, shared by
concurrent requests, refreshed ahead of expiry."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from cloud_creds import write_service_account
from gandalf_workers.providers.auth import REFRESH_MARGIN_S, EntraClientCredentials, GoogleADC
from mock_cloud import MOCK_ENTRA_CLIENT


def token_requests(upstream: Any, kind: str) -> int:
    return sum(1 for t in upstream.token_requests if t["kind"] == kind)


async def test_google_token_cached_shared_and_refreshed(upstream: Any, tmp_path: Path) -> None:
    creds = write_service_account(tmp_path / "sa.json", upstream.url + "/oauth2/token")
    source = GoogleADC("vertex", creds)
    before = token_requests(upstream, "google")
    tokens = await asyncio.gather(*(source.token() for _ in range(10)))
    assert len(set(tokens)) == 1 and tokens[0].startswith("ya29.")
    assert token_requests(upstream, "google") == before + 1  # one refresh for all ten
    headers: dict[str, str] = {}
    await source.apply("POST", httpx.URL("http://x"), headers, b"")
    assert headers["authorization"] == f"Bearer {tokens[0]}"
    # Inside the refresh margin: a new token before the old one expires.
    source._expires = time.time() + REFRESH_MARGIN_S / 2
    fresh = await source.token()
    assert fresh != tokens[0] and token_requests(upstream, "google") == before + 2


async def test_entra_token_refreshed_ahead_of_expiry(upstream: Any) -> None:
    client_id, secret = MOCK_ENTRA_CLIENT
    source = EntraClientCredentials("azure", tenant_id="t", client_id=client_id,
                                    client_secret=secret, authority=upstream.url)
    before = token_requests(upstream, "entra")
    first = await asyncio.gather(*(source.token() for _ in range(5)))
    assert len(set(first)) == 1 and token_requests(upstream, "entra") == before + 1
    source._expires = time.time() + 1
    assert await source.token() != first[0]
    assert token_requests(upstream, "entra") == before + 2
