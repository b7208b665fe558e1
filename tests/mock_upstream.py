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
import base64
import contextlib
import dataclasses
import hashlib
import itertools
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
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

DEFAULT_EMBEDDING_DIMENSIONS = 8
MOCK_MODELS: tuple[str, ...] = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-3.5-turbo",
    "text-embedding-3-small",
    "text-embedding-3-large",
)
_CREATED = 1_700_000_000
_POLL_INTERVAL = 0.01  # seconds between transport-liveness polls

# --------------------------------------------------------------------------- faults


@dataclasses.dataclass(frozen=True)
class Fault:
    """What to do wrong for one request. The default instance means "behave normally"."""

    status: int | None = None  # respond with this HTTP error status
    retry_after: int | None = None  # Retry-After header value (seconds)
    delay_ms: int = 0  # delay before the first byte
    chunk_delay_ms: int = 0  # delay between stream chunks
    cut: int | None = None  # abort the connection after n stream events / half the body
    hang: bool = False  # never respond
    words: int | None = None  # reply length in words

    def merged(self, other: Fault) -> Fault:
        """``self`` overridden by every non-default field of ``other``."""
        default = Fault()
        changes = {
            f.name: getattr(other, f.name)
            for f in dataclasses.fields(Fault)
            if getattr(other, f.name) != getattr(default, f.name)
        }
        return dataclasses.replace(self, **changes)

    @property
    def is_noop(self) -> bool:
        return self == Fault()


_DIRECTIVE_RE = re.compile(
    r"(?P<name>fail|retry-after|chunk-delay|delay|cut|words)-(?P<value>\d+)|(?P<flag>hang|ok)"
)
_SPLIT_RE = re.compile(r"[;+/,\s]+")


def parse_model_faults(model: str | None) -> Fault:
    """Parse the fault directives embedded in a model name (see module docstring)."""
    fault = Fault()
    if not model:
        return fault
    for token in _SPLIT_RE.split(model.strip().lower()):
        m = _DIRECTIVE_RE.fullmatch(token)
        if m is None:
            continue
        if m.group("flag") == "hang":
            fault = dataclasses.replace(fault, hang=True)
            continue
        if m.group("flag") == "ok":
            continue
        name, value = m.group("name"), int(m.group("value"))
        if name == "fail":
            fault = dataclasses.replace(fault, status=value)
        elif name == "retry-after":
            fault = dataclasses.replace(fault, retry_after=value)
        elif name == "delay":
            fault = dataclasses.replace(fault, delay_ms=value)
        elif name == "chunk-delay":
            fault = dataclasses.replace(fault, chunk_delay_ms=value)
        elif name == "cut":
            fault = dataclasses.replace(fault, cut=value)
        elif name == "words":
            fault = dataclasses.replace(fault, words=value)
    return fault


@dataclasses.dataclass
class FaultRule:
    """A programmatic fault: applies to ``model`` (exact match) or to every request if None."""

    model: str | None
    fault: Fault
    times: int | None = None  # remaining applications; None = unlimited


# ------------------------------------------------------------------------- records


@dataclasses.dataclass
class RequestRecord:
    """One received HTTP request. Times are ``time.monotonic()`` values."""

    index: int
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lowercase names
    body: Any  # parsed JSON body, or None (absent / not JSON)
    raw_body: bytes
    received_at: float
    wall_time: float  # time.time() at receipt
    model: str | None = None
    stream: bool = False
    fault: Fault | None = None  # effective fault applied (None if not a faultable endpoint)
    status: int | None = None  # status sent (or about to be sent) to the client
    first_byte_at: float | None = None  # when response headers were sent
    finished_at: float | None = None  # when the handler finished (response complete or aborted)
    chunks_sent: int = 0  # SSE "data:" events written (including [DONE])
    client_closed_at: float | None = None  # client closed before the response was finished
    server_aborted: bool = False  # the mock deliberately aborted the connection (cut-N)

    @property
    def client_closed(self) -> bool:
        return self.client_closed_at is not None

    @property
    def completed(self) -> bool:
        """The response was sent in full (no client close, no deliberate abort)."""
        return (
            self.finished_at is not None
            and self.client_closed_at is None
            and not self.server_aborted
        )


# --------------------------------------------------------------- deterministic data


