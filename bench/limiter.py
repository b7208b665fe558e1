"""What the rate limiter costs: the same load through ``gandalf up`` with no
limit, the memory backend and the Redis backend (RPM and TPM limits high
enough never to refuse), against the static nginx mock of ``run.py``.

    .venv/bin/python bench/limiter.py [--processes N] [--duration S] [--redis URL]

Redis: ``--redis``, else the system Redis at 127.0.0.1:6379 when it answers,
else an embedded Valkey. Reported per backend: c=1 p50 (and what it adds to
"no limit") and c=32 req/s (and the change). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as harness  # the bench directory is not a package

LIMITS = "  default_rpm: 100000000\n  default_tpm: 1000000000\n"
MODES = {
    "no limit": "rate_limits:\n  default_rpm: 0\n  default_tpm: 0\n",
    "memory": "rate_limits:\n  backend: memory\n" + LIMITS,
    "redis": "redis:\n  url: {redis}\ncache:\n  backend: memory\n"
             "rate_limits:\n  backend: redis\n" + LIMITS,
}


def system_redis() -> str:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 6379), 0.5) as s:
        s.sendall(b"PING\r\n")
        if s.recv(16).startswith(b"+PONG"):
            return "redis://127.0.0.1:6379/0"
    return ""


def config(mode: str, nginx_port: int, port: int, redis: str) -> str:
    base = harness.GANDALF_CONFIG.format(addr=f"{harness.HOST}:{port}", host=harness.HOST,
                                         nginx_port=nginx_port, key=harness.KEY)
    head = base[:base.index("# Limits high enough")]
    return head + MODES[mode].format(redis=redis)


def measure(wrk: str, url: str, duration: float, label: str) -> tuple[float, float]:
    """(c=1 p50 ms, c=32 req/s), each after a 1 s warm-up."""
    harness.run_wrk(wrk, url, threads=1, conns=1, duration=1, stream=False,
                    label=f"{label} warm-up")
    one = harness.run_wrk(wrk, url, threads=1, conns=1, duration=duration, stream=False,
                          label=f"{label} c=1")
    harness.run_wrk(wrk, url, threads=2, conns=32, duration=1, stream=False,
                    label=f"{label} warm-up")
    many = harness.run_wrk(wrk, url, threads=2, conns=32, duration=duration, stream=False,
                           label=f"{label} c=32")
    if one.errors or many.errors:
        raise RuntimeError(f"{label}: errors (a refusal means the limit was too low)")
    return one.p50_ms, many.rps


async def _micro_one(limiter: Any, key: str) -> None:
    """What the ingress does per request: admit (RPM + estimated TPM), then
    settle with the real usage (the estimate includes the completion)."""
    if limiter is None:
        return
    d = await limiter.acquire(key, 100_000_000, 1_000_000_000, 1030)
    await limiter.settle(key, 1_000_000_000, d.reserved_tokens, 18)


async def _micro(limiter: Any, seconds: float) -> tuple[float, float]:
    """(c=1 p50 µs, c=32 admissions/s) of the limiter alone, in this process."""
    lat = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        await _micro_one(limiter, "bench:c1")
        lat.append(time.perf_counter() - t0)
    count = 0
    end = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        nonlocal count
        while time.perf_counter() < end:
            await _micro_one(limiter, f"bench:c32:{i % 4}")
            count += 1
            if limiter is None:
                await asyncio.sleep(0)
    await asyncio.gather(*(worker(i) for i in range(32)))
    return statistics.median(lat) * 1e6, count / seconds


async def micro(redis: str, seconds: float) -> str:
    from gandalf_ingress.ratelimit import MemoryLimiter
    from gandalf_ingress.ratelimit.redis_backend import RedisLimiter

    rows = ["| backend | c=1 p50 µs (admit + settle) | c=32 admissions/s |", "|---|---|---|"]
    for name, make in (("no limit", lambda: None), ("memory", MemoryLimiter),
                       ("redis", lambda: RedisLimiter(redis, prefix="gandalf:bench:rl:"))):
        limiter = make()
        await _micro_one(limiter, "warm-up")
        p50, rate = await _micro(limiter, seconds)
        if limiter is not None:
            await limiter.aclose()
        rows.append(f"| {name} | {p50:.1f} | {rate:,.0f} |")
        harness.say(rows[-1])
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis", default="")
    parser.add_argument("--micro-only", action="store_true",
                        help="only the in-process limiter measurement (seconds)")
    args = parser.parse_args()
    nginx_bin, wrk = harness.ensure_tools()
    workdir = Path(tempfile.mkdtemp(prefix="gandalf-bench-limiter-"))
    nginx = harness.Nginx(nginx_bin, workdir)
    embedded = None
    redis = args.redis or system_redis()
    gateways: dict[str, harness.Gandalf] = {}
    samples: dict[str, list[tuple[float, float]]] = {}
    try:
        if not redis:
            from gandalf_app.embedded import EmbeddedRedis

            embedded = EmbeddedRedis(workdir / "valkey")
            embedded.start()
            redis = embedded.url
        harness.say(f"redis: {redis}")
        table = asyncio.run(micro(redis, args.duration / 2))
        print("limiter alone, in this process:\n\n" + table + "\n")
        if args.micro_only:
            return 0
        nginx.start()
        # All three run side by side (idle when not measured); the rounds
        # interleave them, so drift in the machine's load hits each alike.
        for mode in MODES:
            run_dir = workdir / mode.replace(" ", "-")
            run_dir.mkdir()
            gandalf = harness.Gandalf(run_dir, nginx.port, args.processes, "warning")
            gandalf.config.write_text(config(mode, nginx.port, gandalf.port, redis))
            gateways[mode] = gandalf
            gandalf.start()
            harness.check_once(gandalf.url(False), False, mode)
        for n in range(args.rounds):
            for mode, gandalf in gateways.items():
                samples.setdefault(mode, []).append(
                    measure(wrk, gandalf.url(False), args.duration, f"{mode} #{n + 1}"))
    finally:
        for gandalf in gateways.values():
            gandalf.stop()
        nginx.stop()
        if embedded is not None:
            embedded.stop()
    results = {mode: (statistics.median(p for p, _ in runs), statistics.median(r for _, r in runs))
               for mode, runs in samples.items()}
    base_p50, base_rps = results["no limit"]
    lines = [f"limiter cost, {args.processes} gateway process(es), medians of {args.rounds} "
             f"rounds of {args.duration:g} s, redis {redis}", "",
             "| backend | c=1 p50 ms | added p50 ms | c=32 req/s | change |",
             "|---|---|---|---|---|"]
    for mode, (p50, rps) in results.items():
        lines.append(f"| {mode} | {p50:.2f} | {p50 - base_p50:+.2f} | {rps:,.0f} | "
                     f"{(rps / base_rps - 1) * 100:+.1f} % |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
