"""A cancel that arrives while the input is being split (issue 12): `total` is still the
input's row count, and the run ends `cancelled` with exact counters (SPEC §4)."""

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.conftest import CreateImporter, RunWorker, Upload
from tests.factories import USER_FIELDS
from tests.pipeline.test_intake import xlsx_bytes
from tests.pipeline.test_pipeline import scalar, session_execute

API = "/api/v1/ingest"
ROWS = 50


def users(count: int) -> list[list[Any]]:
    return [[f"user{i}@example.com", f"User {i}", i % 100] for i in range(count)]


def as_csv(count: int) -> str:
    lines = ["Email,Name,Age", *(",".join(map(str, row)) for row in users(count - 1))]
    # The rest is counted as a chunk job counts rows: a ragged row is one, a blank line none.
    return "\n".join(lines) + "\n\nragged@example.com,Ragged,1,extra\n"


def as_ndjson(count: int) -> str:
    keys = ("Email", "Name", "Age")
    return "".join(json.dumps(dict(zip(keys, row, strict=True))) + "\n" for row in users(count))


def as_json(count: int) -> str:
    keys = ("Email", "Name", "Age")
    return json.dumps({"data": [dict(zip(keys, row, strict=True)) for row in users(count)]})


INPUTS: dict[str, tuple[str, Callable[[int], str | bytes]]] = {
    "csv": ("users.csv", as_csv),
    "csv-utf16": ("users.csv", lambda count: as_csv(count).encode("utf-16")),
    "xlsx": ("users.xlsx", lambda count: xlsx_bytes([["Email", "Name", "Age"], *users(count)])),
    "json": ("users.json", as_json),
    "ndjson": ("users.ndjson", as_ndjson),
}


async def cancel_as_the_split_starts(
    factory: async_sessionmaker[AsyncSession], run_id: int
) -> None:
    """The state a cancel leaves when it arrives just after the split job took the run: the
    splitter meets it when it stores its first chunk, and stores no other."""
    await session_execute(
        factory, "UPDATE runs SET cancel_requested = true WHERE id = :id", id=run_id
    )


def assert_cancelled_with_every_row_counted(run: dict[str, Any], total: int) -> None:
    progress = run["progress"]
    assert run["status"] == "cancelled"
    assert progress["total"] == total
    assert progress["processed"] < total
    assert progress["processed"] == (
        progress["successful"] + progress["failed"] + progress["skipped"]
    )


@pytest.mark.parametrize("name", sorted(INPUTS))
async def test_a_run_cancelled_while_splitting_still_counts_every_row_of_its_input(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_factory: async_sessionmaker[AsyncSession],
    name: str,
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=5)
    filename, content = INPUTS[name]
    run_id = (await upload("users", content(ROWS), filename=filename)).json()["data"]["id"]
    await cancel_as_the_split_starts(session_factory, run_id)

    await run_worker()

    run = (await client.get(f"{API}/{run_id}", headers=admin_headers)).json()["data"]
    assert_cancelled_with_every_row_counted(run, ROWS)
    # The cancel stopped the split: only the first of its ten chunks was stored.
    sql = "SELECT count(*) FROM run_chunks WHERE run_id = :id"
    assert await scalar(session_factory, sql, id=run_id) == 1


async def test_a_retry_cancelled_while_splitting_still_counts_every_failed_row(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=5)
    rows = [[f"user{i}@example.com", f"User {i}", 200] for i in range(ROWS)]  # ages too high
    content = xlsx_bytes([["Email", "Name", "Age"], *rows])
    parent_id = (await upload("users", content, filename="users.xlsx")).json()["data"]["id"]
    await run_worker()
    response = await client.post(f"{API}/{parent_id}/retry", headers=admin_headers)
    assert response.status_code == 202, response.text
    retry_id = response.json()["data"]["id"]
    await cancel_as_the_split_starts(session_factory, retry_id)

    await run_worker()

    run = (await client.get(f"{API}/{retry_id}", headers=admin_headers)).json()["data"]
    assert_cancelled_with_every_row_counted(run, ROWS)
