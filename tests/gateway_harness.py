"""An in-process gateway for tests: router + workers + ingress on the test's
event loop, talking over a real NATS and real HTTP (uvicorn on a free port)."""

from __future__ import annotations

import asyncio
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from cloud_creds import AWS_KEY_ID, AWS_SECRET, write_service_account
from gandalf_common.bus import connect
from gandalf_common.config import GatewayConfig, parse_config
from gandalf_ingress.app import IngressService
from gandalf_router.app import RouterService
from gandalf_workers.app import WorkerService

TEST_KEY = "gnd_test_admin_key"
VIEWER_KEY = "gnd_test_viewer_key"
LIMITED_KEY = "gnd_test_limited_key"
UPSTREAM_KEY = "sk-upstream-secret"
#: A key of another org (stored Responses API responses are per org).
OTHER_ORG_KEY = "gnd_test_other_org_key"


#: Providers with a worker in the test gateway ("ghost" has none on purpose).
SERVED = ["primary", "secondary", "quick", "azure", "ollama", "anthropic", "bedrock",
          "vertex-claude", "gemini", "vertex-gemini"]
_CREDENTIALS: dict[str, str] = {}


def _service_account(root: str) -> str:
    """One service-account file per mock (tokens come from its /oauth2/token)."""
    path = _CREDENTIALS.get(root)
    if path is None:
        directory = Path(tempfile.mkdtemp(prefix="gandalf-gcp-"))
        path = _CREDENTIALS[root] = write_service_account(directory / "sa.json",
                                                          root + "/oauth2/token")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_yaml(port: int, upstream: str, *, extra_server: str = "") -> str:
    """Routes exercise the mock's fault directives through the target model."""
    root = upstream.removesuffix("/v1")
    gcp = _service_account(root)
    return f"""
server:
  addr: "127.0.0.1:{port}"
  max_body_bytes: 4MiB
  write_timeout: 20s
  read_timeout: 1s
  stream_keepalive: 300ms
{extra_server}
providers:
  - name: primary
    type: openai
    base_url: {upstream}
    api_key: {UPSTREAM_KEY}
    timeout_ms: 5000
  - name: secondary
    type: openai
    base_url: {upstream}
    api_key: {UPSTREAM_KEY}
  - name: ghost
    type: openai
    base_url: {upstream}
  - name: disabled
    type: openai
    base_url: {upstream}
    enabled: false
  - name: quick
    type: openai
    base_url: {upstream}
    api_key: {UPSTREAM_KEY}
    timeout_ms: 500
  - name: azure
    type: openai
    hosting: azure
    base_url: {root}
    api_key: {UPSTREAM_KEY}
    timeout_ms: 5000
  - name: ollama
    type: ollama
    base_url: {root}
    api_key: {UPSTREAM_KEY}
    timeout_ms: 5000
  - name: anthropic
    type: anthropic
    base_url: {root}/v1
    api_key: {UPSTREAM_KEY}
    timeout_ms: 5000
  - name: bedrock
    type: anthropic
    hosting: bedrock
    region: us-east-1
    base_url: {root}
    auth: {{access_key_id: {AWS_KEY_ID}, secret_access_key: {AWS_SECRET}}}
    model_map: {{claude-haiku: us.anthropic.claude-3-5-haiku-20241022-v1:0}}
    timeout_ms: 5000
  - name: vertex-claude
    type: anthropic
    hosting: vertex
    project: proj
    region: us-east5
    base_url: {root}
    auth: {{credentials_file: {gcp}}}
    timeout_ms: 5000
  - name: gemini
    type: gemini
    base_url: {root}/v1beta
    api_key: {UPSTREAM_KEY}
    timeout_ms: 5000
  - name: vertex-gemini
    type: gemini
    hosting: vertex
    project: proj
    region: us-central1
    base_url: {root}
    auth: {{credentials_file: {gcp}}}
    timeout_ms: 5000
# Rate limits and the cache have tests of their own.
rate_limits: {{default_rpm: 0, default_tpm: 0}}
cache: {{enabled: false}}
# Failover tests count upstream calls; retries have tests of their own.
retries: {{max_attempts: 1}}
routes:
  - model_alias: claude
    targets: [{{provider: anthropic, model: claude-sonnet-4-5}}]
  - model_alias: claude-bedrock
    targets: [{{provider: bedrock, model: claude-haiku}}]
  - model_alias: claude-vertex
    targets: [{{provider: vertex-claude, model: claude-sonnet-4-5}}]
  - model_alias: claude-failover
    targets:
      - {{provider: anthropic, model: fail-529, priority: 1}}
      - {{provider: bedrock, model: claude-after-529, priority: 2}}
  - model_alias: claude-then-gpt
    targets:
      - {{provider: anthropic, model: fail-503, priority: 1}}
      - {{provider: primary, model: gpt-after-claude, priority: 2}}
  - model_alias: gem
    targets: [{{provider: gemini, model: gemini-2.0-flash}}]
  - model_alias: gem-vertex
    targets: [{{provider: vertex-gemini, model: gemini-2.0-flash}}]
  - model_alias: emb-claude-first
    targets:
      - {{provider: anthropic, model: claude-cannot-embed}}
      - {{provider: gemini, model: text-embedding-004}}
  - model_alias: llama
    targets: [{{provider: ollama, model: llama3.2}}]
  - model_alias: llama-failover
    targets:
      - {{provider: ollama, model: fail-503, priority: 1}}
      - {{provider: ollama, model: llama-after-503, priority: 2}}
  - model_alias: claude-via-openai
    targets: [{{provider: primary, model: gpt-behind-messages}}]
  - model_alias: claude-via-ollama
    targets: [{{provider: ollama, model: llama-behind-messages}}]
  - model_alias: azure-gpt
    targets: [{{provider: azure, model: dep-4o}}]
  - model_alias: azure-failover
    targets:
      - {{provider: azure, model: fail-503, priority: 1}}
      - {{provider: azure, model: dep-after-503, priority: 2}}
  - model_alias: azure-bad
    targets:
      - {{provider: azure, model: fail-400}}
      - {{provider: azure, model: never-called-azure}}
  - model_alias: m
    targets: [{{provider: primary, model: ok}}]
  - model_alias: emb
    targets: [{{provider: primary, model: emb-ok}}]
  - model_alias: failover-500
    targets:
      - {{provider: primary, model: fail-500, priority: 1}}
      - {{provider: secondary, model: fo-ok, priority: 2}}
  - model_alias: failover-429
    targets:
      - {{provider: primary, model: fail-429+retry-after-3, priority: 1}}
      - {{provider: secondary, model: fo429-ok, priority: 2}}
  - model_alias: bad-400
    targets:
      - {{provider: primary, model: fail-400}}
      - {{provider: secondary, model: never-called-400}}
  - model_alias: all-fail
    targets:
      - {{provider: primary, model: fail-500}}
      - {{provider: secondary, model: fail-503}}
  - model_alias: all-429
    targets: [{{provider: primary, model: fail-429+retry-after-7}}]
  - model_alias: cut
    targets:
      - {{provider: primary, model: cut-3+words-20}}
      - {{provider: secondary, model: never-called-cut}}
  - model_alias: slow-stream
    targets: [{{provider: primary, model: chunk-delay-200+words-50}}]
  - model_alias: hang
    targets: [{{provider: primary, model: hang}}]
  - model_alias: slow-start
    targets: [{{provider: primary, model: delay-1200}}]
  - model_alias: ghost-only
    targets: [{{provider: ghost, model: ok}}]
  - model_alias: ghost-then-ok
    targets:
      - {{provider: ghost, model: ok}}
      - {{provider: primary, model: after-ghost}}
  - model_alias: off
    targets: [{{provider: disabled, model: ok}}]
  - model_alias: ttfb-timeout
    targets: [{{provider: quick, model: delay-1500}}]
  - model_alias: long-stream
    targets: [{{provider: quick, model: chunk-delay-150+words-8}}]
keys:
  - name: test-admin
    key: {TEST_KEY}
    role: admin
  - name: viewer
    key: {VIEWER_KEY}
    role: viewer
  - name: limited
    key: {LIMITED_KEY}
    role: member
    allowed_models: ["m", "failover-*"]
  - name: other-org
    key: {OTHER_ORG_KEY}
    role: member
    org_id: other
"""


