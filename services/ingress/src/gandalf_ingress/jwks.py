"""The issuer's signing keys (JWKS), fetched from the configured URL only.

- Cached for ``cache_ttl``; an unknown ``kid`` refetches, but fetches start
  at most once per ``min_refresh_interval`` (random kids cannot make us
  hammer the IdP).
- Concurrent callers share one in-flight fetch; a caller that is cancelled
  (client gone) does not cancel the fetch for the others.
- A failed refresh keeps the previous set (stale keys still verify); with no
  set at all, verification fails closed.
- A key is chosen for a token's ``(kid, alg)`` only if its type matches the
  algorithm (RSA for RS*/PS*, EC on the right curve for ES*, OKP for EdDSA)
  and its own ``alg``/``use``/``key_ops``, if present, allow it. ``kid`` is an
  opaque dict key; ``jku``/``x5u``/``jwk`` token headers are never used.

The ingress carries no HTTP client library (see tests/test_packaging.py), so
the fetch is stdlib ``urllib`` in a worker thread: no redirects, only http(s),
a size cap and a deadline.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import time
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from jwt import PyJWK, PyJWKSet
from jwt.exceptions import PyJWTError

log = logging.getLogger("gandalf.jwt")

#: A JWKS is a few KiB; anything this big is refused.
MAX_JWKS_BYTES = 1024 * 1024

_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_OKP_CURVES = ("Ed25519", "Ed448")
_KTYS = ("RSA", "EC", "OKP")


class KeyLookupError(Exception):
    """No usable key for a token; the message is safe to show the client."""


def safe_url(url: str) -> str:
    """The URL for logs: no userinfo, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def key_fits(jwk: dict[str, Any], alg: str) -> bool:
    """May this JWK verify a signature made with ``alg``?"""
    if jwk.get("alg") not in (None, alg):
        return False
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return False
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if alg.startswith(("RS", "PS")):
        return kty == "RSA"
    if alg in _EC_CURVES:
        return kty == "EC" and crv == _EC_CURVES[alg]
    if alg == "EdDSA":
        return kty == "OKP" and crv in _OKP_CURVES
    return False


class KeySet:
    """One fetched JWKS: signature keys by ``kid``, PyJWK objects built per alg."""

    __slots__ = ("_by_kid", "_entries", "_made", "fetched_at")

    def __init__(self, document: Any, fetched_at: float) -> None:
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("not a JWK set")
        entries = [k for k in document["keys"]
                   if isinstance(k, dict) and k.get("kty") in _KTYS
                   and k.get("use") in (None, "sig")
                   and (k.get("kid") is None or isinstance(k.get("kid"), str))]
        # Refuses a set without a single usable key (raises PyJWKSetError).
        PyJWKSet(entries)
        self._entries = entries
        self._by_kid: dict[str, list[dict[str, Any]]] = {}
        for k in entries:
            if k.get("kid") is not None:
                self._by_kid.setdefault(k["kid"], []).append(k)
        # Bounded: only kids present in the set (and None) are ever cached.
        self._made: dict[tuple[str | None, str], list[PyJWK]] = {}
        self.fetched_at = fetched_at

    def __len__(self) -> int:
        return len(self._entries)

    def has_kid(self, kid: str) -> bool:
        return kid in self._by_kid

    def candidates(self, kid: str | None, alg: str) -> list[PyJWK]:
        """Keys that may verify a token with this ``kid`` (or none) and ``alg``."""
        if kid is not None and kid not in self._by_kid:
            return []
        made = self._made.get((kid, alg))
        if made is None:
            pool = self._entries if kid is None else self._by_kid[kid]
            made = []
            for jwk in pool:
                if not key_fits(jwk, alg):
                    continue
                try:
                    made.append(PyJWK(jwk, algorithm=alg))
                except PyJWTError:
                    continue
            self._made[(kid, alg)] = made
        return made


def _opener() -> urllib.request.OpenerDirector:
    # Deliberately minimal: http(s) only, no redirect following, no
    # file:/ftp:/data: handlers, no exception on non-2xx (we check status).
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.HTTPHandler(),
                    urllib.request.HTTPSHandler()):
        opener.add_handler(handler)
    return opener


