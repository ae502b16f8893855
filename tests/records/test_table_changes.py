"""A collection table changed by an importer while a worker keeps its connections: the
worker's next runs write the new shape, with no chunk retried for it."""

from typing import Any

import asyncpg
import httpx
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.records.store import Table, Write
from app.records.tables import SYSTEM_COLUMNS
from tests.conftest import CreateImporter, Upload
from tests.worker.processes import fetch, start_worker, wait_for, workers

API = "/api/v1/ingest"


async def finished(
    client: httpx.AsyncClient, headers: dict[str, str], run_id: int
) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        run = (await client.get(f"{API}/{run_id}", headers=headers)).json()["data"]
        return run if run["status"] not in ("pending", "processing") else None

    result: dict[str, Any] = await wait_for(done, f"run {run_id} to finish")
    return result


async def test_a_worker_writes_a_widened_and_grown_table_without_retrying_a_chunk(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    create_importer: CreateImporter,
    upload: Upload,
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    fields: dict[str, Any] = {"name": {"type": "string"}, "score": {"type": "integer"}}
    await create_importer(slug="people", key=["name"], fields=fields)
    with workers() as procs:
        procs.append(start_worker(settings))
        runs = []
        first = await upload("people", "name,score\nAda,1\nAlan,2\n")
        runs.append(await finished(client, admin_headers, first.json()["data"]["id"]))

        # The worker running: widen score (bigint -> double precision), then add a column.
        # Each time a new key (written by COPY) and a changed one (by the upsert).
        widened = {**fields, "score": {"type": "number"}}
        grown = {**widened, "city": {"type": "string"}}
        for changed, content in (
            (widened, "name,score\nAlan,2.5\nBob,0.5\n"),
            (grown, "name,score,city\nAda,1.5,Lisbon\nGrace,3,Oslo\n"),
        ):
            definition = {"slug": "people", "key": ["name"], "fields": changed}
            response = await client.put(
                f"{API}/importers/people",
                json={**definition, "collection": "people"},
                headers=admin_headers,
            )
            assert response.status_code == 200, response.text
            sent = await upload("people", content)
            runs.append(await finished(client, admin_headers, sent.json()["data"]["id"]))

    assert [run["status"] for run in runs] == ["completed"] * 3
    attempts = await fetch(
        session_factory,
        "SELECT max(attempts) FROM run_chunks WHERE run_id = ANY(:ids)",
        ids=[run["id"] for run in runs],
    )
    assert attempts == [(1,)]
    listed = (await client.get(f"{API}/records/people", headers=admin_headers)).json()["data"]
    assert {r["key"]: r["data"] for r in listed} == {
        "Ada": {"name": "Ada", "score": 1.5, "city": "Lisbon"},
        "Alan": {"name": "Alan", "score": 2.5, "city": None},
        "Bob": {"name": "Bob", "score": 0.5, "city": None},
        "Grace": {"name": "Grace", "score": 3.0, "city": "Oslo"},
    }


async def test_one_connection_copies_into_a_table_widened_since_its_last_copy(
    settings: Settings,
) -> None:
    """The same connection COPYs, the column is widened, it COPYs again: the value lands as
    the new type holds it (not encoded for the old one)."""
    url = make_url(settings.require_database_url()).set(drivername="postgresql")
    conn = await asyncpg.connect(url.render_as_string(hide_password=False))
    try:
        await conn.execute(f"CREATE TABLE ingest_data.scores ({SYSTEM_COLUMNS}, score bigint)")
        before = Table("scores", {"score": "bigint"}, ["score"])
        async with conn.transaction():
            await before.write(conn, None, 1, {"a": Write({"score": 1}, "h1", 1, None)}, ["a"])
        await conn.execute(
            "ALTER TABLE ingest_data.scores ALTER COLUMN score TYPE double precision"
        )
        after = Table("scores", {"score": "double precision"}, ["score"])
        async with conn.transaction():
            await after.write(conn, None, 2, {"b": Write({"score": 2.5}, "h2", 1, None)}, ["b"])
        stored = await conn.fetch("SELECT _key, score FROM ingest_data.scores ORDER BY _key")
        assert [tuple(row) for row in stored] == [("a", 1.0), ("b", 2.5)]
    finally:
        await conn.close()
