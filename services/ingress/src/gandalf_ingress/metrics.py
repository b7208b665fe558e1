"""Prometheus metrics of the ingress (one registry per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from gandalf_common.metrics_hub import REGISTRY

REQUESTS = Counter("gandalf_requests_total", "HTTP requests by route and status",
                   ["method", "path", "status"], registry=REGISTRY)
DURATION = Histogram("gandalf_request_duration_seconds", "HTTP request duration (to the end "
                     "of the response body)", ["method", "path"], registry=REGISTRY,
                     buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                              5, 10, 30, 60, 120, 300))
ACTIVE = Gauge("gandalf_active_requests", "HTTP requests in flight", registry=REGISTRY)
UPSTREAM_ERRORS = Counter("gandalf_upstream_errors_total", "Requests that ended in an "
                          "upstream or gateway error, by status", ["status"], registry=REGISTRY)
CLIENT_DISCONNECTS = Counter("gandalf_client_disconnects_total", "Clients that went away "
                             "before the response ended (upstream call cancelled)",
                             registry=REGISTRY)


def render() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
STREAM_ERRORS = Counter("gandalf_stream_errors_total", "Responses that had started and then "
                        "ended with an error (cut or malformed upstream stream, idle "
                        "timeout), by code: a failure even though the HTTP status was 200",
                        ["code"], registry=REGISTRY)
SHED = Counter("gandalf_ingress_shed_total", "Requests refused at once because the process "
               "was at server.max_inflight", registry=REGISTRY)
