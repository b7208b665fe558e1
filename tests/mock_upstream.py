"""In-repo mock of the OpenAI HTTP API with fault injection.

Used by the gateway's end-to-end tests as the upstream provider. It speaks the real
OpenAI wire format (the official ``openai`` SDK can talk to it directly) and records
every request, including whether the client closed the connection before the
response was finished.

Run it in-process (background thread with its own event loop)::

    with MockUpstream(api_key="sk-test") as mock:
        client = openai.OpenAI(base_url=mock.base_url, api_key="sk-test")
        ...
        assert mock.requests[0].body["model"] == "gpt-4o"

or standalone::

    python tests/mock_upstream.py --port 8100 [--host 127.0.0.1] [--api-key KEY]

Fault directives (in the requested ``model`` name, stateless)
--------------------------------------------------------------
The model name is split on ``;``, ``+``, ``/``, ``,`` and whitespace; every token
that is exactly one of the directives below takes effect, any other token is
ignored (so ``gpt-4o;fail-500`` and ``mock/delay-200+chunk-delay-50`` work):

``fail-<status>``         respond with that HTTP status and an OpenAI error body
``retry-after-<s>``       add ``Retry-After: <s>`` to the (error) response
``delay-<ms>``            wait before the first byte (before response headers)
``chunk-delay-<ms>``      wait between stream chunks
``cut-<n>``               stream: send n ``data:`` events then abort the TCP connection
                          (no ``[DONE]``); non-stream: send headers + half the body,
                          then abort
``hang``                  never respond; keep the connection open until the client
                          closes it (or the mock stops)
``words-<n>``             the reply has exactly n words
``ok``                    no-op

Programmatic faults: ``mock.set_fault(model_or_None, status=..., ...)`` (same fields
as :class:`Fault`), optionally limited with ``times=N``; see :meth:`MockUpstream.set_fault`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

__all__ = [
    "DEFAULT_EMBEDDING_DIMENSIONS",
    "MOCK_MODELS",
    "Fault",
    "FaultRule",
    "MockUpstream",
    "RequestRecord",
    "count_prompt_tokens",
    "mock_embedding",
    "mock_reply_words",
    "parse_model_faults",
]

from mock_anthropic import AnthropicRoutes
from mock_cloud import CloudRoutes
from mock_data import (
    DEFAULT_EMBEDDING_DIMENSIONS,
    MOCK_MODELS,
    _error_body,
    _error_type_and_code,
    count_prompt_tokens,
    mock_embedding,
    mock_reply_words,
)
from mock_faults import Fault, FaultRule, RequestRecord, _ClientGone, parse_model_faults
from mock_gemini import GeminiRoutes
from mock_ollama import OllamaRoutes
from mock_openai import _CLOSED_KEY, _RECORD_KEY, OpenAIRoutes
from mock_responses import ResponsesRoutes

_POLL_INTERVAL = 0.01  # seconds between transport-liveness polls
#: Paths of the OpenAI wire format: they take ``Authorization: Bearer <api_key>``.
_OPENAI_PATHS = ("/v1/chat/", "/v1/embeddings", "/v1/models", "/v1/responses")





# -------------------------------------------------------------------------- server


class MockUpstream(OpenAIRoutes, ResponsesRoutes, AnthropicRoutes, GeminiRoutes, OllamaRoutes,
                   CloudRoutes):
    """Mock OpenAI API server running in a background thread with its own event loop.

    ``MockUpstream(host="127.0.0.1", port=0, api_key=None)``; ``port=0`` picks a free port.
    Use ``start()``/``stop()`` or ``with MockUpstream() as mock:`` (also ``async with``).
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, api_key: str | None = None
    ) -> None:
        self.host = host
        self.api_key = api_key
        self._requested_port = port
        self._port: int | None = None
        self._lock = threading.Lock()
        self._requests: list[RequestRecord] = []
        self._rules: list[FaultRule] = []
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._closed_events: dict[int, asyncio.Event] = {}
        self._startup_error: BaseException | None = None

    # ---------------------------------------------------------------- lifecycle

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("MockUpstream is not started")
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` (no ``/v1``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://host:port/v1`` — what an OpenAI client's ``base_url`` should be."""
        return f"{self.url}/v1"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> MockUpstream:
        if self._thread is not None:
            raise RuntimeError("MockUpstream already started")
        ready = threading.Event()
        self._startup_error = None
        self._thread = threading.Thread(
            target=self._thread_main, args=(ready,), name="mock-upstream", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("MockUpstream did not start in time")
        if self._startup_error is not None:
            self._thread.join(timeout)
            self._thread = None
            raise RuntimeError("MockUpstream failed to start") from self._startup_error
        return self

    def stop(self, timeout: float = 5.0) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            with contextlib.suppress(Exception):
                fut.result(timeout)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._thread = None
        self._loop = None

    def __enter__(self) -> MockUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> MockUpstream:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.stop()

    def _thread_main(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._setup())
        except BaseException as exc:
            self._startup_error = exc
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _setup(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024**2)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._list_models)
        app.router.add_get("/v1/models/{model_id:.+}", self._get_model)
        # Each provider's wire format checks its own credentials (see the mixins).
        self._add_anthropic_routes(app)
        self._add_gemini_routes(app)
        self._add_ollama_routes(app)
        self._add_cloud_routes(app)
        self._add_responses_routes(app)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        self._port = sock.getsockname()[1]
        site = web.SockSite(runner, sock)
        await site.start()
        self._runner = runner

    async def _shutdown(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------ state access

    @property
    def requests(self) -> list[RequestRecord]:
        """Snapshot list of all received requests (records are updated in place)."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, path: str) -> list[RequestRecord]:
        """Received requests whose path equals ``path`` (``/v1/...`` or without ``/v1``)."""
        if not path.startswith("/v1"):
            path = "/v1" + (path if path.startswith("/") else "/" + path)
        return [r for r in self.requests if r.path == path]

    def requests_to_prefix(self, prefix: str) -> list[RequestRecord]:
        """Received requests whose path starts with ``prefix`` (any API)."""
        return [r for r in self.requests if r.path.startswith(prefix)]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def reset(self) -> None:
        """Forget recorded requests and programmatic faults."""
        with self._lock:
            self._requests.clear()
            self._rules.clear()

    def set_fault(
        self,
        model: str | None,
        *,
        times: int | None = None,
        status: int | None = None,
        retry_after: int | None = None,
        delay_ms: int = 0,
        chunk_delay_ms: int = 0,
        cut: int | None = None,
        hang: bool = False,
        words: int | None = None,
    ) -> FaultRule:
        """Apply a fault to requests for ``model`` (exact request model) or to all requests
        (``model=None``) of every wire format that takes faults (OpenAI and Azure chat and
        embeddings, Anthropic direct/Vertex/Bedrock, Gemini, Ollama: each asks
        ``_take_fault``); only for the next ``times`` matching requests if given. The most
        recently set matching rule wins (a model-specific rule before a global one); its
        fields override directives parsed from the model name. Errors take each format's
        shape."""
        fault = Fault(
            status=status,
            retry_after=retry_after,
            delay_ms=delay_ms,
            chunk_delay_ms=chunk_delay_ms,
            cut=cut,
            hang=hang,
            words=words,
        )
        if times is not None and times < 1:
            raise ValueError("times must be >= 1")
        rule = FaultRule(model=model, fault=fault, times=times)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear_faults(self) -> None:
        with self._lock:
            self._rules.clear()

    @property
    def faults(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def _take_fault(self, model: str | None) -> Fault:
        fault = parse_model_faults(model)
        with self._lock:
            rule = next((r for r in reversed(self._rules) if r.model == model), None)
            if rule is None:
                rule = next((r for r in reversed(self._rules) if r.model is None), None)
            if rule is None:
                return fault
            if rule.times is not None:
                rule.times -= 1
                if rule.times <= 0:
                    self._rules.remove(rule)
        return fault.merged(rule.fault)

    # ------------------------------------------------------------------ waiting

    @staticmethod
    def wait_for(
        predicate: Callable[[], bool], timeout: float = 1.0, interval: float = 0.005
    ) -> bool:
        """Poll ``predicate`` until true or ``timeout`` (seconds); returns the final result.
        Blocking: in async tests use :meth:`wait_for_async` so the client loop keeps running."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return bool(predicate())
            time.sleep(interval)

    @staticmethod
    async def wait_for_async(
        predicate: Callable[[], bool], timeout: float = 1.0, interval: float = 0.005
    ) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return bool(predicate())
            await asyncio.sleep(interval)

    def _resolve(self, which: int | RequestRecord) -> Callable[[], RequestRecord | None]:
        if isinstance(which, RequestRecord):
            return lambda: which

        def get() -> RequestRecord | None:
            reqs = self.requests
            try:
                return reqs[which]
            except IndexError:
                return None

        return get

    def wait_closed(self, which: int | RequestRecord, timeout: float = 1.0) -> bool:
        """Wait until request ``which`` (index into ``requests`` or a record) has
        ``client_closed_at`` set; returns whether it did within ``timeout``."""
        get = self._resolve(which)

        def closed() -> bool:
            rec = get()
            return rec is not None and rec.client_closed_at is not None

        return self.wait_for(closed, timeout)

    async def wait_closed_async(self, which: int | RequestRecord, timeout: float = 1.0) -> bool:
        get = self._resolve(which)

        def closed() -> bool:
            rec = get()
            return rec is not None and rec.client_closed_at is not None

        return await self.wait_for_async(closed, timeout)

    def wait_requests(self, count: int, timeout: float = 1.0) -> bool:
        """Wait until at least ``count`` requests have been received."""
        return self.wait_for(lambda: len(self.requests) >= count, timeout)

    async def wait_requests_async(self, count: int, timeout: float = 1.0) -> bool:
        return await self.wait_for_async(lambda: len(self.requests) >= count, timeout)

    # --------------------------------------------------------------- internals

    @web.middleware
    async def _middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Any],
    ) -> web.StreamResponse:
        raw = await request.read()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        with self._lock:
            record = RequestRecord(
                index=len(self._requests),
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers=headers,
                body=body,
                raw_body=raw,
                received_at=time.monotonic(),
                wall_time=time.time(),
            )
            self._requests.append(record)
        request[_RECORD_KEY] = record
        closed = asyncio.Event()
        request[_CLOSED_KEY] = closed
        watcher = asyncio.create_task(self._watch_transport(request, record, closed))
        try:
            if self.api_key is not None and request.path.startswith(_OPENAI_PATHS) and (
                headers.get("authorization") != f"Bearer {self.api_key}"
            ):
                resp: web.StreamResponse = self._json_error(
                    401,
                    "Incorrect API key provided.",
                    "invalid_request_error",
                    "invalid_api_key",
                )
            else:
                try:
                    resp = await handler(request)
                except _ClientGone:
                    # Nothing more can be sent; record.status stays as it was (None if the
                    # client left before response headers were sent).
                    return web.Response(status=499)
                except web.HTTPNotFound:
                    resp = self._json_error(
                        404,
                        f"Unknown request URL: {request.method} {request.path}.",
                        "invalid_request_error",
                        "unknown_url",
                    )
                except web.HTTPMethodNotAllowed:
                    resp = self._json_error(
                        405,
                        f"Method not allowed: {request.method} {request.path}.",
                        "invalid_request_error",
                        None,
                    )
            if record.status is None:
                record.status = resp.status
            if not resp.prepared and record.client_closed_at is None and not closed.is_set():
                # Send plain responses here so finished_at is after the last byte.
                try:
                    await resp.prepare(request)
                    record.first_byte_at = time.monotonic()
                    await resp.write_eof()
                except ConnectionError:
                    self._mark_closed(record, closed)
            return resp
        finally:
            record.finished_at = time.monotonic()
            watcher.cancel()

    @staticmethod
    def _mark_closed(record: RequestRecord, closed: asyncio.Event) -> None:
        if record.client_closed_at is None and not record.server_aborted:
            record.client_closed_at = time.monotonic()
        closed.set()

    async def _watch_transport(
        self, request: web.Request, record: RequestRecord, closed: asyncio.Event
    ) -> None:
        """Poll the connection until the handler finishes; flag a client-side close."""
        while record.finished_at is None:
            transport = request.transport
            if transport is None or transport.is_closing():
                if not record.server_aborted:
                    self._mark_closed(record, closed)
                return
            await asyncio.sleep(_POLL_INTERVAL)

    async def _sleep_or_gone(self, request: web.Request, seconds: float | None) -> None:
        """Sleep ``seconds`` (forever if None); raise _ClientGone if the client disconnects
        meanwhile. Returns early (no error) when the mock is stopping."""
        closed: asyncio.Event = request[_CLOSED_KEY]
        assert self._stopping is not None
        waiters = [
            asyncio.ensure_future(closed.wait()),
            asyncio.ensure_future(self._stopping.wait()),
        ]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        if closed.is_set():
            raise _ClientGone

    async def _apply_pre_response_faults(
        self, request: web.Request, fault: Fault
    ) -> web.Response | None:
        if fault.delay_ms:
            await self._sleep_or_gone(request, fault.delay_ms / 1000)
        if fault.hang:
            await self._sleep_or_gone(request, None)
            self._abort(request)  # the mock is stopping: drop the connection
            raise _ClientGone
        if fault.status is not None:
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after else None
            err_type, code = _error_type_and_code(fault.status)
            return self._json_error(
                fault.status,
                f"mock upstream error {fault.status}",
                err_type,
                code,
                headers=headers,
            )
        return None

    @staticmethod
    def _json_error(
        status: int,
        message: str,
        err_type: str,
        code: str | None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        return web.json_response(
            _error_body(message, err_type, code), status=status, headers=headers
        )

    def _bad_request(self, message: str, param: str | None = None) -> web.Response:
        body = _error_body(message, "invalid_request_error", None)
        body["error"]["param"] = param
        return web.json_response(body, status=400)

    async def _send_cut_body(
        self, request: web.Request, status: int, payload: dict[str, Any]
    ) -> web.StreamResponse:
        """Send headers (full Content-Length) and half the JSON body, then abort."""
        record: RequestRecord = request[_RECORD_KEY]
        data = json.dumps(payload).encode()
        resp = web.StreamResponse(status=status)
        resp.content_type = "application/json"
        resp.content_length = len(data)
        record.status = status
        try:
            await resp.prepare(request)
            record.first_byte_at = time.monotonic()
            await resp.write(data[: len(data) // 2])
        except ConnectionError:
            self._mark_closed(record, request[_CLOSED_KEY])
            return resp
        self._abort(request)
        return resp

    async def _write_stream(
        self,
        request: web.Request,
        fault: Fault,
        resp: web.StreamResponse,
        pieces: Iterable[bytes],
        *,
        tail: bytes = b"",
    ) -> web.StreamResponse:
        """Send the headers of ``resp``, then each piece (one stream event, line or frame;
        counted in ``chunks_sent``), then ``tail`` (uncounted), then end the response.

        ``cut-N`` aborts the connection before piece N+1 (``tail`` is not sent);
        ``chunk-delay`` waits before every piece but the first. Raises ``_ClientGone``
        when the client leaves between pieces; a write that fails marks it closed."""
        record: RequestRecord = request[_RECORD_KEY]
        closed: asyncio.Event = request[_CLOSED_KEY]
        record.status = resp.status
        try:
            await resp.prepare(request)
            record.first_byte_at = time.monotonic()
            for i, piece in enumerate(pieces):
                if fault.cut is not None and record.chunks_sent >= fault.cut:
                    self._abort(request)
                    return resp
                if i > 0 and fault.chunk_delay_ms:
                    await self._sleep_or_gone(request, fault.chunk_delay_ms / 1000)
                if closed.is_set():
                    raise _ClientGone
                await resp.write(piece)
                record.chunks_sent += 1
            if tail:
                await resp.write(tail)
            await resp.write_eof()
        except ConnectionError:
            self._mark_closed(record, closed)
        return resp

    @staticmethod
    def _abort(request: web.Request) -> None:
        record: RequestRecord = request[_RECORD_KEY]
        record.server_aborted = True
        transport = request.transport
        if transport is not None:
            transport.abort()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Mock OpenAI upstream with fault injection")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    args = parser.parse_args(argv)
    mock = MockUpstream(args.host, args.port, api_key=args.api_key).start()
    print(f"mock upstream listening on {mock.base_url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        mock.stop()


if __name__ == "__main__":
    main()
