"""``gandalf_embedded_restarts_total{server}``: how often `gandalf up`
restarted an embedded server (nats, postgres, valkey) that died.

The supervisor serves no HTTP, so it writes its counts to a small JSON file
in the state directory (atomically, on every restart) and names it to its
gateway processes in :data:`ENV`; each of them reads it when ``/metrics`` is
scraped (every process shows the supervisor's one set of counts)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

ENV = "GANDALF_EMBEDDED_RESTARTS_FILE"
FILE_NAME = "embedded-restarts.json"
SERVERS = ("nats", "postgres", "valkey")


def write_counts(path: Path, counts: Mapping[str, int]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(counts)))
    os.replace(tmp, path)  # a scrape never reads half a file


def read_counts(path: Path) -> dict[str, int]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: int(v) for k, v in data.items() if isinstance(v, int)} \
        if isinstance(data, dict) else {}


class RestartCollector(Collector):
    def __init__(self, path: Path) -> None:
        self.path = path

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "gandalf_embedded_restarts", "Embedded servers restarted by gandalf up after "
            "they died", labels=["server"])
        counts = read_counts(self.path)
        for server in SERVERS:
            family.add_metric([server], counts.get(server, 0))
        yield family


def register_from_env(registry: CollectorRegistry) -> None:
    """Under `gandalf up` (the file is named in the environment) only."""
    path = os.environ.get(ENV)
    if path:
        registry.register(RestartCollector(Path(path)))
