"""Upstream credentials, applied to each outgoing request. Adapters build
the URL, headers and body; an ``Auth`` adds what proves who we are.

Token sources refresh ahead of expiry and share one refresh among
concurrent requests; they never log a token or a secret.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Protocol

import httpx

from gandalf_common.config import SecurityConfig

from .base import UpstreamFailure
from .guarded import guarded_client

#: Refresh this long before a token expires.
REFRESH_MARGIN_S = 300.0


class Auth(Protocol):
    async def apply(self, method: str, url: httpx.URL, headers: dict[str, str],
                    body: bytes) -> None:
        """Add credentials to ``headers`` (in place) for this exact request."""
        ...


class NoAuth:
    async def apply(self, method: str, url: httpx.URL, headers: dict[str, str],
                    body: bytes) -> None:
        return None


class HeaderKey:
    """A static API key in one header: ``Authorization: Bearer k``,
    ``x-api-key`` (Anthropic), ``x-goog-api-key`` (Gemini), ``api-key`` (Azure)."""

    def __init__(self, header: str, key: str) -> None:
        self._header = header.lower()
        self._value = f"Bearer {key}" if self._header == "authorization" else key

    async def apply(self, method: str, url: httpx.URL, headers: dict[str, str],
                    body: bytes) -> None:
        headers[self._header] = self._value


class _CachedToken:
    """Bearer token with expiry; one refresh at a time."""

    def __init__(self) -> None:
        self._token = ""
        self._expires = 0.0
        self._lock = asyncio.Lock()

    async def _fetch(self) -> tuple[str, float]:
        raise NotImplementedError

    async def token(self) -> str:
        if time.time() < self._expires - REFRESH_MARGIN_S:
            return self._token
        async with self._lock:
            if time.time() >= self._expires - REFRESH_MARGIN_S:
                self._token, self._expires = await self._fetch()
        return self._token

    async def apply(self, method: str, url: httpx.URL, headers: dict[str, str],
                    body: bytes) -> None:
        headers["authorization"] = f"Bearer {await self.token()}"


class GoogleADC(_CachedToken):
    """Vertex AI: Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS``,
    gcloud user credentials, or the metadata server), or an explicit
    credentials file. google-auth refreshes synchronously, so in a thread."""

    SCOPE = "https://www.googleapis.com/auth/cloud-platform"

    def __init__(self, provider: str, credentials_file: str = "") -> None:
        super().__init__()
        self._provider = provider
        self._file = credentials_file
        self._creds: object | None = None

    def _load(self) -> object:
        import google.auth
        from google.oauth2 import service_account

        if self._file:
            with open(self._file, encoding="utf-8") as fh:
                info = json.load(fh)
            if info.get("type") == "service_account":
                # google-auth's functions carry no annotations.
                return service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                    info, scopes=[self.SCOPE])
            creds, _project = google.auth.load_credentials_from_file(  # type: ignore[no-untyped-call]
                self._file, scopes=[self.SCOPE])
            return creds
        creds, _project = google.auth.default(scopes=[self.SCOPE])
        return creds

    def _refresh(self) -> tuple[str, float]:
        import google.auth.transport.requests

        if self._creds is None:
            self._creds = self._load()
        creds = self._creds
        creds.refresh(google.auth.transport.requests.Request())  # type: ignore[attr-defined]
        expiry = creds.expiry  # type: ignore[attr-defined]
        expires = expiry.timestamp() if expiry is not None else time.time() + 3600
        if expiry is not None and expiry.tzinfo is None:  # google-auth uses naive UTC
            import calendar
            expires = calendar.timegm(expiry.timetuple())
        return creds.token, expires  # type: ignore[attr-defined]

    async def _fetch(self) -> tuple[str, float]:
        try:
            return await asyncio.to_thread(self._refresh)
        except Exception as exc:
            raise UpstreamFailure(f"{self._provider}: cannot obtain a Google access token "
                                  f"({type(exc).__name__})", status=502,
                                  code="upstream_auth_error") from exc


class EntraClientCredentials(_CachedToken):
    """Azure OpenAI with Microsoft Entra ID: OAuth2 client-credentials grant
    against ``{authority}/{tenant}/oauth2/v2.0/token``, token cached until
    shortly before ``expires_in``."""

    SCOPE = "https://cognitiveservices.azure.com/.default"

    def __init__(self, provider: str, *, tenant_id: str, client_id: str, client_secret: str,
                 authority: str = "https://login.microsoftonline.com",
                 scope: str = SCOPE, security: SecurityConfig | None = None) -> None:
        super().__init__()
        self._provider = provider
        self._security = security or SecurityConfig()
        self._url = f"{authority.rstrip('/')}/{tenant_id}/oauth2/v2.0/token"
        self._form = {"grant_type": "client_credentials", "client_id": client_id,
                      "client_secret": client_secret, "scope": scope}

    async def _fetch(self) -> tuple[str, float]:
        try:
            # The client secret goes there: the same connect-time guard as
            # the upstream (see gandalf_common.netguard).
            async with guarded_client(self._security, timeout=10.0) as client:
                response = await client.post(self._url, data=self._form)
            data = response.json() if response.status_code == 200 else {}
        except (httpx.HTTPError, ValueError) as exc:
            raise UpstreamFailure(f"{self._provider}: Entra ID token request failed "
                                  f"({type(exc).__name__})", status=502,
                                  code="upstream_auth_error") from exc
        token = data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            # The error body may echo the client id; never the secret, but keep it out.
            raise UpstreamFailure(f"{self._provider}: Entra ID refused the client "
                                  f"credentials (HTTP {response.status_code})", status=502,
                                  code="upstream_auth_error")
        return token, time.time() + float(data.get("expires_in", 3600))


class AwsSigV4:
    """Bedrock: SigV4 over the exact bytes sent. Credentials from the config
    or botocore's default chain (env, profile, container/instance role),
    which refreshes temporary credentials itself."""

    def __init__(self, provider: str, *, region: str, service: str = "bedrock",
                 access_key_id: str = "", secret_access_key: str = "",
                 session_token: str = "") -> None:
        import botocore.session
        from botocore.credentials import Credentials

        self._provider = provider
        self._region = region
        self._service = service
        if access_key_id and secret_access_key:
            self._creds = Credentials(access_key_id, secret_access_key, session_token or None)
        else:
            self._creds = botocore.session.Session().get_credentials()

    async def apply(self, method: str, url: httpx.URL, headers: dict[str, str],
                    body: bytes) -> None:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        if self._creds is None:
            raise UpstreamFailure(f"{self._provider}: no AWS credentials found", status=502,
                                  code="upstream_auth_error")
        frozen = self._creds.get_frozen_credentials()
        request = AWSRequest(method=method, url=str(url), data=body,
                             headers={k: v for k, v in headers.items()
                                      if k not in ("authorization", "x-amz-date",
                                                   "x-amz-security-token")})
        SigV4Auth(frozen, self._service, self._region).add_auth(request)
        for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token",
                     "X-Amz-Content-SHA256"):
            value = request.headers.get(name)
            if value is not None:
                headers[name.lower()] = value
