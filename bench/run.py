"""Gandalf benchmark: static nginx OpenAI mock, measured directly and through
``gandalf up``, in the same run.

    .venv/bin/python bench/run.py [--processes N] [--duration S] [--soak]
                                  [--only nonstream|stream]

See bench/README.md for what is measured. Everything runs on 127.0.0.1; the
load generators (wrk, the Python time-to-first-chunk client) share the CPU
with the gateway, as they would on any single-machine benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
KEY = "gnd_benchkey"
HOST = "127.0.0.1"
SAMPLE_EVERY = 0.25
#: Every Nth sample re-walks the process tree and reads PSS as well (2 s).
FULL_SAMPLE_EVERY = 8

CHAT_JSON = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-4o-mini",
    "choices": [{
        "index": 0,
        "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
        "logprobs": None,
        "finish_reason": "stop",
    }],
    "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
}


def _sse_body() -> str:
    def chunk(delta: dict[str, Any], finish: str | None = None,
              usage: dict[str, int] | None = None) -> str:
        obj: dict[str, Any] = {
            "id": "chatcmpl-bench", "object": "chat.completion.chunk",
            "created": 1700000000, "model": "gpt-4o-mini",
            "choices": [] if usage else [{"index": 0, "delta": delta,
                                          "logprobs": None, "finish_reason": finish}],
        }
        if usage:
            obj["usage"] = usage
        return "data: " + json.dumps(obj, separators=(",", ":")) + "\n\n"

    parts = [chunk({"role": "assistant", "content": ""})]
    parts += [chunk({"content": w}) for w in ("Hello", "!", " How", " can", " I", " help?")]
    parts.append(chunk({}, "stop"))
    parts.append(chunk({}, usage={"prompt_tokens": 9, "completion_tokens": 6,
                                  "total_tokens": 15}))
    parts.append("data: [DONE]\n\n")
    return "".join(parts)


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- tools


def find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        p = Path(d) / name
        if p.exists() and os.access(p, os.X_OK):
            return str(p)
    return None


def ensure_tools() -> tuple[str, str]:
    missing = [t for t in ("nginx", "wrk") if find_tool(t) is None]
    if missing:
        if os.geteuid() != 0:
            raise SystemExit(f"bench: {', '.join(missing)} missing and not root; "
                             f"install them: apt-get install -y {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", *missing]):
            say("missing " + ", ".join(missing) + "; running: " + " ".join(cmd))
            subprocess.run(cmd, check=True, env=env)
    nginx, wrk = find_tool("nginx"), find_tool("wrk")
    if not nginx or not wrk:
        raise SystemExit("bench: nginx/wrk still not found after install")
    return nginx, wrk


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except OSError:
        return "?"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "?"


def machine_info() -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = psutil.virtual_memory().total / 2**30
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--",
                            "libs", "services"], capture_output=True, text=True).stdout.strip()
    return {
        "cpu": cpu,
        "cores": f"{os.cpu_count()} logical ({psutil.cpu_count(logical=False)} physical)",
        "memory": f"{mem:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "commit": commit + (" (gateway code has uncommitted changes)" if dirty else ""),
    }


# --------------------------------------------------------------------------- processes


class Nginx:
    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.prefix = workdir / "nginx"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.prefix.mkdir(parents=True)
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"):
            (self.prefix / sub).mkdir()
        sse = _sse_body().replace("\n", "\\n")
        chat = json.dumps(CHAT_JSON, separators=(",", ":"))
        assert "'" not in sse and "'" not in chat
        conf = ((BENCH / "nginx.conf.tmpl").read_text()
                .replace("@PREFIX@", str(self.prefix)).replace("@PORT@", str(self.port))
                .replace("@CHAT_JSON@", chat).replace("@SSE_BODY@", sse))
        path = self.prefix / "nginx.conf"
        path.write_text(conf)
        cmd = [self.binary, "-p", str(self.prefix), "-c", str(path)]
        say(f"starting nginx mock on {HOST}:{self.port}: {' '.join(cmd)}")
        log = (self.prefix / "stderr.log").open("wb")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("nginx exited: " + (self.prefix / "stderr.log").read_text()
                                   + (self.prefix / "error.log").read_text())
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.5):
                return
            time.sleep(0.05)
        raise RuntimeError("nginx did not start listening")

    def url(self, stream: bool) -> str:
        return f"http://{HOST}:{self.port}{'/stream' if stream else ''}/v1/chat/completions"

    def rss_mib(self) -> float:
        if self.proc is None:
            return 0.0
        return tree_memory(self.proc.pid, None)[0] / 2**20

    def stop(self) -> None:
        stop_process(self.proc, "nginx", 10)


def stop_process(proc: subprocess.Popen[bytes] | None, name: str, timeout: float) -> float:
    """SIGTERM, wait up to ``timeout``, then SIGKILL the group; seconds it took."""
    if proc is None or proc.poll() is not None:
        return 0.0
    say(f"stopping {name} (pid {proc.pid}, SIGTERM)")
    t0 = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        say(f"{name} did not stop within {timeout:.0f}s; killing its process group")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    took = time.monotonic() - t0
    say(f"{name} stopped after {took:.1f}s (exit {proc.returncode})")
    return took


GANDALF_CONFIG = """\
# Generated by bench/run.py
server:
  addr: "{addr}"
