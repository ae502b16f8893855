"""`GET /metrics`: Prometheus text behind INGEST_METRICS_TOKEN, after a real upload applied by
a real worker."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from arq import ArqRedis
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from pydantic import SecretStr

from app.core.config import Settings
from app.main import create_app
from tests.conftest import CreateImporter, RunWorker
from tests.factories import USER_FIELDS
from tests.worker.test_leases import mixed_csv

TOKEN = "metrics-token-for-tests-0123456789"
API = "/api/v1/ingest"


@pytest.fixture
async def metered_app(settings: Settings, queue: ArqRedis) -> AsyncIterator[FastAPI]:
    app = create_app(settings.model_copy(update={"metrics_token": SecretStr(TOKEN)}))
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def metered(metered_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=metered_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def scrape(client: httpx.AsyncClient) -> dict[str, list[Sample]]:
    response = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def values(samples: list[Sample], name: str, **labels: str) -> list[float]:
    return [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]


async def test_metrics_after_a_run_count_its_rows_by_outcome_chunks_and_routes(
    metered: httpx.AsyncClient,
    create_importer: CreateImporter,
    run_worker: RunWorker,
    admin_headers: dict[str, str],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=10)
    body = mixed_csv()
    uploaded = await metered.post(
        f"{API}/upload/users", files={"file": ("users.csv", body)}, headers=admin_headers
    )
    assert uploaded.status_code in (200, 201, 202), uploaded.text
    run_id = uploaded.json()["data"]["id"]
    await run_worker()
    run = (await metered.get(f"{API}/{run_id}", headers=admin_headers)).json()["data"]
    assert run["status"] == "completed_with_errors"

    # Events are folded in once every older transaction on the server has ended (any
    # database's, app/runs/events.py): scraped again until the run's split and six chunks are in.
    async with asyncio.timeout(30):
        while True:
            families = await scrape(metered)
            chunks = families["ingest_chunk_apply_duration_seconds"]
            count = "ingest_chunk_apply_duration_seconds_count"
            splits = families["ingest_split_duration_seconds"]
            split_count = "ingest_split_duration_seconds_count"
            if values(chunks, count, importer="users") == [6] and values(
                splits, split_count, importer="users"
            ) == [1]:
                break
            await asyncio.sleep(0.1)

    rows = families["ingest_rows_processed"]
    counted = {
        s.labels["outcome"]: s.value
        for s in rows
        if s.name == "ingest_rows_processed_total" and s.labels["importer"] == "users"
    }
    summary: dict[str, Any] = run["summary"]
    for outcome, rows_of_outcome in summary.items():
        if outcome != "failed":
            assert counted.get(outcome, 0) == rows_of_outcome, (outcome, counted, summary)
    assert counted["failed"] == run["progress"]["failed"] == 5
    assert {s.labels["dry_run"] for s in rows} == {"false"}

    assert values(
        chunks, "ingest_chunk_apply_duration_seconds_bucket", importer="users", le="+Inf"
    ) == [6]
    assert values(splits, "ingest_split_duration_seconds_count", importer="users") == [1]

    runs = families["ingest_runs"]
    assert values(runs, "ingest_runs", status="completed_with_errors") == [1]
    assert values(runs, "ingest_runs", status="pending") == [0]
    assert values(families["ingest_queue_depth"], "ingest_queue_depth") == [0]
    assert values(
        families["ingest_oldest_pending_chunk_age_seconds"],
        "ingest_oldest_pending_chunk_age_seconds",
    ) == [0]
    assert "ingest_webhook_deliveries" in families  # the table is there: counted (none yet)

    # Routes by template, never by raw path.
    http = families["ingest_http_request_duration_seconds"]
    routes = {s.labels["route"] for s in http}
    assert f"{API}/{{run}}" in routes and f"{API}/upload/{{importer}}" in routes
    assert f"{API}/{run_id}" not in routes and all("{" in r or r == "/metrics" for r in routes)
    shown = values(
        http,
        "ingest_http_request_duration_seconds_count",
        method="GET",
        route=f"{API}/{{run}}",
        status="200",
    )
    assert shown == [1]

    # A second scrape folds in nothing twice.
    again = await scrape(metered)
    assert again["ingest_rows_processed"] == rows
    assert again["ingest_chunk_apply_duration_seconds"] == chunks


async def test_a_scrape_without_the_token_is_refused(metered: httpx.AsyncClient) -> None:
    assert (await metered.get("/metrics")).status_code == 401
    wrong = await metered.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == "Bearer"


async def test_metrics_are_off_without_a_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics", headers={"Authorization": "Bearer anything"})
    assert response.status_code == 404
    assert "INGEST_METRICS_TOKEN" in response.json()["message"]
