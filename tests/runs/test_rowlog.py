"""The compact row log: a CSV chunk records its rows' outcomes in one string, failed rows keep
entries, and the rows API pages through both as if every row had an entry."""

from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.conftest import CreateImporter
from tests.factories import USER_FIELDS
from tests.runs.conftest import ImportCsv, sql

API = "/api/v1/ingest"


def content() -> tuple[str, list[tuple[int, str, str | None]]]:
    """A CSV of 23 rows, and each row's (row number, status, outcome): every 4th row fails
    (an age that is no number), every 7th repeats row 1's key (skipped)."""
    lines, expected = ["Email,Name,Age"], []
    for number in range(1, 24):
        if number % 7 == 0:
            lines.append("u1@example.com,Again,30")
            expected.append((number, "skipped", "skipped"))
        elif number % 4 == 0:
            lines.append(f"u{number}@example.com,Bad,old")
            expected.append((number, "failed", None))
        else:
            lines.append(f"u{number}@example.com,User {number},30")
            expected.append((number, "success", "created"))
    return "\n".join(lines) + "\n", expected


async def pages(
    client: httpx.AsyncClient, headers: dict[str, str], run_id: int, per_page: int, **query: Any
) -> tuple[list[dict[str, Any]], int]:
    """Every row of the run, page by page, and the total each page reported."""
    rows, page, totals = [], 1, set()
    while True:
        response = await client.get(
            f"{API}/{run_id}/rows",
            params={"per_page": per_page, "page": page, **query},
            headers=headers,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        rows += body["data"]
        totals.add(body["meta"]["total"])
        if body["links"]["next"] is None:
            break
        page += 1
    [total] = totals
    return rows, total


@pytest.mark.parametrize("chunk_size", [3, 1000])
async def test_rows_page_through_entries_and_chunk_records_alike(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    create_importer: CreateImporter,
    import_csv: ImportCsv,
    session_factory: async_sessionmaker[AsyncSession],
    chunk_size: int,
) -> None:
    await create_importer(
        key=["email"], fields=USER_FIELDS, on_duplicate="skip", chunk_size=chunk_size
    )
    csv, expected = content()
    run_id = await import_csv(csv)
    entries = await sql(
        session_factory, "SELECT row_number FROM run_rows WHERE run_id = :id", id=run_id
    )
    failed = [number for number, status, _ in expected if status == "failed"]
    assert sorted(n for (n,) in entries) == failed  # only failed rows have entries

    for status in (None, "success", "failed", "skipped"):
        wanted = [row for row in expected if status is None or row[1] == status]
        for per_page in (1, 2, 5, 100):
            query = {"status": status} if status else {}
            rows, total = await pages(client, admin_headers, run_id, per_page, **query)
            assert total == len(wanted), (status, per_page)
            assert [(r["row_number"], r["status"], r["outcome"]) for r in rows] == wanted
    rows, _ = await pages(client, admin_headers, run_id, 100)
    by_number = {row["row_number"]: row for row in rows}
    # Recorded rows have no entry id; their data is read back from the file.
    assert by_number[1]["id"] is None
    assert by_number[1]["data"] == {"Email": "u1@example.com", "Name": "User 1", "Age": "30"}
    assert by_number[4]["id"] is not None and by_number[4]["errors"] is not None
    assert by_number[7]["data"] == {"Email": "u1@example.com", "Name": "Again", "Age": "30"}
    beyond = await client.get(
        f"{API}/{run_id}/rows", params={"page": 9, "per_page": 10}, headers=admin_headers
    )
    assert beyond.json()["data"] == [] and beyond.json()["meta"]["total"] == 23


async def test_a_dry_run_and_log_rows_failed_keep_their_meaning(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    create_importer: CreateImporter,
    upload: Any,
    run_worker: Any,
    import_csv: ImportCsv,
) -> None:
    """A dry run's row log is its report (an entry per row); with `log_rows: failed` only
    failed rows are listed."""
    await create_importer(key=["email"], fields=USER_FIELDS, on_duplicate="skip")
    csv, expected = content()
    response = await upload("users", csv, dry_run=True)
    await run_worker()
    dry, _ = await pages(client, admin_headers, response.json()["data"]["id"], 100)
    assert [(r["row_number"], r["status"]) for r in dry] == [(n, s) for n, s, _ in expected]
    assert all(row["id"] is not None for row in dry)

    await create_importer(
        slug="failures", key=["email"], fields=USER_FIELDS, on_duplicate="skip", log_rows="failed"
    )
    run_id = await import_csv(csv, slug="failures")
    listed, total = await pages(client, admin_headers, run_id, 100)
    assert [r["row_number"] for r in listed] == [n for n, s, _ in expected if s == "failed"]
    assert total == len(listed)
