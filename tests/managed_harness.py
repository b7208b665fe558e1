"""A managed-mode gateway in-process: admin service (PostgreSQL, KV
replication) + one shared LiveConfig + router + workers + ingress on a real
NATS and a real HTTP port. The configuration lives in the database; the
YAML only bootstraps it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS

from gandalf_common.bus import connect
from gandalf_common.config import GatewayConfig, parse_config
from gandalf_common.crypto import ENV_KEY
from gandalf_common.live import LiveConfig
from gateway_harness import UPSTREAM_KEY, free_port

ADMIN_KEY = "gnd_managed_bootstrap_admin_key_for_tests_0001"
#: A fixed test encryption key (32 bytes).
TEST_ENCRYPTION_KEY = base64.b64encode(b"gandalf-test-encryption-key-32by").decode()


def managed_yaml(port: int, dsn: str, upstream: str, extra: str = "") -> str:
    return f"""
server:
  addr: "127.0.0.1:{port}"
  write_timeout: 20s
  read_timeout: 2s
database:
  url: "{dsn}"
providers:
  - name: primary
    type: openai
    base_url: {upstream}
    api_key: {UPSTREAM_KEY}
    timeout_ms: 5000
# Rate limits and the cache have tests of their own.
rate_limits: {{default_rpm: 0, default_tpm: 0}}
cache: {{enabled: false}}
# Failover tests count upstream calls; retries have tests of their own.
retries: {{max_attempts: 1}}
routes:
  - model_alias: m
    targets: [{{provider: primary, model: managed-ok}}]
{extra}
"""


@dataclass
class ManagedGateway:
    cfg: GatewayConfig
    url: str
    nc: NATS
    live: LiveConfig
    services: list[Any]
    stop: asyncio.Event
    task: asyncio.Task[None]

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 15)
        for service in reversed(self.services):
            await service.stop(5)
        await self.live.stop()
        await self.nc.close()


async def start_managed(nats_url: str, dsn: str, upstream: str, *, extra: str = "",
                        port: int = 0, usage: bool = False) -> ManagedGateway:
    from gandalf_admin.app import AdminService
    from gandalf_ingress.app import IngressService
    from gandalf_router.app import RouterService
    from gandalf_workers.app import WorkerService

    os.environ.setdefault(ENV_KEY, TEST_ENCRYPTION_KEY)
    port = port or free_port()
    cfg, _ = parse_config(managed_yaml(port, dsn, upstream, extra))
    nc = await connect(nats_url, "gandalf-managed-test")
    admin = AdminService(cfg, dsn)
    await admin.start(nc)
    live = LiveConfig(cfg)
    assert live.managed
    await live.start(nc, keys=True)
    router = RouterService(cfg, live)
    workers = WorkerService(cfg, live=live)
    await router.start(nc)
    await workers.start(nc)
    services: list[Any] = [admin, router, workers]
    if usage:
        from gandalf_usage.app import UsageService

        writer = UsageService(dsn, cfg, live=live, spend_refresh_s=1.0)
        await writer.start(nc)
        services.append(writer)
    stop = asyncio.Event()
    digest = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()
    task = asyncio.create_task(IngressService(cfg, admin_key_sha256=digest, live=live)
                               .serve(nc, stop))
    for _ in range(200):
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            break
        except OSError:
            await asyncio.sleep(0.02)
    return ManagedGateway(cfg, f"http://127.0.0.1:{port}", nc, live, services, stop, task)
