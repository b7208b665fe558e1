"""Usage of the Responses API in managed mode: one row per request with the
upstream's own token counts (cached input from ``input_tokens_details``,
reasoning tokens inside ``output_tokens``) and the route's price, whether
the answer was JSON or the event stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import openai
import pytest
import pytest_asyncio

from gandalf_common.usage_stream import ensure_usage_stream
from managed_harness import ADMIN_KEY, ManagedGateway, start_managed
from test_usage_e2e import rows, until

pytestmark = pytest.mark.asyncio(loop_scope="session")

#: $1 per input token, $0.50 per cached input token, $2 per output token.
EXTRA = """
  - model_alias: resp-priced
    targets: [{provider: primary, model: reasoning-cached-model}]
    pricing: {input: 1000000, output: 2000000, cached_input: 500000}
"""


@pytest_asyncio.fixture(loop_scope="session")
async def managed(managed_nats_url: str, fresh_pg_dsn: str, mock_upstream: Any
                  ) -> AsyncIterator[ManagedGateway]:
    import nats

    nc = await nats.connect(managed_nats_url)
    try:  # a clean stream: other tests' events must not land in this database
        await nc.jetstream().delete_stream("USAGE")
    except Exception:  # absent
        pass
    await ensure_usage_stream(nc)
    await nc.close()
    gw = await start_managed(managed_nats_url, fresh_pg_dsn, mock_upstream.base_url,
                             extra=EXTRA, usage=True)
    yield gw
    await gw.close()


async def test_usage_rows_have_the_upstream_tokens_and_cost(managed: ManagedGateway,
                                                            upstream: Any) -> None:
    api = openai.AsyncOpenAI(base_url=managed.base_url, api_key=ADMIN_KEY, max_retries=0)
    plain = await api.responses.create(model="resp-priced", input="count my tokens please")
    async with api.responses.stream(model="resp-priced", input="and these too") as stream:
        async for _ in stream:
            pass
        streamed = await stream.get_final_response()
    answers = {False: plain.usage, True: streamed.usage}
    for usage in answers.values():
        assert usage is not None
        assert usage.output_tokens_details.reasoning_tokens == 5
        assert usage.input_tokens_details.cached_tokens == usage.input_tokens // 2

    async def written() -> list[Any]:
        found = await rows(managed, "SELECT * FROM usage_records WHERE model = $1 "
                                    "ORDER BY id", "resp-priced")
        return found if len(found) == 2 else []

    records = await until(written)
    assert len(records) == 2
    for record in records:
        usage = answers[record["stream"]]
        assert usage is not None
        cached = usage.input_tokens_details.cached_tokens
        assert (record["prompt_tokens"], record["completion_tokens"],
                record["cached_tokens"], record["total_tokens"]) == (
            usage.input_tokens, usage.output_tokens, cached, usage.total_tokens)
        expected = (usage.input_tokens - cached) + cached * 0.5 + usage.output_tokens * 2
        assert record["cost_usd"] == Decimal(str(expected))
        assert record["provider_id"] == "primary" and record["status_code"] == 200


async def test_translated_target_usage_rows(managed: ManagedGateway, upstream: Any) -> None:
    """An Anthropic target (added at runtime): the translated answer's usage
    is the upstream's, and so is the row's, JSON and stream alike."""
    import asyncio

    import httpx

    from gateway_harness import UPSTREAM_KEY

    root = upstream.base_url.removesuffix("/v1")
    async with httpx.AsyncClient(base_url=managed.url + "/admin/v1", timeout=10,
                                 headers={"authorization": f"Bearer {ADMIN_KEY}"}) as admin:
        r = await admin.post("/providers", json={
            "name": "claude-late", "type": "anthropic", "base_url": root + "/v1",
            "api_key": UPSTREAM_KEY})
        assert r.status_code == 201, r.text
        r = await admin.post("/routes", json={"model_alias": "resp-claude", "targets": [
            {"provider_id": "claude-late", "model": "claude-sonnet-4-5"}]})
        assert r.status_code == 201, r.text
    api = openai.AsyncOpenAI(base_url=managed.base_url, api_key=ADMIN_KEY, max_retries=0)
    for _ in range(100):  # replication takes a moment
        try:
            plain = await api.responses.create(model="resp-claude", input="translate me")
            break
        except (openai.NotFoundError, openai.APIStatusError):
            await asyncio.sleep(0.05)
    else:
        raise AssertionError("the runtime route never answered")
    async with api.responses.stream(model="resp-claude", input="stream me too") as stream:
        async for _ in stream:
            pass
        streamed = await stream.get_final_response()
    answers = {False: plain.usage, True: streamed.usage}

    async def written() -> list[Any]:
        found = await rows(managed, "SELECT * FROM usage_records WHERE model = $1 "
                                    "AND status_code = 200 ORDER BY id", "resp-claude")
        return found if len(found) == 2 else []

    records = await until(written)
    assert len(records) == 2
    for record in records:
        usage = answers[record["stream"]]
        assert usage is not None and usage.output_tokens > 0
        assert (record["prompt_tokens"], record["completion_tokens"],
                record["total_tokens"]) == (usage.input_tokens, usage.output_tokens,
                                            usage.total_tokens)
        assert record["provider_id"] == "claude-late"
        assert record["cost_usd"] > 0  # the default price of claude-sonnet-4-5