def download(url: str, timeout: float, max_bytes: int = MAX_JWKS_BYTES) -> bytes:
    """Blocking GET (run it in a thread). Raises OSError/ValueError on failure."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError("JWKS URL must be http(s)")
    request = urllib.request.Request(url, headers={"Accept": "application/json",
                                                   "User-Agent": "gandalf-ingress"})
    with _opener().open(request, timeout=timeout) as resp:
        status = getattr(resp, "status", 200)
        if status != 200:
            raise ValueError(f"HTTP {status}")
        body: bytes = resp.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise ValueError(f"response larger than {max_bytes} bytes")
    return body


class JwksCache:
    def __init__(self, url: str, *, http_timeout: float = 5.0,
                 min_refresh_interval: float = 30.0, cache_ttl: float = 900.0,
                 max_bytes: int = MAX_JWKS_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.http_timeout = http_timeout
        self.min_refresh_interval = min_refresh_interval
        self.cache_ttl = cache_ttl
        self.max_bytes = max_bytes
        self._clock = clock
        self._keys: KeySet | None = None
        self._last_attempt: float | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._closed = False
        #: Fetch attempts started (for metrics and tests).
        self.fetches = 0

    @property
    def keys(self) -> KeySet | None:
        return self._keys

    async def candidates(self, kid: str | None, alg: str) -> list[PyJWK]:
        """Keys to try for a token; raises KeyLookupError when there are none."""
        keys = self._keys
        stale = keys is None or self._clock() - keys.fetched_at >= self.cache_ttl
        if stale and (self._inflight is not None or self._may_fetch()):
            await self._refresh()
        if self._keys is None:
            raise KeyLookupError("signing keys unavailable")
        found = self._lookup(kid, alg)
        if found is None:
            # Unknown kid (or no key of this type for a kid-less token):
            # the issuer may have rotated its keys. One refetch, rate limited.
            if self._inflight is not None or self._may_fetch():
                await self._refresh()
                found = self._lookup(kid, alg)
            if found is None:
                raise KeyLookupError("unknown signing key")
        if not found:
            raise KeyLookupError("signing key does not match the token's algorithm")
        return found

    def _lookup(self, kid: str | None, alg: str) -> list[PyJWK] | None:
        """None: not in the set (a refetch may help); []: present, but unusable."""
        keys = self._keys
        assert keys is not None
        if kid is not None:
            return keys.candidates(kid, alg) if keys.has_kid(kid) else None
        found = keys.candidates(None, alg)
        if not found:
            return None
        if len(found) > 1:
            raise KeyLookupError("token has no kid and the issuer has several keys")
        return found

    def _may_fetch(self) -> bool:
        if self._closed:
            return False
        last = self._last_attempt
        return last is None or self._clock() - last >= self.min_refresh_interval

    async def _refresh(self) -> None:
        task = self._inflight
        if task is None:
            if self._closed:
                return
            self._last_attempt = self._clock()
            self.fetches += 1
            task = self._inflight = asyncio.ensure_future(self._fetch())
            task.add_done_callback(self._clear_inflight)
        try:
            # shield: a cancelled caller leaves the shared fetch running.
            await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and not (current is not None and current.cancelling()):
                return  # the fetch was aborted by aclose(); the caller was not cancelled
            raise

    def _clear_inflight(self, task: asyncio.Task[bool]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _fetch(self) -> bool:
        url = self.url
        try:
            body = await asyncio.wait_for(
                asyncio.to_thread(download, url, self.http_timeout, self.max_bytes),
                timeout=self.http_timeout + 1.0)
            keys = KeySet(json.loads(body), self._clock())
        except (OSError, ValueError, http.client.HTTPException, PyJWTError) as exc:
            reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, PyJWTError) \
                else "no usable signing keys"
            if self._keys is not None:
                age = self._clock() - self._keys.fetched_at
                log.warning("JWKS refresh from %s failed (%s); still using the keys "
                            "fetched %.0f s ago", safe_url(url), reason, age)
            else:
                log.warning("JWKS fetch from %s failed (%s); JWTs are refused until it "
                            "succeeds", safe_url(url), reason)
            return False
        self._keys = keys
        log.info("JWKS from %s: %d signing key(s)", safe_url(url), len(keys))
        return True

    async def aclose(self) -> None:
        self._closed = True
        task = self._inflight
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
