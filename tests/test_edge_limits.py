"""Edge limits against unauthenticated exhaustion, over raw sockets against
a real ingress: request-head size and header count (431), the head deadline
(slowloris), the per-process connection cap (503 ``server_busy``), the
open-file limit, control characters in access-log lines and no trailing-slash
redirects."""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from collections.abc import AsyncIterator

import httpx
import psutil
import pytest
import pytest_asyncio

from gandalf_common.fdlimit import connection_cap, raise_nofile_limit
from gandalf_common.logsafe import clean
from gateway_harness import TEST_KEY, free_port, pipeline

MAX_CONNECTIONS = 6


def config(port: int) -> str:
    return f"""
server:
  addr: "127.0.0.1:{port}"
  max_header_bytes: 8KiB
  max_headers: 20
  header_timeout: 1500ms
  max_connections: {MAX_CONNECTIONS}
rate_limits: {{default_rpm: 0, default_tpm: 0}}
cache: {{enabled: false}}
keys:
  - {{name: t, key: {TEST_KEY}, role: admin}}
"""


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def edge(managed_nats_url: str) -> AsyncIterator[tuple[str, int]]:
    port = free_port()
    async with pipeline(managed_nats_url, config(port), backend=False) as url:
        yield url, port


async def exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[int, dict, bytes]:
    """Send ``data`` on a new connection; the status, headers and body back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


async def test_a_huge_header_is_431_with_a_json_body(edge: tuple[str, int]) -> None:
    _url, port = edge
    request = (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 +
               b"\r\n\r\n")
    status, headers, body = await exchange(port, request)
    assert status == 431
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "headers_too_large"


async def test_a_huge_url_is_431(edge: tuple[str, int]) -> None:
    status, _h, _b = await exchange(edge[1], b"GET /" + b"a" * 20_000 +
                                    b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 431


async def test_too_many_headers_is_431(edge: tuple[str, int]) -> None:
    lines = b"".join(b"X-H%d: v\r\n" % i for i in range(40))
    status, _h, body = await exchange(edge[1], b"GET /healthz HTTP/1.1\r\nHost: x\r\n" +
                                      lines + b"\r\n")
    assert status == 431
    assert json.loads(body)["error"]["code"] == "too_many_headers"


async def test_headers_within_the_limits_are_served(edge: tuple[str, int]) -> None:
    lines = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 200) for i in range(15))
    status, _h, body = await exchange(edge[1], b"GET /healthz HTTP/1.1\r\nHost: x\r\n" +
                                      lines + b"Connection: close\r\n\r\n")
    assert (status, body) == (200, b"ok")


async def _stream_header(port: int, total: int) -> None:
    """One endless header line, 64 KiB at a time, until the server hangs up."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
    chunk = b"a" * 65536
    try:
        for _ in range(total // len(chunk)):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def test_streaming_huge_headers_does_not_grow_memory(edge: tuple[str, int]) -> None:
    process = psutil.Process()
    before = process.memory_info().rss
    # Four connections each offering 64 MiB of one header line.
    await asyncio.wait_for(asyncio.gather(*(_stream_header(edge[1], 64 << 20)
                                            for _ in range(4))), 30)
    grown = process.memory_info().rss - before
    assert grown < 32 << 20, f"RSS grew by {grown >> 20} MiB"


async def test_a_slow_head_is_closed_within_the_timeout(edge: tuple[str, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", edge[1])
    t0 = time.monotonic()
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        for _ in range(10):  # one header byte a while: never a complete head
            await asyncio.sleep(0.3)
            if writer.is_closing() or reader.at_eof():
                break
            writer.write(b"X")
        raw = await asyncio.wait_for(reader.read(-1), 5)
    except ConnectionError:
        raw = b""
    finally:
        writer.close()
    assert time.monotonic() - t0 < 3.0
    if raw:  # the 408 normally arrives before the close
        assert raw.startswith(b"HTTP/1.1 408")


async def test_an_idle_new_connection_is_closed(edge: tuple[str, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", edge[1])
    t0 = time.monotonic()
    assert await asyncio.wait_for(reader.read(-1), 5) == b""
    writer.close()
    assert time.monotonic() - t0 < 3.0


async def test_connections_over_the_cap_get_503_then_capacity_returns(
        edge: tuple[str, int]) -> None:
    url, port = edge
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(MAX_CONNECTIONS)]
    for _r, w in held:  # a started head keeps each connection open
        w.write(b"GET /healthz HTTP/1.1\r\n")
    await asyncio.sleep(0.1)
    try:
        status, headers, body = await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 503
        assert headers["retry-after"] == "1"
        assert json.loads(body)["error"]["code"] == "server_busy"
    finally:
        for _r, w in held:
            w.close()
    await asyncio.sleep(0.2)
    async with httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/healthz")).status_code == 200


async def test_a_trailing_slash_is_404_not_a_redirect(edge: tuple[str, int]) -> None:
    async with httpx.AsyncClient(base_url=edge[0]) as http:
        r = await http.get("/v1/models/", headers={"host": "evil.example"})
    assert r.status_code == 404
    assert "location" not in r.headers
    assert r.json()["error"]["code"] == "unknown_path"


async def test_control_characters_in_the_path_are_escaped_in_the_log(
        edge: tuple[str, int], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gandalf.access")
    status, _h, _b = await exchange(
        edge[1], b"GET /v1/x%0d%0a2026-01-01%20INFO%20forged HTTP/1.1\r\nHost: x\r\n"
                 b"Connection: close\r\n\r\n")
    assert status == 404
    lines = [r.getMessage() for r in caplog.records if r.name == "gandalf.access"]
    forged = [line for line in lines if "forged" in line]
    assert len(forged) == 1
    assert "\n" not in forged[0] and "\r" not in forged[0]
    assert "/v1/x\\x0d\\x0a2026-01-01 INFO forged" in forged[0]


def test_clean_escapes_every_control_character() -> None:
    assert clean("a\r\nb\x00\x1b[31m\x7f\u2028") == "a\\x0d\\x0ab\\x00\\x1b[31m\\x7f\\u2028"
    assert clean("plain /v1/models é") == "plain /v1/models é"


def test_the_open_file_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        assert raise_nofile_limit() == hard or hard == resource.RLIM_INFINITY
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] in (hard, 1 << 20)
        # Client connections are capped below it.
        assert connection_cap(10**9) < resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_every_gandalf_process_raises_its_open_file_limit() -> None:
    import subprocess
    import sys

    code = ("import resource,sys\n"
            "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (min(200, hard), hard))\n"
            "from gandalf_app import cli\n"
            "try:\n    cli.main(['version'])\nexcept SystemExit:\n    pass\n"
            "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip().endswith("True")