providers:
  - name: upstream
    type: openai
    base_url: http://{host}:{nginx_port}/v1
    api_key: sk-bench
  - name: upstream-stream
    type: openai
    base_url: http://{host}:{nginx_port}/stream/v1
    api_key: sk-bench
routes:
  - model_alias: bench
    targets:
      - provider: upstream
        model: gpt-4o-mini
  - model_alias: bench-stream
    targets:
      - provider: upstream-stream
        model: gpt-4o-mini
keys:
  - name: bench
    key: {key}
    role: admin
# Limits high enough never to refuse, so the limiter's cost is measured.
rate_limits:
  default_rpm: 100000000
  default_tpm: 1000000000
"""


class Gandalf:
    def __init__(self, workdir: Path, nginx_port: int, processes: int, log_level: str,
                 redis: str = "") -> None:
        self.port = free_port()
        self.data_dir = workdir / "gandalf-data"
        self.config = workdir / "gandalf.yaml"
        self.log = workdir / "gandalf.log"
        self.processes = processes
        self.log_level = log_level
        text = GANDALF_CONFIG.format(addr=f"{HOST}:{self.port}", host=HOST,
                                     nginx_port=nginx_port, key=KEY)
        if redis:
            # Shared limiter and cache in Redis (the multi-replica setup).
            text = text.replace("rate_limits:\n", "redis:\n  url: " + redis
                                + "\ncache:\n  backend: redis\nrate_limits:\n  backend: redis\n")
        self.config.write_text(text)
        self.proc: subprocess.Popen[bytes] | None = None
        self.cmd: list[str] = []

    def start(self, timeout: float = 120) -> float:
        exe = Path(sys.executable).parent / "gandalf"
        self.cmd = [str(exe) if exe.exists() else "gandalf", "up", "--config", str(self.config),
                    "--data-dir", str(self.data_dir)]
        if self.log_level:
            self.cmd += ["--log-level", self.log_level]
        if self.processes:
            self.cmd += ["--processes", str(self.processes)]
        say("starting: " + " ".join(self.cmd))
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, stdout=self.log.open("wb"),
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=REPO, start_new_session=True)
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gandalf up exited ({self.proc.returncode}):\n"
                                   + self.tail())
            if "gandalf: ready on" in self.log.read_text(errors="replace"):
                took = time.monotonic() - t0
                say(f"gandalf ready after {took:.1f}s")
                return took
            time.sleep(0.1)
        raise RuntimeError(f"gandalf not ready within {timeout:.0f}s:\n" + self.tail())

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def url(self, stream: bool) -> str:  # same path for both: the model selects streaming
        return f"http://{HOST}:{self.port}/v1/chat/completions"

    def postmaster_pid(self) -> int | None:
        for pidfile in self.data_dir.rglob("postmaster.pid"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                return int(pidfile.read_text().splitlines()[0])
        return None

    def stop(self) -> float:
        return stop_process(self.proc, "gandalf up", 60)


# --------------------------------------------------------------------------- memory


def _kind(proc: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        name = proc.name()
        if "nats" in name:
            return "nats-server"
        if "postgres" in name or "postmaster" in name:
            return "postgres"
        if "python" in name or "gandalf" in name:
            return "python"
        return name
    return "?"


def tree_procs(root_pid: int, extra_root: int | None) -> list[psutil.Process]:
    procs: dict[int, psutil.Process] = {}
    for pid in (root_pid, extra_root):
        if pid is None:
            continue
        try:
            root = psutil.Process(pid)
            procs[root.pid] = root
            for child in root.children(recursive=True):
                procs[child.pid] = child
        except psutil.Error:
            continue
    return list(procs.values())


def tree_memory(root_pid: int, extra_root: int | None, pss: bool = False,
                procs: list[psutil.Process] | None = None,
                ) -> tuple[int, int, dict[str, int], int]:
    """(rss sum, pss sum or 0, rss per kind, process count) of a process tree."""
    rss_total = pss_total = 0
    kinds: dict[str, int] = {}
    if procs is None:
        procs = tree_procs(root_pid, extra_root)
    for proc in procs:
        try:
            if pss:
                info = proc.memory_full_info()
                rss, pss_v = info.rss, getattr(info, "pss", 0)
            else:
                rss, pss_v = proc.memory_info().rss, 0
        except psutil.Error:
            continue
        rss_total += rss
        pss_total += pss_v
        kind = _kind(proc)
        kinds[kind] = kinds.get(kind, 0) + rss
    return rss_total, pss_total, kinds, len(procs)


@dataclass
class Sample:
    t: float
    phase: str
    rss: int
    pss: int
    kinds: dict[str, int]
    nprocs: int


@dataclass
class Sampler:
    gandalf: Gandalf
    phase: str = "idle"
    samples: list[Sample] = field(default_factory=list)
    _procs: list[psutil.Process] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self, full: bool = True) -> Sample:
        """``full``: walk the process tree again and read PSS (smaps_rollup, costlier);
        otherwise only RSS (statm) of the processes found by the last full sample,
        carrying the last PSS forward. Keeps the sampler's own CPU use small."""
        assert self.gandalf.proc is not None
        if full or not self._procs:
            self._procs = tree_procs(self.gandalf.proc.pid, self.gandalf.postmaster_pid())
        rss, pss, kinds, n = tree_memory(0, None, pss=full, procs=self._procs)
        if not full:
            pss = self.samples[-1].pss if self.samples else 0
        s = Sample(time.monotonic(), self.phase, rss, pss, kinds, n)
        self.samples.append(s)
        return s

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            t0 = time.monotonic()
            with contextlib.suppress(Exception):
                self.sample(full=i % FULL_SAMPLE_EVERY == 0)
            i += 1
            self._stop.wait(max(0.0, SAMPLE_EVERY - (time.monotonic() - t0)))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


