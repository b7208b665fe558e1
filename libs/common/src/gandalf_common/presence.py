"""Which workers serve each provider instance, and which one owns a key.

Kept by every router (owners of coalescable requests, other workers to try
when one is full) and every worker (the count of its siblings, which splits
``max_rps``). Workers announce themselves on ``gandalf.presence.<instance>`` every
:data:`~gandalf_common.contract.PRESENCE_INTERVAL` seconds (and once more
when they leave). A coalescable request goes to the owner of its key among
the live workers, by rendezvous (highest random weight) hashing: every router
that knows the same set of workers picks the same owner without talking to
the others, and a worker joining or leaving moves only the keys it wins or
held. Routers that briefly disagree about the set only lose some sharing,
never a request: the owner's direct subject answering "no responders" sends
the request to the instance's queue group instead.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable

from .contract import PRESENCE_INTERVAL, Presence

#: A worker not heard from for this long is presumed gone.
EXPIRY = 3 * PRESENCE_INTERVAL


def _weight(key: str, worker: str) -> int:
    digest = hashlib.blake2b(f"{key}\x00{worker}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Membership:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        #: instance -> worker id -> when it was last heard from.
        self._seen: dict[str, dict[str, float]] = {}

    def heard(self, presence: Presence) -> bool:
        """Record a heartbeat or a departure; True when the set of workers
        changed (a worker joined or left)."""
        workers = self._seen.setdefault(presence.instance, {})
        known = presence.worker in workers
        if presence.leaving:
            workers.pop(presence.worker, None)
        else:
            workers[presence.worker] = self.clock()
        return known == presence.leaving

    def instances(self) -> list[str]:
        return list(self._seen)

    def forget(self, instance: str, worker: str) -> None:
        """The worker did not answer on its direct subject: it is gone."""
        self._seen.get(instance, {}).pop(worker, None)

    def live(self, instance: str) -> list[str]:
        workers = self._seen.get(instance)
        if not workers:
            return []
        low = self.clock() - EXPIRY
        for worker in [w for w, seen in workers.items() if seen < low]:
            del workers[worker]
        return list(workers)

    def others(self, instance: str, tried: set[str]) -> list[str]:
        """The live workers of ``instance`` not in ``tried``, in random order."""
        rest = [w for w in self.live(instance) if w not in tried]
        random.shuffle(rest)
        return rest

    def owner(self, instance: str, key: str) -> str | None:
        """The live worker that owns ``key`` for ``instance`` (None: none known)."""
        workers = self.live(instance)
        if not workers:
            return None
        return max(workers, key=lambda w: _weight(key, w))
