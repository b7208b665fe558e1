"""Token leases: a process takes a few requests' worth of both buckets in one
round trip and admits the next requests of that key from them, locally.

Why: the shared (Redis) limiter costs a round trip per request; with a lease
most requests cost none. The upper bound stays exact, because a lease is taken
out of the shared bucket before it is used: never more admitted than the limit,
across every process. What a lease costs is the other side: a process may be
refused while another holds unused leased tokens, at most one lease per process
(``size`` below: ≤ 1/``FRACTION`` of the limit and ≤ ``MAX_REQUESTS``
requests), for at most ``TTL`` seconds, after which the rest goes back. Leases
are granted only while the shared bucket stays at least half full (the Redis
script decides), so near the limit every admission is decided by Redis alone,
and small limits (under ``FRACTION`` per minute) never lease at all.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

#: A lease is at most this fraction (1/FRACTION) of a per-minute limit.
FRACTION = 50
#: ... and at most this many requests.
MAX_REQUESTS = 64
#: Seconds a lease is used before what is left goes back to the shared bucket.
TTL = 1.0


def size(rpm: int, tpm: int, need: int) -> tuple[int, int]:
    """(requests, tokens) to lease beside a request needing ``need`` tokens; (0, 0): none."""
    n = MAX_REQUESTS
    if rpm:
        n = min(n, rpm // FRACTION)
    if tpm:
        n = min(n, (tpm // FRACTION) // max(need, 1))
    if n < 1:
        return 0, 0
    return (n if rpm else 0), (n * need if tpm else 0)


@dataclass(slots=True)
class Lease:
    rpm: int
    tpm: int
    req: float  # requests left (ignored when rpm is 0)
    tok: float  # tokens left (ignored when tpm is 0)
    tok_size: float  # the tokens granted: refunds refill the lease up to this
    base_req: float  # the shared levels once the lease was taken, for the headers
    base_tok: float
    expires: float  # time.monotonic()

    def live(self, rpm: int, tpm: int, now: float) -> bool:
        return now < self.expires and self.rpm == rpm and self.tpm == tpm

    def take(self, need: int) -> bool:
        """One request and ``need`` tokens from the lease, both or neither."""
        if self.rpm and self.req < 1:
            return False
        if self.tpm and self.tok < need:
            return False
        if self.rpm:
            self.req -= 1
        if self.tpm:
            self.tok -= need
        return True

    def refund(self, tokens: int) -> int:
        """Put unused tokens back into the lease; returns what did not fit."""
        fit = min(tokens, max(0, math.floor(self.tok_size - self.tok)))
        self.tok += fit
        return tokens - fit

    def charge(self, tokens: int) -> int:
        """Take extra tokens from the lease; returns what it could not cover."""
        got = min(tokens, max(0, math.floor(self.tok)))
        self.tok -= got
        return tokens - got

    def remaining(self) -> tuple[int, int]:
        """What this process sees as left: the shared levels plus its lease."""
        return (math.floor(self.base_req + self.req + 1e-9) if self.rpm else 0,
                math.floor(self.base_tok + self.tok + 1e-9) if self.tpm else 0)

    def leftover(self) -> tuple[int, int]:
        """What goes back to the shared bucket when the lease ends."""
        return (math.floor(self.req) if self.rpm else 0,
                math.floor(self.tok) if self.tpm else 0)


def new(rpm: int, tpm: int, req: int, tok: int, base_req: float, base_tok: float) -> Lease:
    return Lease(rpm, tpm, float(req), float(tok), float(tok), base_req, base_tok,
                 time.monotonic() + TTL)