# --------------------------------------------------------------------------- load


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    errors: int  # socket errors + non-2xx/3xx
    non2xx: int
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def run_wrk(wrk: str, url: str, *, threads: int, conns: int, duration: float, stream: bool,
            label: str) -> WrkResult:
    env = dict(os.environ, BENCH_MODEL="bench-stream" if stream else "bench",
               BENCH_STREAM="1" if stream else "0", BENCH_KEY=KEY)
    cmd = [wrk, f"-t{threads}", f"-c{conns}", f"-d{duration:g}s", "--latency",
           "--timeout", "5s", "-s", str(BENCH / "post.lua"), url]
    say(f"{label}: {' '.join(cmd)}")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env,
                         timeout=duration + 60)
    match = re.search(r"^BENCH_JSON (\{.*\})$", out.stdout, re.M)
    if out.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    d = json.loads(match.group(1))
    socket_errors = d["connect"] + d["read"] + d["write"] + d["timeout"]
    res = WrkResult(requests=d["requests"], duration_s=d["duration_us"] / 1e6,
                    errors=socket_errors + d["status"], non2xx=d["status"],
                    p50_ms=d["p50_us"] / 1000, p99_ms=d["p99_us"] / 1000)
    say(f"{label}: {res.rps:,.0f} req/s, p50 {res.p50_ms:.2f} ms, p99 {res.p99_ms:.2f} ms, "
        f"errors {res.errors} (non-2xx {res.non2xx})")
    return res


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, float | None, bool]:
    """Read one HTTP/1.1 response; return (status, time of first ``data:``, keep-alive)."""
    head = await reader.readuntil(b"\r\n\r\n")
    first: float | None = None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip().lower()
    seen = b""
    if headers.get("transfer-encoding", "") == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            data = (await reader.readexactly(size + 2))[:-2]
            if first is None:
                seen += data
                if b"data:" in seen:
                    first = time.perf_counter()
    else:
        remaining = int(headers.get("content-length", "0"))
        while remaining > 0:
            data = await reader.read(min(remaining, 65536))
            if not data:
                raise ConnectionError("connection closed mid-body")
            remaining -= len(data)
            if first is None:
                seen += data
                if b"data:" in seen:
                    first = time.perf_counter()
    return status, first, headers.get("connection", "") != "close"


