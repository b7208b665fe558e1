"""The OpenAPI document (``/openapi.json``) is valid, and a property-based
run over every operation it describes, against a live managed gateway (admin
service, PostgreSQL, router, workers, mock upstream), finds no 5xx and no
response that does not conform to it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from openapi_spec_validator import validate
from schemathesis import GenerationMode, checks

from managed_harness import ADMIN_KEY, ManagedGateway, start_managed

#: Cases per operation and mode: 41 operations -> over 1,000 cases in total.
EXAMPLES = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 8}
CHECKS = [checks.not_a_server_error, checks.status_code_conformance,
          checks.content_type_conformance, checks.response_schema_conformance]


@pytest_asyncio.fixture(loop_scope="session")
async def gateway(managed_nats_url: str, fresh_pg_dsn: str,
                  mock_upstream: Any) -> AsyncIterator[ManagedGateway]:
    gw = await start_managed(managed_nats_url, fresh_pg_dsn, mock_upstream.base_url)
    try:
        yield gw
    finally:
        await gw.close()


async def fetch_document(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url) as http:
        for _ in range(50):  # until the admin part is in
            document: dict[str, Any] = (await http.get("/openapi.json")).json()
            if "/admin/v1/keys" in document["paths"]:
                return document
            await asyncio.sleep(0.1)
    raise AssertionError("the admin API never appeared in /openapi.json")


async def test_the_document_is_valid_openapi_31(gateway: ManagedGateway) -> None:
    document = await fetch_document(gateway.url)
    assert document["openapi"].startswith("3.1")
    validate(document)
    paths = document["paths"]
    assert {"/v1/chat/completions", "/v1/embeddings", "/v1/models", "/admin/v1/keys",
            "/admin/v1/providers/{id}", "/admin/v1/usage/summary"} <= set(paths)
    # Fields the gateway refuses are not offered to clients.
    assert "api_base" not in document["components"]["schemas"]["ChatRequest"]["properties"]


def _run_operation(operation: Any, base_url: str, session: requests.Session,
                   counter: list[int], mode: GenerationMode) -> None:
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    # Invalid input must be a 4xx; only valid input is held to the document.
    wanted = CHECKS if mode is GenerationMode.POSITIVE else [checks.not_a_server_error]

    @settings(max_examples=EXAMPLES[mode], deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        counter[0] += 1
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=10)
        case.validate_response(response, checks=wanted)

    run()


def _run_all(document: dict[str, Any], base_url: str) -> tuple[int, list[str]]:
    schema = schemathesis.openapi.from_dict(document)
    counter = [0]
    failures: list[str] = []
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in GenerationMode:
                try:
                    _run_operation(operation, base_url, session, counter, mode)
                except Unsatisfiable:
                    assert mode is GenerationMode.NEGATIVE  # nothing to get wrong
                except Exception as exc:  # reported together below
                    failures.append(f"{operation.label} ({mode.value}): {exc}"[:3000])
    return counter[0], failures


@pytest.mark.timeout(180)
async def test_every_operation_has_no_5xx_and_conforms(gateway: ManagedGateway) -> None:
    document = await fetch_document(gateway.url)
    started = time.monotonic()
    # Blocking HTTP in a thread: the gateway serves on this event loop.
    cases, failures = await asyncio.to_thread(_run_all, document, gateway.url)
    assert not failures, "\n\n".join(failures)
    assert cases >= 1000
    assert time.monotonic() - started < 120
