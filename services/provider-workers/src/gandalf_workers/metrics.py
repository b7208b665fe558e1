"""Prometheus metrics of the provider workers (served by the ingress's
/metrics when they share a process, as in ``gandalf up``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from gandalf_common.metrics_hub import REGISTRY

#: The original's name and encoding (it declared the metric and never set it).
BREAKER_STATE = Gauge("gandalf_circuit_breaker_state", "Circuit breaker state per provider "
                      "instance (0 closed, 1 open, 2 half-open)", ["provider"],
                      registry=REGISTRY)
BREAKER_REJECTS = Counter("gandalf_circuit_breaker_rejects_total", "Calls a worker refused "
                          "because the provider's circuit was open", ["provider"],
                          registry=REGISTRY)
BREAKER_TRANSITIONS = Counter("gandalf_circuit_transitions_total", "Circuit breaker "
                              "transitions per provider instance, by new state",
                              ["provider", "state"], registry=REGISTRY)
RETRIES = Counter("gandalf_upstream_retries_total", "Calls retried on the same provider "
                  "instance before failing over", ["provider"], registry=REGISTRY)
COALESCED = Counter("gandalf_coalesced_requests_total", "Requests answered by another "
                    "identical request's upstream call", ["provider"], registry=REGISTRY)
EXPIRED = Counter("gandalf_worker_expired_total", "Requests dropped by a worker because "
                  "their deadline had passed on arrival", ["provider"], registry=REGISTRY)
SHED = Counter("gandalf_worker_shed_total", "Requests refused by a worker at max_concurrency "
               "or max_rps (the router fails over or answers 503)", ["provider"],
               registry=REGISTRY)
