"""Pure routing decisions: alias -> ordered targets, and the final verdict
when every target failed. No I/O here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gandalf_common.config import GatewayConfig
from gandalf_common.contract import ErrorReply, Failed, serves
from gandalf_common.live import LiveConfig
from gandalf_common.records import ProviderRecord, RouteRecord, RouteTargetRecord


class RouteTable:
    """Model alias -> targets in failover order, for enabled providers only.

    Immutable once built: the router builds a new table when providers or
    routes change and swaps the reference, so a request keeps the table it
    started with.
    """

    def __init__(self, providers: Mapping[str, ProviderRecord],
                 routes: Mapping[str, RouteRecord]) -> None:
        enabled = {name for name, p in providers.items() if p.enabled}
        self._types = {name: p.type for name, p in providers.items()}
        # Stable sort by priority, as the YAML loader does: equal priorities
        # keep their order (already sorted YAML routes are unchanged).
        self._targets: dict[str, list[RouteTargetRecord]] = {
            alias: sorted((t for t in route.targets if t.provider in enabled),
                          key=lambda t: t.priority)
            for alias, route in routes.items()
        }
        self._strategies = {alias: route.strategy for alias, route in routes.items()}

    @classmethod
    def from_live(cls, live: LiveConfig) -> RouteTable:
        return cls(live.providers, live.routes)

    @classmethod
    def from_config(cls, cfg: GatewayConfig) -> RouteTable:
        """The table of a YAML configuration (static mode)."""
        return cls.from_live(LiveConfig(cfg, managed=False))

    def targets(self, alias: str) -> list[RouteTargetRecord] | None:
        """``None`` when no route exists; an empty list when no target is enabled."""
        return self._targets.get(alias)

    def strategy(self, alias: str) -> str:
        return self._strategies.get(alias, "priority")

    def able(self, targets: list[RouteTargetRecord], op: str,
             kind: str = "") -> list[RouteTargetRecord]:
        """The targets whose provider type can serve ``op`` (and native ``kind``):
        skipped without a round trip, so e.g. embeddings on a route that
        starts with Anthropic go straight to the next target."""
        return [t for t in targets if serves(self._types.get(t.provider, ""), op, kind)]

    def aliases(self) -> list[str]:
        return sorted(self._targets)


def verdict(failures: Sequence[Failed], *, attempts: int) -> ErrorReply:
    """What the client sees when no target produced a response.

    - a non-retryable failure (an upstream 4xx other than 408/429) keeps the
      upstream status and message: it is the client's request that is wrong;
    - every target unavailable (no worker, saturated) -> 503;
    - every target rate-limited -> 429 with the shortest Retry-After;
    - otherwise 502 with the last error.
    """
    if not failures:
        return ErrorReply(attempt=attempts, status=503, type="api_error",
                          code="no_provider_available",
                          message="no provider is available for this model")
    last = failures[-1]
    if not last.retryable:
        return ErrorReply(attempt=attempts, status=last.status, type=last.type, code=last.code,
                          message=last.message, retry_after=last.retry_after)
    if all(f.status == 503 and f.code in _UNAVAILABLE for f in failures):
        return ErrorReply(attempt=attempts, status=503, type="api_error", code=last.code,
                          message=f"no provider available: {last.message}",
                          retry_after=min(f.retry_after for f in failures) or 1.0)
    if all(f.status == 429 for f in failures):
        return ErrorReply(attempt=attempts, status=429, type="rate_limit_error",
                          code=last.code or "rate_limit_exceeded", message=last.message,
                          retry_after=min(f.retry_after for f in failures))
    if last.status == 504 and all(f.status == 504 for f in failures):
        return ErrorReply(attempt=attempts, status=504, type="timeout_error", code=last.code,
                          message=f"all targets timed out: {last.message}")
    return ErrorReply(attempt=attempts, status=502, type="api_error",
                      code=last.code or "upstream_error",
                      message=f"all targets failed; last error: {last.message}",
                      retry_after=last.retry_after)


#: Failure codes that mean "nobody could take it", as opposed to "it broke".
_UNAVAILABLE = frozenset({"no_worker", "provider_saturated", "worker_stopping", "circuit_open"})