async def _ttfc(url: str, n: int, warmup: int) -> tuple[list[float], list[float], int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or HOST, parts.port or 80
    body = json.dumps({"model": "bench-stream", "stream": True,
                       "messages": [{"role": "user", "content": "hello"}]}).encode()
    request = (f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
               f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
               f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
               ).encode() + body
    firsts: list[float] = []
    totals: list[float] = []
    errors = 0
    reader = writer = None
    try:
        for i in range(warmup + n):
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            assert reader is not None
            t0 = time.perf_counter()
            writer.write(request)
            try:
                status, first, keep = await asyncio.wait_for(_read_response(reader), 10)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    TimeoutError, ValueError):
                errors += 1
                writer.close()
                reader = writer = None
                continue
            t1 = time.perf_counter()
            if status != 200 or first is None:
                errors += 1
            elif i >= warmup:
                firsts.append((first - t0) * 1000)
                totals.append((t1 - t0) * 1000)
            if not keep:
                writer.close()
                reader = writer = None
    finally:
        if writer is not None:
            writer.close()
    return firsts, totals, errors


def check_once(url: str, stream: bool, label: str) -> None:
    """One request before any load: the reply must be the mock's, relayed intact."""
    import urllib.request

    body = json.dumps({"model": "bench-stream" if stream else "bench",
                       "messages": [{"role": "user", "content": "hello"}],
                       **({"stream": True} if stream else {})}).encode()
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        status, ctype, text = resp.status, resp.headers.get("content-type", ""), resp.read()
    want = (b" help?", b"data: [DONE]") if stream else (b"How can I help you today?",)
    if status != 200 or not all(w in text for w in want) or (
            stream and not ctype.startswith("text/event-stream")):
        raise RuntimeError(f"{label}: unexpected reply {status} {ctype}: {text[:300]!r}")
    say(f"{label}: sanity check ok ({'stream' if stream else 'non-stream'}, "
        f"{len(text)} bytes, {ctype})")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[idx]


@dataclass
class TtfcResult:
    p50_ms: float
    p99_ms: float
    total_p50_ms: float
    errors: int
    n: int


