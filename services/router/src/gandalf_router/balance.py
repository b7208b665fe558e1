"""Pure load-balancing decisions for the router: no I/O, no threads.

- :class:`PeakEwma` keeps one latency estimate: a sample above the estimate
  is taken at once (the peak), a lower one is blended in with a weight that
  decays with the time since the previous sample.
- :class:`Balancer` tracks one estimate and one in-flight count per target
  key (``provider/model``) and turns a route's targets into a failover order
  for a strategy:

  * targets are grouped by ``priority`` (ascending, stable); the order of the
    groups never changes, so priority tiers stay hard failover tiers;
  * ``priority``: each group keeps its configured order;
  * ``weighted``: each group is a weighted random order without replacement
    (``weight`` is a multiplier; weight 0 is never first unless every weight
    in the group is 0);
  * ``least-latency``: power of two choices inside each group -- two distinct
    targets drawn at random (weighted by ``weight``), the lower
    ``cost / weight`` goes first, the rest follow by ascending cost.

  A group of one target is returned as is.  Unknown strategies behave like
  ``priority``.

Cost is ``latency_estimate * (in_flight + 1)``.  A target with no sample yet
is costed at a neutral prior (the median of the known estimates, or
:data:`DEFAULT_PRIOR_S`), so a new target gets traffic instead of starving.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

#: Estimate for a target when nothing at all has been observed yet.
DEFAULT_PRIOR_S = 0.1
#: Latency charged for a failed request (at least): a fast error is not a fast target.
DEFAULT_FAILURE_PENALTY_S = 1.0

PRIORITY = "priority"
WEIGHTED = "weighted"
LEAST_LATENCY = "least-latency"
STRATEGIES = frozenset({PRIORITY, WEIGHTED, LEAST_LATENCY})

Clock = Callable[[], float]


class Target(Protocol):
    """What a route target must expose (e.g. ``RouteTargetRecord``)."""

    @property
    def provider(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def weight(self) -> int: ...


T = TypeVar("T", bound=Target)


def target_key(target: Target) -> str:
    """The key the balancer tracks a target under."""
    return f"{target.provider}/{target.model}"


class PeakEwma:
    """One Peak-EWMA latency estimate (seconds); ``value`` is ``None`` until observed."""

    def __init__(self, decay_s: float = 10.0, clock: Clock = time.monotonic) -> None:
        if decay_s <= 0:
            raise ValueError("decay_s must be > 0")
        self.decay_s = decay_s
        self._clock = clock
        self._value: float | None = None
        self._stamp = 0.0

    @property
    def value(self) -> float | None:
        return self._value

    def observe(self, latency_s: float) -> float:
        """Fold one sample in and return the new estimate."""
        sample = max(0.0, float(latency_s))
        now = self._clock()
        if self._value is None or sample > self._value:
            self._value = sample
        else:
            w = math.exp(-max(0.0, now - self._stamp) / self.decay_s)
            self._value = self._value * w + sample * (1.0 - w)
        self._stamp = now
        return self._value

    def cost(self, inflight: int, prior: float = DEFAULT_PRIOR_S) -> float:
        """``estimate * (inflight + 1)``; ``prior`` stands in for a missing estimate."""
        value = prior if self._value is None else self._value
        return value * (max(0, inflight) + 1)


class Balancer:
    """Per-target latency and load, and the failover order derived from them."""

    def __init__(self, rng: random.Random | None = None, clock: Clock = time.monotonic, *,
                 decay_s: float = 10.0, default_prior_s: float = DEFAULT_PRIOR_S,
                 failure_penalty_s: float = DEFAULT_FAILURE_PENALTY_S) -> None:
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock
        self._decay_s = decay_s
        self._default_prior_s = default_prior_s
        self._failure_penalty_s = failure_penalty_s
        self._ewma: dict[str, PeakEwma] = {}
        self._inflight: dict[str, int] = {}

    # -- bookkeeping ---------------------------------------------------------

    def start(self, key: str) -> None:
        """A request to ``key`` is now outstanding."""
        self._inflight[key] = self._inflight.get(key, 0) + 1

    def finish(self, key: str, latency_s: float, ok: bool = True) -> None:
        """The request ended; a failure is charged at least ``failure_penalty_s``."""
        n = self._inflight.get(key, 0) - 1
        if n > 0:
            self._inflight[key] = n
        else:
            self._inflight.pop(key, None)
        sample = latency_s if ok else max(latency_s, self._failure_penalty_s)
        self._ewma.setdefault(key, PeakEwma(self._decay_s, self._clock)).observe(sample)

    def inflight(self, key: str) -> int:
        return self._inflight.get(key, 0)

    def latency(self, key: str) -> float | None:
        """The current estimate for ``key``, ``None`` when never observed."""
        e = self._ewma.get(key)
        return None if e is None else e.value

    def prior(self) -> float:
        """Neutral estimate for unseen keys: the median of the known ones."""
        known = [e.value for e in self._ewma.values() if e.value is not None]
        return statistics.median(known) if known else self._default_prior_s

    def cost(self, key: str, prior: float | None = None) -> float:
        p = self.prior() if prior is None else prior
        e = self._ewma.get(key)
        inflight = self._inflight.get(key, 0)
        return e.cost(inflight, p) if e is not None else p * (inflight + 1)

    # -- ordering ------------------------------------------------------------

    def order(self, targets: Sequence[T], strategy: str = PRIORITY) -> list[T]:
        """The failover order of ``targets`` under ``strategy`` (see module doc)."""
        groups: dict[int, list[T]] = {}
        for t in targets:
            groups.setdefault(t.priority, []).append(t)
        out: list[T] = []
        for prio in sorted(groups):
            group = groups[prio]
            if len(group) < 2 or strategy not in (WEIGHTED, LEAST_LATENCY):
                out.extend(group)
            elif strategy == WEIGHTED:
                out.extend(self._weighted(group))
            else:
                out.extend(self._least_latency(group))
        return out

    def _weighted(self, group: list[T]) -> list[T]:
        pool = [t for t in group if _weight(t) > 0]
        zero = [t for t in group if _weight(t) <= 0]
        out: list[T] = []
        while pool:
            i = self._draw(pool)
            out.append(pool.pop(i))
        return out + zero

    def _least_latency(self, group: list[T]) -> list[T]:
        prior = self.prior()
        costs = [self.cost(target_key(t), prior) for t in group]
        pool = [i for i, t in enumerate(group) if _weight(t) > 0]
        if len(pool) >= 2:
            a = pool.pop(self._draw([group[i] for i in pool]))
            b = pool[self._draw([group[i] for i in pool])]
            sa, sb = costs[a] / _weight(group[a]), costs[b] / _weight(group[b])
            a_wins = self._rng.random() < 0.5 if sa == sb else sa < sb   # ties: coin flip
            first = a if a_wins else b
        elif pool:
            first = pool[0]
        else:
            first = min(range(len(group)), key=costs.__getitem__)
        rest = [i for i in range(len(group)) if i != first]
        rest.sort(key=lambda i: (_weight(group[i]) <= 0, costs[i]))
        return [group[first], *(group[i] for i in rest)]

    def _draw(self, pool: Sequence[Target]) -> int:
        """Index of one target drawn with probability proportional to its weight (> 0)."""
        total = sum(_weight(t) for t in pool)
        x = self._rng.random() * total
        for i, t in enumerate(pool):
            x -= _weight(t)
            if x < 0:
                return i
        return len(pool) - 1


def _weight(t: Target) -> float:
    return max(0.0, float(t.weight))
