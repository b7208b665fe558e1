"""Prometheus metrics of the usage service.

One registry of its own (like the ingress's), so a process that runs several
services can expose them side by side without name clashes.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

WRITTEN = Counter("gandalf_usage_rows_written_total",
                  "Usage events written as new raw rows", registry=REGISTRY)
DUPLICATES = Counter("gandalf_usage_duplicates_skipped_total",
                     "Usage events skipped because their request id was already stored "
                     "(redelivery, replay, duplicate publish)", registry=REGISTRY)
BATCHES = Counter("gandalf_usage_batches_total", "Batches committed", registry=REGISTRY)
BATCH_SECONDS = Histogram("gandalf_usage_batch_seconds",
                          "Time to commit one batch (retries included)", registry=REGISTRY,
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
REDELIVERIES = Counter("gandalf_usage_redeliveries_total",
                       "Messages delivered more than once by JetStream", registry=REGISTRY)
DECODE_FAILURES = Counter("gandalf_usage_decode_failures_total",
                          "Messages terminated because they are not a valid usage event",
                          registry=REGISTRY)
REJECTED = Counter("gandalf_usage_rejected_total",
                   "Events terminated because the database refused their values",
                   registry=REGISTRY)
DB_FAILURES = Counter("gandalf_usage_db_failures_total",
                      "Failed batch transactions (each is retried)", registry=REGISTRY)
PENDING = Gauge("gandalf_usage_consumer_pending",
                "Messages in the stream not yet delivered to the usage consumer",
                registry=REGISTRY)
LAST_WRITE = Gauge("gandalf_usage_last_write_timestamp_seconds",
                   "Unix time of the last committed batch", registry=REGISTRY)
SPEND_PUBLISHED = Counter("gandalf_usage_spend_published_total",
                          "Spend records written to the spend KV bucket", registry=REGISTRY)
PROVISIONAL = Counter("gandalf_usage_provisional_rows_total",
                      "Requests billed from their started event alone (no finished event "
                      "within usage.started_deadline: the ingress died)", registry=REGISTRY)