def run_ttfc(url: str, label: str, n: int = 300, warmup: int = 30) -> TtfcResult:
    say(f"{label}: time to first chunk, {warmup} warm-up + {n} sequential requests")
    firsts, totals, errors = asyncio.run(_ttfc(url, n, warmup))
    res = TtfcResult(pct(firsts, 50), pct(firsts, 99),
                     statistics.median(totals) if totals else float("nan"), errors, len(firsts))
    say(f"{label}: first chunk p50 {res.p50_ms:.2f} ms, p99 {res.p99_ms:.2f} ms, "
        f"whole stream p50 {res.total_p50_ms:.2f} ms, errors {errors}")
    return res


# --------------------------------------------------------------------------- report


@dataclass
class Row:
    metric: str
    direct: float | None
    gandalf: float | None
    fmt: str = "{:.2f}"
    added_kind: str = "diff"  # diff | ratio | none

    def cells(self) -> list[str]:
        def f(v: float | None) -> str:
            return "—" if v is None else self.fmt.format(v)

        added = "—"
        if self.direct is not None and self.gandalf is not None:
            if self.added_kind == "diff":
                added = ("+" if self.gandalf >= self.direct else "") + self.fmt.format(
                    self.gandalf - self.direct)
            elif self.added_kind == "ratio" and self.direct:
                added = f"{(self.gandalf / self.direct - 1) * 100:+.0f}%"
        return [self.metric, f(self.direct), f(self.gandalf), added]


def table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def mib(b: float) -> float:
    return b / 2**20


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, default=0,
                   help="gateway processes, passed to `gandalf up` (default: its default)")
    p.add_argument("--duration", type=float, default=10.0,
                   help="seconds per measured load phase (default 10)")
    p.add_argument("--warmup", type=float, default=3.0,
                   help="seconds of warm-up before each concurrent phase (default 3)")
    p.add_argument("--connections", type=int, default=32, help="concurrency (default 32)")
    p.add_argument("--soak", action="store_true",
                   help="also run a 60 s non-stream phase through gandalf, RSS every 10 s")
    p.add_argument("--only", choices=["nonstream", "stream"], help="run only one kind")
    p.add_argument("--log-level", default="",
                   help="passed to `gandalf up` (default: gandalf's own default, info)")
    p.add_argument("--ttfc-requests", type=int, default=300)
    p.add_argument("--output", type=Path, default=BENCH / "results" / "latest.md")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    p.add_argument("--redis", default="", metavar="URL",
                   help="rate limits and cache in this Redis (default: in memory)")
    return p.parse_args()


