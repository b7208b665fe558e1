"""Cloud credentials of the mock upstream: a Google OAuth2 token endpoint
(service-account JWT grant, as google-auth sends it), a Microsoft Entra ID
token endpoint (client credentials) and a SigV4 verifier for Bedrock.

Other mixins use ``_check_bearer`` (a token issued here) and ``_check_sigv4``.
"""

from __future__ import annotations

import itertools
import secrets
from typing import Any

from aiohttp import web

#: AWS credentials the mock accepts: access key id -> secret.
MOCK_AWS_KEYS = {"AKIDMOCKGANDALF": "mock-aws-secret-key"}
MOCK_ENTRA_CLIENT = ("mock-client-id", "mock-client-secret")
#: Azure OpenAI data-plane versions the mock accepts (a real subset).
AZURE_API_VERSIONS = frozenset({"2024-10-21", "2024-06-01", "2025-04-01-preview"})


class CloudRoutes:
    #: Bearer tokens handed out by the token endpoints (google + entra).
    issued_tokens: set[str]
    token_requests: list[dict[str, Any]]

    def _add_cloud_routes(self, app: web.Application) -> None:
        self.issued_tokens = set()
        self.token_requests = []
        self._token_ids = itertools.count(1)
        app.router.add_post("/oauth2/token", self._google_token)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._entra_token)
        for op, handler in (("chat/completions", self._azure_chat),
                            ("embeddings", self._azure_embeddings)):
            app.router.add_post(f"/openai/deployments/{{deployment}}/{op}", handler)
        app.router.add_get("/openai/models", self._azure_models)

    # ------------------------------------------------------------------ azure

    def _azure_denied(self, request: web.Request) -> web.Response | None:
        """Azure wants ``api-version`` and either ``api-key`` or an Entra bearer."""
        if request.query.get("api-version") not in AZURE_API_VERSIONS:
            return web.json_response({"error": {
                "code": "404", "message": "Resource not found"}}, status=404)
        headers = {k.lower(): v for k, v in request.headers.items()}
        if headers.get("api-key") == self.api_key or self._check_bearer(headers):  # type: ignore[attr-defined]
            return None
        return web.json_response({"error": {
            "code": "401", "message": "Access denied due to invalid subscription key or wrong "
                                      "API endpoint."}}, status=401)

    async def _azure_chat(self, request: web.Request) -> web.StreamResponse:
        return self._azure_denied(request) or await self._chat_completions(  # type: ignore[attr-defined]
            request, request.match_info["deployment"])  # type: ignore[attr-defined]

    async def _azure_embeddings(self, request: web.Request) -> web.StreamResponse:
        return self._azure_denied(request) or await self._embeddings(  # type: ignore[attr-defined]
            request, request.match_info["deployment"])  # type: ignore[attr-defined]

    async def _azure_models(self, request: web.Request) -> web.StreamResponse:
        return self._azure_denied(request) or await self._list_models(request)  # type: ignore[attr-defined]

    def _issue(self, prefix: str) -> str:
        token = f"{prefix}.mock-{next(self._token_ids)}-{secrets.token_hex(4)}"
        self.issued_tokens.add(token)
        return token

    async def _google_token(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.token_requests.append({"kind": "google", **{k: str(v) for k, v in form.items()}})
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" or not form.get(
                "assertion"):
            return web.json_response({"error": "invalid_grant"}, status=400)
        return web.json_response({"access_token": self._issue("ya29"), "expires_in": 3600,
                                  "token_type": "Bearer"})

    async def _entra_token(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.token_requests.append({"kind": "entra", "tenant": request.match_info["tenant"],
                                    **{k: str(v) for k, v in form.items()
                                       if k != "client_secret"}})
        if (form.get("grant_type") != "client_credentials"
                or (form.get("client_id"), form.get("client_secret")) != MOCK_ENTRA_CLIENT):
            return web.json_response({"error": "invalid_client",
                                      "error_description": "AADSTS7000215: bad secret"},
                                     status=401)
        return web.json_response({"access_token": self._issue("entra"), "expires_in": 3599,
                                  "token_type": "Bearer"})

    def _check_bearer(self, headers: dict[str, str]) -> bool:
        """``Authorization: Bearer <token issued by this mock>``."""
        value = headers.get("authorization", "")
        return value.startswith("Bearer ") and value[7:] in self.issued_tokens

    def _check_sigv4(self, request: web.Request, raw_body: bytes, *, region: str = "",
                     service: str = "bedrock") -> str | None:
        """Verify a SigV4 signature by re-signing the request with the known
        secret; returns an error message, or None when the signature is valid."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        auth = request.headers.get("Authorization", "")
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            return "missing or non-SigV4 Authorization header"
        fields = dict(part.strip().split("=", 1) for part in auth[17:].split(","))
        try:
            key_id, date, sig_region, sig_service, terminator = fields["Credential"].split("/")
        except (KeyError, ValueError):
            return "malformed Credential scope"
        if terminator != "aws4_request" or sig_service != service or (
                region and sig_region != region):
            return f"wrong credential scope {fields.get('Credential')}"
        secret = MOCK_AWS_KEYS.get(key_id)
        if secret is None:
            return f"unknown access key {key_id}"
        amz_date = request.headers.get("X-Amz-Date", "")
        if not amz_date.startswith(date):
            return "X-Amz-Date missing or not matching the scope date"
        signed = fields.get("SignedHeaders", "").split(";")
        headers = {name: request.headers.get(name, "") for name in signed}
        url = f"{request.scheme}://{request.host}{request.raw_path}"
        probe = AWSRequest(method=request.method, url=url, data=raw_body, headers=headers)
        signer = SigV4Auth(Credentials(key_id, secret), sig_service, sig_region)
        probe.context["timestamp"] = amz_date
        expected = signer.signature(signer.string_to_sign(probe, signer.canonical_request(probe)),
                                    probe)
        if fields.get("Signature") != expected:
            return "signature does not match"
        return None
