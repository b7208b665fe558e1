"""The USAGE JetStream stream: durable (file storage), deduplicated by
``Nats-Msg-Id`` = request id, kept by age so billing can be replayed."""

from __future__ import annotations

import logging

from nats.aio.client import Client as NATS
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from .contract import USAGE_STREAM, USAGE_SUBJECTS

log = logging.getLogger("gandalf.usage")

#: Defaults: 30 days of history for replays; duplicates of one request id
#: within 10 minutes are dropped by the server (publisher retries are far
#: shorter than that).
RETENTION_S = 30 * 24 * 3600
DEDUP_WINDOW_S = 600


def usage_stream_config(*, retention_s: float = RETENTION_S,
                        dedup_window_s: float = DEDUP_WINDOW_S,
                        replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=USAGE_STREAM, subjects=[USAGE_SUBJECTS], storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS, max_age=retention_s,
        duplicate_window=dedup_window_s, discard=DiscardPolicy.OLD, num_replicas=replicas)


async def ensure_usage_stream(nc: NATS, **kw: float) -> None:
    """Create the stream, or bring an existing one to this configuration."""
    js = nc.jetstream()
    config = usage_stream_config(**kw)  # type: ignore[arg-type]
    try:
        await js.stream_info(USAGE_STREAM)
    except NotFoundError:
        await js.add_stream(config)
        log.info("created JetStream stream %s", USAGE_STREAM)
        return
    await js.update_stream(config)