def main() -> int:  # noqa: C901 - the benchmark script: one branch per option
    args = parse_args()
    command = " ".join([os.path.relpath(sys.executable, Path.cwd())
                        if sys.executable.startswith(str(REPO)) else sys.executable,
                        *sys.argv])

    def _on_term(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _on_term)

    nginx_bin, wrk = ensure_tools()
    info = machine_info()
    info["nginx"] = tool_version([nginx_bin, "-v"])
    info["wrk"] = tool_version([wrk, "--version"])
    info["gandalf"] = tool_version([str(Path(sys.executable).parent / "gandalf"), "version"])

    workdir = Path(tempfile.mkdtemp(prefix="gandalf-bench-"))
    nginx = Nginx(nginx_bin, workdir)
    gandalf: Gandalf | None = None
    sampler: Sampler | None = None
    d, c = args.duration, args.connections
    do_non = args.only in (None, "nonstream")
    do_stream = args.only in (None, "stream")
    rows: list[Row] = []
    notes: list[str] = []
    soak_rows: list[list[str]] = []
    mem: dict[str, Any] = {}
    ok = False
    try:
        nginx.start()
        gandalf = Gandalf(workdir, nginx.port, args.processes, args.log_level, args.redis)
        ready_s = gandalf.start()
        for stream in (False, True):
            check_once(nginx.url(stream), stream, "direct")
            check_once(gandalf.url(stream), stream, "gandalf")
        time.sleep(1.0)  # let the tree settle before the "start" RSS sample
        sampler = Sampler(gandalf)
        start_sample = sampler.sample()
        sampler.start()
        info["gandalf processes"] = str(args.processes or "default (gandalf up decides)")

        def both(fn: Any) -> tuple[Any, Any]:
            direct = fn(nginx.url, "direct")
            assert sampler is not None and gandalf is not None
            sampler.phase = "load"
            try:
                through = fn(gandalf.url, "gandalf")
            finally:
                sampler.phase = "idle"
            return direct, through

        if do_non:
            def c1(url: Any, label: str) -> WrkResult:
                run_wrk(wrk, url(False), threads=1, conns=1, duration=2, stream=False,
                        label=f"{label} c=1 warm-up")
                return run_wrk(wrk, url(False), threads=1, conns=1, duration=d, stream=False,
                               label=f"{label} c=1 non-stream")

            a, b = both(c1)
            rows += [Row("c=1 non-stream p50 (ms)", a.p50_ms, b.p50_ms),
                     Row("c=1 non-stream p99 (ms)", a.p99_ms, b.p99_ms),
                     Row("c=1 non-stream req/s", a.rps, b.rps, "{:,.0f}", "ratio"),
                     Row("c=1 non-stream errors", a.errors, b.errors, "{:.0f}")]

            def cn(url: Any, label: str) -> WrkResult:
                run_wrk(wrk, url(False), threads=2, conns=c, duration=args.warmup,
                        stream=False, label=f"{label} c={c} warm-up")
                return run_wrk(wrk, url(False), threads=2, conns=c, duration=d, stream=False,
                               label=f"{label} c={c} non-stream")

            a, b = both(cn)
            rows += [Row(f"c={c} non-stream req/s", a.rps, b.rps, "{:,.0f}", "ratio"),
                     Row(f"c={c} non-stream p50 (ms)", a.p50_ms, b.p50_ms),
                     Row(f"c={c} non-stream p99 (ms)", a.p99_ms, b.p99_ms),
                     Row(f"c={c} non-stream errors (non-2xx)", a.errors, b.errors, "{:.0f}"),
                     ]
            if b.non2xx != b.errors:
                notes.append(f"c={c} non-stream through gandalf: {b.non2xx} non-2xx, "
                             f"{b.errors - b.non2xx} socket errors/timeouts")

        if do_stream:
            def cs(url: Any, label: str) -> WrkResult:
                run_wrk(wrk, url(True), threads=2, conns=c, duration=args.warmup,
                        stream=True, label=f"{label} c={c} stream warm-up")
                return run_wrk(wrk, url(True), threads=2, conns=c, duration=d, stream=True,
                               label=f"{label} c={c} stream")

            a, b = both(cs)
            rows += [Row(f"c={c} stream req/s", a.rps, b.rps, "{:,.0f}", "ratio"),
                     Row(f"c={c} stream p50 (ms)", a.p50_ms, b.p50_ms),
                     Row(f"c={c} stream p99 (ms)", a.p99_ms, b.p99_ms),
                     Row(f"c={c} stream errors (non-2xx)", a.errors, b.errors, "{:.0f}")]

            def tt(url: Any, label: str) -> TtfcResult:
                return run_ttfc(url(True), label, n=args.ttfc_requests)

            ta, tb = both(tt)
            rows += [Row("c=1 stream first chunk p50 (ms)", ta.p50_ms, tb.p50_ms),
                     Row("c=1 stream first chunk p99 (ms)", ta.p99_ms, tb.p99_ms),
                     Row("c=1 stream whole response p50 (ms)", ta.total_p50_ms,
                         tb.total_p50_ms),
                     Row("c=1 stream errors", ta.errors, tb.errors, "{:.0f}")]

        time.sleep(2.0)
        sampler.phase = "end"
        end_sample = sampler.sample()

        if args.soak:
            say("soak: 60 s non-stream through gandalf, RSS every 10 s")
            env = dict(os.environ, BENCH_MODEL="bench", BENCH_STREAM="0", BENCH_KEY=KEY)
            cmd = [wrk, "-t2", f"-c{c}", "-d60s", "--latency", "--timeout", "5s",
                   "-s", str(BENCH / "post.lua"), gandalf.url(False)]
            say("soak: " + " ".join(cmd))
            sampler.phase = "soak"
            t0 = time.monotonic()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, env=env)
            try:
                for k in range(7):
                    time.sleep(max(0.0, t0 + 10 * k - time.monotonic()))
                    s = sampler.sample()
                    soak_rows.append([f"{10 * k}", f"{mib(s.rss):.1f}", f"{mib(s.pss):.1f}"])
                    say(f"soak t={10 * k}s: RSS {mib(s.rss):.1f} MiB, PSS {mib(s.pss):.1f} MiB")
                out, _ = proc.communicate(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            sampler.phase = "idle"
            m = re.search(r"^BENCH_JSON (\{.*\})$", out, re.M)
            if m:
                sd = json.loads(m.group(1))
                errs = sum(sd[k] for k in ("connect", "read", "write", "timeout", "status"))
                notes.append(f"soak: {sd['requests'] / (sd['duration_us'] / 1e6):,.0f} req/s "
                             f"over 60 s, p50 {sd['p50_us'] / 1000:.2f} ms, "
                             f"p99 {sd['p99_us'] / 1000:.2f} ms, errors {errs}")
            time.sleep(2.0)
            s = sampler.sample()
            soak_rows.append(["after (idle 2 s)", f"{mib(s.rss):.1f}", f"{mib(s.pss):.1f}"])

        sampler.stop()
        load = [s for s in sampler.samples if s.phase in ("load", "soak")] or sampler.samples
        peak = max(load, key=lambda s: s.rss)
        peak_pss = max(load, key=lambda s: s.pss)
        mem = {"start": start_sample, "peak": peak, "peak_pss": peak_pss, "end": end_sample,
               "n": len(load), "ready_s": ready_s,
               "postgres_detached": _postgres_detached(gandalf)}
        ok = True
    except KeyboardInterrupt:
        say("interrupted")
    except Exception as exc:
        say(f"error: {exc}")
        if gandalf is not None:
            say("gandalf log tail:\n" + gandalf.tail())
    finally:
        if sampler is not None:
            sampler.stop()
        nginx_rss = nginx.rss_mib()
        if gandalf is not None:
            mem["stop_s"] = gandalf.stop()
        nginx.stop()
        if args.keep or not ok:
            say(f"temp dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if not ok:
        return 1

    report = render(args, command, info, rows, mem, soak_rows, notes, nginx_rss)
    print(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report + "\n")
    say(f"written to {args.output}")
    return 0


def _postgres_detached(gandalf: Gandalf) -> bool | None:
    pm = gandalf.postmaster_pid()
    if pm is None or gandalf.proc is None:
        return None
    with contextlib.suppress(psutil.Error):
        kids = {p.pid for p in psutil.Process(gandalf.proc.pid).children(recursive=True)}
        return pm not in kids
    return None


TARGETS: list[tuple[str, str, float, str]] = [
    # (row metric prefix, which value, bound, "<=" or ">=")
    ("c=1 non-stream p50 (ms)", "added", 1.5, "<="),
    ("c=1 non-stream p99 (ms)", "added", 4.0, "<="),
    ("c=1 stream first chunk p50 (ms)", "added", 2.0, "<="),
    ("c=32 non-stream req/s", "gandalf", 1500, ">="),
    ("c=32 non-stream errors (non-2xx)", "gandalf", 0, "<="),
    ("c=32 stream req/s", "gandalf", 800, ">="),
]


def render(args: argparse.Namespace, command: str, info: dict[str, str], rows: list[Row],
           mem: dict[str, Any], soak_rows: list[list[str]], notes: list[str],
           nginx_rss: float) -> str:
    out = ["# Gandalf benchmark", "", f"Command: `{command}`", "",
           f"Date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", ""]
    out.append(table(["machine", ""], [[k, v] for k, v in info.items()]))
    out += ["", "## Latency and throughput", "",
            f"Direct = wrk/client → nginx mock; through gandalf = → `gandalf up` → nginx "
            f"mock. {args.duration:g} s per phase, wrk `--latency` percentiles.", ""]
    out.append(table(["metric", "direct", "through gandalf", "added"],
                     [r.cells() for r in rows]))

    start, peak, end = mem["start"], mem["peak"], mem["end"]
    kinds = sorted(set(start.kinds) | set(peak.kinds) | set(end.kinds))
    mrows = [["RSS sum, whole tree (MiB)", f"{mib(start.rss):.1f}", f"{mib(peak.rss):.1f}",
              f"{mib(end.rss):.1f}"],
             ["PSS sum, whole tree (MiB)", f"{mib(start.pss):.1f}",
              f"{mib(mem['peak_pss'].pss):.1f}", f"{mib(end.pss):.1f}"]]
    mrows += [[f"  RSS {k} (MiB)", f"{mib(start.kinds.get(k, 0)):.1f}",
               f"{mib(peak.kinds.get(k, 0)):.1f}", f"{mib(end.kinds.get(k, 0)):.1f}"]
              for k in kinds]
    mrows.append(["processes in tree", str(start.nprocs), str(peak.nprocs), str(end.nprocs)])
    out += ["", "## Memory of the `gandalf up` tree", "",
            f"RSS sampled every {SAMPLE_EVERY} s with psutil ({mem['n']} samples under load; "
        f"process tree re-walked and PSS read every {SAMPLE_EVERY * FULL_SAMPLE_EVERY:g} s): "
            "`gandalf up`, all its descendants (gateway processes, nats-server) and the "
            "embedded PostgreSQL postmaster with its backends. RSS sums count shared pages "
            "(e.g. Postgres shared buffers) once per process; PSS splits them.", ""]
    out.append(table(["", "start (idle, after ready)", "peak under load", "end (idle)"], mrows))
    out += ["", f"gandalf ready after {mem['ready_s']:.1f} s; stopped "
            f"{mem.get('stop_s', 0):.1f} s after SIGTERM (idle by then); nginx mock RSS at "
            f"end {nginx_rss:.1f} MiB."]
    if mem.get("postgres_detached"):
        out.append("Note: the embedded postmaster is not a descendant of `gandalf up` "
                   "(pg_ctl daemonizes it); it is included via its postmaster.pid.")
    if soak_rows:
        out += ["", "## Soak (60 s, non-stream, through gandalf)", ""]
        out.append(table(["t (s)", "RSS sum (MiB)", "PSS sum (MiB)"], soak_rows))

    by_metric = {r.metric: r for r in rows}
    trows = []
    for metric, which, bound, op in TARGETS:
        metric = metric.replace("c=32", f"c={args.connections}")
        r = by_metric.get(metric)
        if r is None or r.gandalf is None or r.direct is None:
            continue
        value = r.gandalf - r.direct if which == "added" else r.gandalf
        met = value <= bound if op == "<=" else value >= bound
        trows.append([f"{metric} ({which})", f"{op} {bound:g}", r.fmt.format(value),
                      "yes" if met else "**NO**"])
    peak_mib = mib(peak.rss)
    trows.append(["peak RSS sum of the tree (MiB)", "<= 300", f"{peak_mib:.1f}",
                  "yes" if peak_mib <= 300 else "**NO**"])
    out += ["", "## Targets", ""]
    out.append(table(["check", "target", "measured", "met"], trows))
    if notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