@dataclass
class RunningGateway:
    cfg: GatewayConfig
    url: str
    nc: NATS
    stop: asyncio.Event
    task: asyncio.Task[None]
    router: RouterService
    workers: WorkerService

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 15)
        await self.workers.stop(5)
        await self.router.stop(5)
        await self.nc.close()


async def start_gateway(nats_url: str, upstream_base: str, **kw: str) -> RunningGateway:
    port = free_port()
    cfg, _warnings = parse_config(gateway_yaml(port, upstream_base, **kw))
    nc = await connect(nats_url, "gandalf-test")
    router = RouterService(cfg)
    # No worker serves "ghost": the router must see "no responders".
    workers = WorkerService(cfg, SERVED)
    await router.start(nc)
    await workers.start(nc)
    stop = asyncio.Event()
    task = asyncio.create_task(IngressService(cfg).serve(nc, stop))
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            break
        except OSError:
            await asyncio.sleep(0.02)
    return RunningGateway(cfg, url, nc, stop, task, router, workers)


@asynccontextmanager
async def pipeline(nats_url: str, yaml_text: str, *, backend: bool = True
                   ) -> AsyncIterator[str]:
    """An ingress (and, with ``backend``, a router and workers) for one test
    configuration on ``nats_url``; yields the ingress URL once it answers."""
    cfg, _ = parse_config(yaml_text)
    nc = await connect(nats_url, "gandalf-test-pipeline")
    services: list[Any] = [RouterService(cfg), WorkerService(cfg)] if backend else []
    for service in services:
        await service.start(nc)
    stop = asyncio.Event()
    task = asyncio.create_task(IngressService(cfg).serve(nc, stop))
    host, port = cfg.server.addr.rsplit(":", 1)
    url = f"http://{host}:{port}"
    for _ in range(200):
        try:
            _r, w = await asyncio.open_connection(host, int(port))
            w.close()
            break
        except OSError:
            await asyncio.sleep(0.02)
    try:
        yield url
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        for service in reversed(services):
            await service.stop(2)
        await nc.close()
