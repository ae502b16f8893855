"""``POST /{run}/retry``: a new run with exactly the failed rows of its parent (SPEC §4, §5)."""

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.runs import rowlog
from tests.conftest import RunWorker
from tests.runs.conftest import (
    API,
    CLEAN_CSV,
    DEFECT_ROWS,
    DEFECTS_CSV,
    USER_FIELDS,
    ImportCsv,
    MakeRun,
    fetch_run,
    sql,
)

pytestmark = pytest.mark.usefixtures("users_importer")


async def row_numbers(
    factory: async_sessionmaker[AsyncSession], run_id: int, status: str | None = None
) -> list[int]:
    async with factory() as session:
        rows, _ = await rowlog.page(session, run_id, status, 0, 10_000)
    return [row["row_number"] for row in rows]


async def relax_age_limit(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    """Fix the importer: ages up to 300 are fine now."""
    fields = {**USER_FIELDS, "age": {**USER_FIELDS["age"], "max": 300}}
    response = await client.put(
        f"{API}/importers/users",
        json={"collection": "users", "key": ["email"], "on_duplicate": "fail", "fields": fields},
        headers=headers,
    )
    assert response.status_code == 200, response.text


async def test_retry_processes_only_the_failed_rows_through_the_same_importer(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    import_csv: ImportCsv,
    run_worker: RunWorker,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    parent_id = await import_csv(DEFECTS_CSV)
    await relax_age_limit(client, admin_headers)

    response = await client.post(f"{API}/{parent_id}/retry", headers=admin_headers)
    assert response.status_code == 202, response.text
    retry = response.json()["data"]
    assert retry["status"] == "pending"
    assert retry["parent_run_id"] == parent_id
    assert retry["kind"] == "retry" and retry["importer"] == "users"
    assert retry["dry_run"] is False
    assert retry["original_filename"] == "users.csv"
    parent = await fetch_run(session_factory, parent_id)
    assert (await fetch_run(session_factory, retry["id"])).columns == parent.columns

    await run_worker()
    run = (await client.get(f"{API}/{retry['id']}", headers=admin_headers)).json()["data"]
    # Exactly the parent's 7 failed rows, with their row numbers; row 9 (age 200) now passes.
    assert run["progress"]["total"] == 7
    assert [row["row_number"] for row in run["rows"]] == DEFECT_ROWS
    assert await row_numbers(session_factory, retry["id"], "success") == [9]
    assert run["summary"]["created"] == 1
    records = await sql(
        session_factory, "SELECT _key, _last_run_id FROM ingest_data.users ORDER BY _key"
    )
    # The parent's good rows were not written again.
    assert [tuple(r) for r in records] == [
        ("ada@example.com", parent_id),
        ("dup@example.com", parent_id),
        ("frank@example.com", retry["id"]),
    ]
    assert run["status"] == "completed_with_errors"


async def test_retry_of_a_retry_takes_the_rows_that_still_fail(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    import_csv: ImportCsv,
    run_worker: RunWorker,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    parent_id = await import_csv(DEFECTS_CSV)
    first = (await client.post(f"{API}/{parent_id}/retry", headers=admin_headers)).json()["data"]
    await run_worker()
    assert await row_numbers(session_factory, first["id"], "failed") == DEFECT_ROWS

    await relax_age_limit(client, admin_headers)
    response = await client.post(f"{API}/{first['id']}/retry", headers=admin_headers)
    assert response.status_code == 202, response.text
    second = response.json()["data"]
    assert second["parent_run_id"] == first["id"]
    await run_worker()
    assert await row_numbers(session_factory, second["id"]) == DEFECT_ROWS
    assert await row_numbers(session_factory, second["id"], "success") == [9]

    third = (await client.post(f"{API}/{second['id']}/retry", headers=admin_headers)).json()
    await run_worker()
    assert await row_numbers(session_factory, third["data"]["id"]) == [2, 3, 5, 6, 7, 8]


async def test_retry_as_a_dry_run_writes_nothing(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    import_csv: ImportCsv,
    run_worker: RunWorker,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    parent_id = await import_csv(DEFECTS_CSV)
    await relax_age_limit(client, admin_headers)
    response = await client.post(
        f"{API}/{parent_id}/retry", json={"dry_run": True}, headers=admin_headers
    )
    assert response.status_code == 202
    assert response.json()["data"]["dry_run"] is True
    await run_worker()
    run = await fetch_run(session_factory, response.json()["data"]["id"])
    assert run.summary is not None and run.summary["created"] == 1
    keys = await sql(session_factory, "SELECT _key FROM ingest_data.users ORDER BY _key")
    assert [k for (k,) in keys] == ["ada@example.com", "dup@example.com"]


async def test_retry_with_no_failed_rows_returns_400(
    client: httpx.AsyncClient, admin_headers: dict[str, str], import_csv: ImportCsv
) -> None:
    run_id = await import_csv(CLEAN_CSV)
    response = await client.post(f"{API}/{run_id}/retry", headers=admin_headers)
    assert response.status_code == 400
    assert response.json() == {"message": f"Run {run_id} has no failed rows to retry."}


@pytest.mark.parametrize("status", ["pending", "processing"])
async def test_retry_of_a_run_still_running_is_409(
    client: httpx.AsyncClient, admin_headers: dict[str, str], make_run: MakeRun, status: str
) -> None:
    run_id = await make_run(status=status)
    response = await client.post(f"{API}/{run_id}/retry", headers=admin_headers)
    assert response.status_code == 409
    assert response.json()["message"] == (
        f"Run {run_id} is still {status}; retry it once it has finished."
    )


async def test_retry_of_unknown_run_is_404_and_a_bad_body_422(
    client: httpx.AsyncClient, admin_headers: dict[str, str], import_csv: ImportCsv
) -> None:
    assert (await client.post(f"{API}/999/retry", headers=admin_headers)).status_code == 404
    run_id = await import_csv(DEFECTS_CSV)
    response = await client.post(
        f"{API}/{run_id}/retry", json={"dry_run": "perhaps"}, headers=admin_headers
    )
    assert response.status_code == 422
    assert "dry_run" in response.json()["errors"]


async def test_concurrent_retries_of_one_run_create_one_run(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    import_csv: ImportCsv,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    parent_id = await import_csv(DEFECTS_CSV)
    responses = await asyncio.gather(
        *(client.post(f"{API}/{parent_id}/retry", headers=admin_headers) for _ in range(4))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [202, 409, 409, 409], [r.text for r in responses]
    winner = next(r for r in responses if r.status_code == 202).json()["data"]["id"]
    conflict = next(r for r in responses if r.status_code == 409).json()["message"]
    assert conflict == f"Run {parent_id} is already being retried by run {winner}."
    children = await sql(
        session_factory, "SELECT id FROM runs WHERE parent_run_id = :p", p=parent_id
    )
    assert [c for (c,) in children] == [winner]


async def test_retry_after_the_previous_retry_finished_is_allowed(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    import_csv: ImportCsv,
    run_worker: RunWorker,
) -> None:
    parent_id = await import_csv(DEFECTS_CSV)
    assert (await client.post(f"{API}/{parent_id}/retry", headers=admin_headers)).status_code == 202
    await run_worker()
    again = await client.post(f"{API}/{parent_id}/retry", headers=admin_headers)
    assert again.status_code == 202


async def test_retry_with_an_idempotency_key_replays_the_first_response(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    import_csv: ImportCsv,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    parent_id = await import_csv(DEFECTS_CSV)
    headers = {**admin_headers, "Idempotency-Key": "retry-once"}
    url = f"{API}/{parent_id}/retry"
    first, second = [await client.post(url, headers=headers) for _ in range(2)]
    assert first.status_code == second.status_code == 202
    assert second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"
    different = await client.post(url, json={"dry_run": True}, headers=headers)
    assert different.status_code == 422
    assert "Idempotency-Key" in different.json()["errors"]
    children = await sql(
        session_factory, "SELECT id FROM runs WHERE parent_run_id = :p", p=parent_id
    )
    assert len(children) == 1


async def test_retry_needs_the_create_ability(
    client: httpx.AsyncClient, import_csv: ImportCsv, make_token: Any
) -> None:
    run_id = await import_csv(DEFECTS_CSV)
    token = await make_token(role="viewer", abilities=["ingest:view"])
    response = await client.post(
        f"{API}/{run_id}/retry", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 403
