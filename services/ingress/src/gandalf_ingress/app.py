"""Composition root of the ingress: config -> Starlette app on uvicorn."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

import uvicorn
from nats.aio.client import Client as NATS
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gandalf_common import contract
from gandalf_common.bus import BodyStore
from gandalf_common.config import GatewayConfig
from gandalf_common.errors import error_body
from gandalf_common.fdlimit import connection_cap
from gandalf_common.listen import parse_addr
from gandalf_common.live import LiveConfig
from gandalf_common.pricing import PriceBook

from .admin_proxy import AdminProxy
from .admission import RateLimits, build_limiter, build_reservations
from .auth import Authenticator
from .caching import Caching, build_cache
from .handlers import Gateway, ModelsEndpoint, ProxyEndpoint
from .inbox import ReplyInbox
from .metrics import render
from .middleware import EdgeMiddleware
from .native import NativeEndpoint, NativeModelsEndpoint
from .openapi import OpenApiEndpoint
from .protocol import EdgeLimits, protocol_class
from .relay import Relay
from .response_owners import ResponseOwners
from .responses import responses_routes
from .semantic import SemanticCache
from .usage import UsagePublisher, UsageRecorder

log = logging.getLogger("gandalf.ingress")

#: Readiness answers are cached this long, so probes cannot flood the bus.
READY_CACHE_S = 1.0


class Readiness:
    """Ready when NATS is connected, the configuration is loaded, a router
    answers, and a worker answers for each enabled provider."""

    def __init__(self, live: LiveConfig) -> None:
        self.live = live
        self.nc: NATS | None = None
        self.draining = False
        self._cached: tuple[float, bool, str] = (0.0, False, "starting")

    async def check(self) -> tuple[bool, str]:
        now = time.monotonic()
        if now - self._cached[0] < READY_CACHE_S:
            return self._cached[1], self._cached[2]
        ok, reason = await self._probe()
        self._cached = (now, ok, reason)
        return ok, reason

    async def _probe(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        nc = self.nc
        if nc is None or not nc.is_connected:
            return False, "nats not connected"
        if not self.live.loaded:
            return False, "configuration not loaded"
        providers = [name for name, p in self.live.providers.items() if p.enabled]
        probes = [contract.PING_ROUTER] + [contract.ping_provider(p) for p in providers]
        results = await asyncio.gather(*(nc.request(s, b"", timeout=1.0) for s in probes),
                                       return_exceptions=True)
        missing = [s.rsplit(".", 1)[-1] if s != contract.PING_ROUTER else "router"
                   for s, r in zip(probes, results, strict=True) if isinstance(r, BaseException)]
        if missing:
            return False, "no answer from: " + ", ".join(missing)
        return True, "ok"


# Complex on purpose: the route table, one branch per optional feature.
def create_app(cfg: GatewayConfig, *, nc: NATS | None = None, admin_key_sha256: str = "",  # noqa: C901
               nats_url: str = "", live: LiveConfig | None = None) -> Starlette:
    """Build the ingress app. With ``nc`` the app shares a connection owned by
    the caller; otherwise it connects to ``nats_url`` in its lifespan. A
    ``live`` config passed in is started by its owner; otherwise the app
    makes (and in managed mode starts) its own."""
    own_live = live is None
    live = live or LiveConfig(cfg)
    caching = Caching(cfg, build_cache(cfg))
    gateway = Gateway(keys=Authenticator(live, admin_key_sha256, jwt=jwt_verifier(cfg)),
                      live=live, limits=RateLimits(cfg, build_limiter(cfg)), caching=caching,
                      max_body=cfg.server.max_body_bytes,
                      write_timeout=cfg.server.write_timeout,
                      read_timeout=cfg.server.read_timeout)
    if SemanticCache.wanted(cfg):
        gateway.semantic = SemanticCache(cfg)
    live.on_change(lambda kind, _i, settings: _jwt_changed(gateway, kind, settings))
    readiness = Readiness(live)

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(_: Request) -> Response:
        ok, reason = await readiness.check()
        return PlainTextResponse("ok" if ok else f"not ready: {reason}",
                                 status_code=200 if ok else 503)

    async def metrics(_: Request) -> Response:
        body, content_type = render()
        return Response(body, media_type=content_type)

    async def not_found(request: Request, _exc: Exception) -> Response:
        return Response(error_body(404, f"unknown path {request.url.path}",
                                   code="unknown_path"),
                        status_code=404, media_type="application/json")

    async def method_not_allowed(request: Request, _exc: Exception) -> Response:
        return JSONResponse({"error": {"message": f"method {request.method} not allowed",
                                       "type": "invalid_request_error", "param": None,
                                       "code": "method_not_allowed"}}, status_code=405)

    def lifespan(app: Starlette) -> Any:
        from contextlib import asynccontextmanager

        from gandalf_common.bus import connect, on_disconnect

        @asynccontextmanager
        async def span(_: Starlette):  # type: ignore[no-untyped-def]
            conn = nc or await connect(nats_url, "gandalf-ingress")
            if own_live:
                await live.start(conn, keys=True)
            publisher = None
            if live.managed:
                # Usage and budgets need the usage service: managed mode only.
                publisher = UsagePublisher(conn)
                await publisher.start()
                gateway.usage = UsageRecorder(publisher, PriceBook.from_config(cfg))
                gateway.budgets.reservations = build_reservations(cfg)
                gateway.budgets.prices = PriceBook.from_config(cfg)
                await gateway.budgets.start(conn)
            async def on_purge(msg: Any) -> None:
                await caching.purge(msg.data)

            purges = await conn.subscribe(contract.CACHE_PURGE, cb=on_purge)
            inbox = ReplyInbox()
            await inbox.start(conn)
            on_disconnect(conn, inbox.fail_all)
            gateway.relay = Relay(conn, inbox, keepalive=cfg.server.stream_keepalive,
                                  idle_timeout=cfg.server.stream_idle_timeout)
            gateway.bodies = BodyStore(conn)
            gateway.responses = ResponseOwners(conn)
            readiness.nc = conn
            openapi.nc = conn
            app.state.readiness = readiness
            try:
                yield
            finally:
                readiness.draining = True
                if publisher is not None:
                    await publisher.stop(timeout=cfg.server.shutdown_timeout)
                await gateway.budgets.stop()
                await purges.unsubscribe()
                await caching.aclose()
                if own_live:
                    await live.stop()
                if nc is None:
                    await conn.drain()

        return span(app)

    openapi = OpenApiEndpoint()
    chat = ProxyEndpoint(gateway, contract.OP_CHAT)
    embeddings = ProxyEndpoint(gateway, contract.OP_EMBED)
    anthropic = NativeEndpoint(gateway, contract.KIND_ANTHROPIC)
    azure = NativeEndpoint(gateway, contract.KIND_AZURE)
    models = ModelsEndpoint(gateway, anthropic=NativeModelsEndpoint(gateway,
                                                                   contract.KIND_ANTHROPIC))
    routes = [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        *responses_routes(gateway),
        # Native provider APIs, through the same pipeline.
        Route("/v1/messages", anthropic, methods=["POST"]),
        Route("/v1/messages/count_tokens", anthropic, methods=["POST"]),
        Route("/v1beta/models", NativeModelsEndpoint(gateway, contract.KIND_GEMINI),
              methods=["GET"]),
        Route("/v1beta/models/{target:path}", NativeEndpoint(gateway, contract.KIND_GEMINI),
              methods=["POST"]),
        Route("/openai/deployments/{deployment}/chat/completions", azure, methods=["POST"]),
        Route("/openai/deployments/{deployment}/embeddings", azure, methods=["POST"]),
        Route("/api/tags", NativeModelsEndpoint(gateway, contract.KIND_OLLAMA),
              methods=["GET"]),
        Route("/api/{action}", NativeEndpoint(gateway, contract.KIND_OLLAMA),
              methods=["POST"]),
        Route("/admin/v1/{path:path}", AdminProxy(gateway),
              methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/readyz", readyz, methods=["GET", "HEAD"]),
    ]
    if cfg.telemetry.metrics.enabled:
        routes.append(Route("/metrics", metrics, methods=["GET"]))
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={404: not_found, 405: method_not_allowed})
    # A redirect would build its Location from the client's Host header.
    app.router.redirect_slashes = False
    app.state.readiness = readiness
    fast = {"/v1/chat/completions": chat, "/v1/embeddings": embeddings, "/v1/messages": anthropic}
    return EdgeMiddleware(app, fast,  # type: ignore[return-value]
                          max_inflight=cfg.server.max_inflight)


def jwt_verifier(cfg: GatewayConfig) -> Any:
    """The YAML's JWT settings (KV settings replace them at runtime)."""
    if not cfg.auth.jwt.enabled:
        return None
    from .jwt_auth import JwtVerifier

    return JwtVerifier.from_config(cfg.auth.jwt)