def _content_text(content: Any) -> str:
    """Text of an OpenAI message ``content`` (string, list of parts or None)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return " ".join(parts)
    return str(content)


def count_prompt_tokens(messages: list[Any]) -> int:
    """Mock prompt token count: total characters of all message contents // 4 + 1."""
    total = sum(len(_content_text(m.get("content"))) for m in messages if isinstance(m, dict))
    return total // 4 + 1


def _last_user_text(messages: list[Any]) -> str:
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            return _content_text(m.get("content"))
    return ""


def mock_reply_words(messages: list[Any], words: int | None = None) -> list[str]:
    """Words of the mock reply: ``mock reply to: <last user text>`` (exactly ``words`` long
    when given: truncated, or padded with ``word4 word5 ...``)."""
    base = ["mock", "reply", "to:", *_last_user_text(messages).split()]
    if words is None:
        return base
    if words <= len(base):
        return base[:words]
    return base + [f"word{i}" for i in range(len(base), words)]


def mock_embedding(text: str, dimensions: int = DEFAULT_EMBEDDING_DIMENSIONS) -> list[float]:
    """Deterministic unit vector derived from sha256(text); values are float32-exact."""
    raw: list[float] = []
    for block in itertools.count():
        digest = hashlib.sha256(f"{block}:{text}".encode()).digest()
        for (value,) in struct.iter_unpack(">I", digest):
            raw.append(value / 0xFFFFFFFF * 2.0 - 1.0)
            if len(raw) == dimensions:
                break
        if len(raw) == dimensions:
            break
    norm = sum(v * v for v in raw) ** 0.5 or 1.0
    packed = struct.pack(f"<{dimensions}f", *(v / norm for v in raw))
    return list(struct.unpack(f"<{dimensions}f", packed))


