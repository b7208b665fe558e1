"""One Prometheus registry per process, shared by the services in it, so the
ingress's ``/metrics`` also shows the router's and workers' metrics when they
run in the same process (``gandalf up``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector

from .restart_metrics import register_from_env

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
register_from_env(REGISTRY)  # `gandalf up`'s restarts of its embedded servers