def _jwt_changed(gateway: Gateway, kind: str, settings: Any) -> None:
    if kind != "jwt":
        return
    from .jwt_auth import JwtVerifier

    old = gateway.keys.jwt
    gateway.keys.jwt = JwtVerifier(settings) if settings is not None and settings.enabled \
        else None
    if old is not None:
        task = asyncio.ensure_future(old.aclose())
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)


_BACKGROUND: set[asyncio.Future[Any]] = set()


class _QuietServer(uvicorn.Server):
    """Signals are handled by the process runtime, which drains in order."""

    def install_signal_handlers(self) -> None:
        return None

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class IngressService:
    """The HTTP edge as a runtime ``HttpService``."""

    def __init__(self, cfg: GatewayConfig, *, admin_key_sha256: str = "",
                 sock: socket.socket | None = None, live: LiveConfig | None = None) -> None:
        self.cfg = cfg
        self.admin_key_sha256 = admin_key_sha256
        self.sock = sock
        self.live = live

    async def serve(self, nc: NATS, stop: asyncio.Event) -> None:
        app = create_app(self.cfg, nc=nc, admin_key_sha256=self.admin_key_sha256,
                         live=self.live)
        host, port = parse_addr(self.cfg.server.addr)
        server_cfg = self.cfg.server
        limits = EdgeLimits(max_header_bytes=server_cfg.max_header_bytes,
                            max_headers=server_cfg.max_headers,
                            header_timeout=server_cfg.header_timeout,
                            max_connections=connection_cap(server_cfg.max_connections))
        config = uvicorn.Config(
            app, host=host, port=port, loop="none", http=protocol_class(limits),
            lifespan="on", log_config=None, access_log=False, server_header=False,
            date_header=False,
            # X-Forwarded-For is not trusted unless a deployment opts in.
            proxy_headers=False, timeout_keep_alive=server_cfg.keepalive_timeout,  # type: ignore[arg-type]
            backlog=2048,
            timeout_graceful_shutdown=int(self.cfg.server.shutdown_timeout) or None)
        server = _QuietServer(config)
        sockets = [self.sock] if self.sock is not None else None
        task = asyncio.create_task(server.serve(sockets=sockets))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait((task, stopper), return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            readiness = getattr(app, "app", app).state.readiness
            readiness.draining = True
            server.should_exit = True
            await task
        stopper.cancel()
        if task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
