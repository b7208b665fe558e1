"""A local JWKS endpoint for the JWT tests: a real HTTP server in a thread.

Serves ``/.well-known/jwks.json``; tests swap the key set (rotation), count
hits, slow it down, make it fail (HTTP 503) or serve an oversized body.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

PATH = "/.well-known/jwks.json"


class JwksServer:
    def __init__(self, keys: list[dict[str, Any]] | None = None) -> None:
        self.keys: list[dict[str, Any]] = list(keys or [])
        self.hits = 0
        #: Paths requested, in order (any path, so foreign fetches show up).
        self.paths: list[str] = []
        self.status = 200
        self.delay = 0.0
        self.body: bytes | None = None  # overrides the JSON document when set
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.hits += 1
                    server.paths.append(self.path)
                    status, delay, body = server.status, server.delay, server.body
                    document = {"keys": list(server.keys)}
                if delay:
                    time.sleep(delay)
                if self.path != PATH:
                    status, body = 404, b"{}"
                elif body is None:
                    body = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        # A short poll interval: shutdown() waits for it (0.5 s by default).
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,),
                                        daemon=True, name="jwks-server")

    @property
    def base(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def url(self) -> str:
        return self.base + PATH

    def set_keys(self, keys: list[dict[str, Any]]) -> None:
        with self._lock:
            self.keys = list(keys)

    def start(self) -> JwksServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> JwksServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# A signing key for tests: the private half signs tokens, ``jwk`` is served.
class Key:
    def __init__(self, private: Any, kid: str, alg: str) -> None:
        self.private, self.kid, self.alg = private, kid, alg
        public = private.public_key()
        algo = RSAAlgorithm if isinstance(private, rsa.RSAPrivateKey) else ECAlgorithm
        self.jwk: dict[str, Any] = {**algo.to_jwk(public, as_dict=True), "kid": kid,
                                    "alg": alg, "use": "sig"}
        self.public_pem = public.public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, claims: dict[str, Any], *, kid: str | None = "default",
             alg: str | None = None, headers: dict[str, Any] | None = None) -> str:
        hdr = dict(headers or {})
        if kid is not None:
            hdr["kid"] = self.kid if kid == "default" else kid
        return jwt.encode(claims, self.private, algorithm=alg or self.alg, headers=hdr)