def _error_body(message: str, err_type: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": err_type, "param": None, "code": code}}


def _error_type_and_code(status: int) -> tuple[str, str | None]:
    """OpenAI-style error ``type``/``code`` for a mock error status."""
    if status == 429:
        return "requests", "rate_limit_exceeded"  # what OpenAI sends for rate limits
    if 400 <= status < 500:
        return "invalid_request_error", None
    return "server_error", None


_RECORD_KEY: web.RequestKey[RequestRecord] = web.RequestKey("mock_record", RequestRecord)
_CLOSED_KEY: web.RequestKey[asyncio.Event] = web.RequestKey("mock_closed", asyncio.Event)


class _ClientGone(Exception):
    """The client closed the connection; stop handling the request."""


# -------------------------------------------------------------------------- server


class MockUpstream:
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
        (``model=None``) on ``/v1/chat/completions`` and ``/v1/embeddings``; only for the
        next ``times`` matching requests if given. The most recently set matching rule wins
        (a model-specific rule before a global one); its fields override directives parsed
        from the model name."""
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
            if self.api_key is not None and headers.get("authorization") != (
                f"Bearer {self.api_key}"
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

    @staticmethod
    def _abort(request: web.Request) -> None:
        record: RequestRecord = request[_RECORD_KEY]
        record.server_aborted = True
        transport = request.transport
        if transport is not None:
            transport.abort()

    # --------------------------------------------------------------- endpoints

    async def _list_models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": _CREATED, "owned_by": "mock"}
                    for m in MOCK_MODELS
                ],
            }
        )

    async def _get_model(self, request: web.Request) -> web.Response:
        model_id = request.match_info["model_id"]
        return web.json_response(
            {"id": model_id, "object": "model", "created": _CREATED, "owned_by": "mock"}
        )

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        record: RequestRecord = request[_RECORD_KEY]
        body = record.body
        if not isinstance(body, dict):
            return self._bad_request("We could not parse the JSON body of your request.")
        model = body.get("model")
        messages = body.get("messages")
        if not isinstance(model, str) or not model:
            return self._bad_request("you must provide a model parameter", "model")
        if not isinstance(messages, list) or not messages:
            return self._bad_request("'messages' must be a non-empty array", "messages")
        stream = bool(body.get("stream"))
        record.model, record.stream = model, stream
        fault = self._take_fault(model)
        record.fault = fault
        error = await self._apply_pre_response_faults(request, fault)
        if error is not None:
            return error

        words = mock_reply_words(messages, fault.words)
        finish_reason = "stop"
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(max_tokens, int) and 0 < max_tokens < len(words):
            words, finish_reason = words[:max_tokens], "length"
        prompt_tokens = count_prompt_tokens(messages)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words),
        }
        completion_id = f"chatcmpl-mock-{next(self._ids)}"
        created = int(time.time())
        if stream:
            stream_options = body.get("stream_options")
            include_usage = isinstance(stream_options, dict) and bool(
                stream_options.get("include_usage")
            )
            return await self._stream_chat(
                request,
                fault,
                completion_id,
                created,
                model,
                words,
                finish_reason,
                usage if include_usage else None,
            )
        payload = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " ".join(words), "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage,
        }
        if fault.cut is not None:
            return await self._send_cut_body(request, 200, payload)
        return web.json_response(payload)

    async def _stream_chat(
        self,
        request: web.Request,
        fault: Fault,
        completion_id: str,
        created: int,
        model: str,
        words: list[str],
        finish_reason: str,
        usage: dict[str, int] | None,
    ) -> web.StreamResponse:
        record: RequestRecord = request[_RECORD_KEY]
        closed: asyncio.Event = request[_CLOSED_KEY]

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            c: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_mock",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if usage is not None:
                c["usage"] = None
            return c

        events: list[str] = [json.dumps(chunk({"role": "assistant", "content": ""}, None))]
        events += [
            json.dumps(chunk({"content": w if i == 0 else " " + w}, None))
            for i, w in enumerate(words)
        ]
        events.append(json.dumps(chunk({}, finish_reason)))
        if usage is not None:
            usage_chunk = chunk({}, None)
            usage_chunk["choices"] = []
            usage_chunk["usage"] = usage
            events.append(json.dumps(usage_chunk))
        events.append("[DONE]")

        resp = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            },
        )
        record.status = 200
        try:
            await resp.prepare(request)
            record.first_byte_at = time.monotonic()
            for i, event in enumerate(events):
                if fault.cut is not None and record.chunks_sent >= fault.cut:
                    self._abort(request)
                    return resp
                if i > 0 and fault.chunk_delay_ms:
                    await self._sleep_or_gone(request, fault.chunk_delay_ms / 1000)
                if closed.is_set():
                    raise _ClientGone
                await resp.write(f"data: {event}\n\n".encode())
                record.chunks_sent += 1
            await resp.write_eof()
        except ConnectionError:
            self._mark_closed(record, closed)
        return resp

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        record: RequestRecord = request[_RECORD_KEY]
        body = record.body
        if not isinstance(body, dict):
            return self._bad_request("We could not parse the JSON body of your request.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return self._bad_request("you must provide a model parameter", "model")
        inputs = _normalize_embedding_input(body.get("input"))
        if inputs is None:
            return self._bad_request(
                "'input' must be a string, an array of strings, or token arrays", "input"
            )
        dims = body.get("dimensions", DEFAULT_EMBEDDING_DIMENSIONS)
        if dims is None:
            dims = DEFAULT_EMBEDDING_DIMENSIONS
        if not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= 65536:
            return self._bad_request("'dimensions' must be a positive integer", "dimensions")
        encoding_format = body.get("encoding_format") or "float"
        if encoding_format not in ("float", "base64"):
            return self._bad_request(
                "'encoding_format' must be 'float' or 'base64'", "encoding_format"
            )
        record.model = model
        fault = self._take_fault(model)
        record.fault = fault
        error = await self._apply_pre_response_faults(request, fault)
        if error is not None:
            return error

        data: list[dict[str, Any]] = []
        prompt_tokens = 0
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                text = item
                prompt_tokens += len(text) // 4 + 1
            else:
                text = " ".join(str(t) for t in item)
                prompt_tokens += len(item)
            vector = mock_embedding(text, dims)
            embedding: list[float] | str = (
                base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
                if encoding_format == "base64"
                else vector
            )
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        payload = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
        if fault.cut is not None:
            return await self._send_cut_body(request, 200, payload)
        return web.json_response(payload)


def _normalize_embedding_input(value: Any) -> list[str | list[int]] | None:
    """str | list[str] | list[int] | list[list[int]] -> list of items, None if invalid."""

    def is_tokens(v: Any) -> bool:
        return (
            isinstance(v, list)
            and bool(v)
            and all(isinstance(t, int) and not isinstance(t, bool) for t in v)
        )

    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        return None
    if is_tokens(value):
        return [value]
    items: list[str | list[int]] = []
    for v in value:
        if isinstance(v, str) or is_tokens(v):
            items.append(v)
        else:
            return None
    return items


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
