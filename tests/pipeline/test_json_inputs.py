"""JSON and NDJSON uploads end to end: a line or element that cannot be read is that row's
error, the header comes from the rows that can be, and the rest of the file is processed."""

from typing import Any

import httpx
import pytest

from tests.conftest import CreateImporter, RunWorker, Upload
from tests.factories import USER_FIELDS

API = "/api/v1/ingest"

ADA = '{"Email": "ada@example.com", "Name": "Ada", "Age": 36}'
ALAN = '{"Email": "alan@example.com", "Name": "Alan", "Age": 41}'
HUGE = "1" + "0" * 400  # valid JSON, past what a double holds


@pytest.fixture
async def users(create_importer: CreateImporter) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)


async def imported(
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    headers: dict[str, str],
    content: str,
    filename: str,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Uploads `content` to `users`, drains the worker: (the run, its rows)."""
    response = await upload("users", content, filename=filename)
    assert response.status_code == 202, response.text
    run_id = response.json()["data"]["id"]
    await run_worker()
    run = (await client.get(f"{API}/{run_id}", headers=headers)).json()["data"]
    return run, run["rows"]


async def keys(client: httpx.AsyncClient, headers: dict[str, str]) -> list[str]:
    listed = (await client.get(f"{API}/records/users", headers=headers)).json()["data"]
    return sorted(record["key"] for record in listed)


@pytest.mark.usefixtures("users")
@pytest.mark.parametrize(
    ("first", "message"),
    [
        ('{"Email": "x@example.com", "Name": ', "Line is not valid JSON: "),
        ('{"Email": "x@example.com", "Name": "Xi", "Age": ' + HUGE + "}", "Line holds a number"),
        ('{"Email": "x@example.com", "Age": NaN}', "Line is not valid JSON: "),
        ('["x@example.com", "Xi"]', "Line is not a JSON object."),
    ],
    ids=["invalid-json", "huge-integer", "nan", "not-an-object"],
)
async def test_an_ndjson_file_whose_first_line_is_bad_fails_that_row_and_stores_the_rest(
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    first: str,
    message: str,
) -> None:
    content = f"{first}\n{ADA}\n{ALAN}\n"
    run, rows = await imported(upload, run_worker, client, admin_headers, content, "u.ndjson")

    assert run["status"] == "completed_with_errors", run["error_message"]
    assert run["progress"] == {
        "total": 3,
        "processed": 3,
        "successful": 2,
        "failed": 1,
        "skipped": 0,
    }
    assert [(row["row_number"], row["status"]) for row in rows] == [
        (1, "failed"),
        (2, "success"),
        (3, "success"),
    ]
    assert rows[0]["errors"]["message"].startswith(message)
    assert await keys(client, admin_headers) == ["ada@example.com", "alan@example.com"]


@pytest.mark.usefixtures("users")
async def test_an_ndjson_line_with_a_huge_integer_is_a_row_error_that_says_so(
    upload: Upload, run_worker: RunWorker, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    huge = '{"Email": "x@example.com", "Name": "Xi", "Age": ' + HUGE + "}"
    content = f"{ADA}\n{huge}\n{ALAN}\n"
    run, rows = await imported(upload, run_worker, client, admin_headers, content, "u.ndjson")

    assert run["status"] == "completed_with_errors", run["error_message"]
    assert [row["status"] for row in rows] == ["success", "failed", "success"]
    assert rows[1]["errors"]["message"] == "Line holds a number too large to read."
    assert rows[1]["data"] == {"_line": huge[:200]}
    assert await keys(client, admin_headers) == ["ada@example.com", "alan@example.com"]


@pytest.mark.usefixtures("users")
async def test_an_ndjson_file_without_one_object_fails_the_run_with_a_clear_message(
    upload: Upload, run_worker: RunWorker, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    content = '{"Email": \n[1, 2]\n'
    run, _ = await imported(upload, run_worker, client, admin_headers, content, "u.ndjson")

    assert run["status"] == "failed"
    assert run["error_message"].startswith(
        "No line of the NDJSON file is a JSON object; the first says: Line is not valid JSON: "
    )


@pytest.mark.usefixtures("users")
async def test_a_json_array_whose_first_element_is_not_an_object_fails_that_row_only(
    upload: Upload, run_worker: RunWorker, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    content = f'["ada@example.com", {ADA}, {ALAN}]'
    run, rows = await imported(upload, run_worker, client, admin_headers, content, "u.json")

    assert run["status"] == "completed_with_errors", run["error_message"]
    assert [row["status"] for row in rows] == ["failed", "success", "success"]
    assert rows[0]["errors"]["message"] == "Item is not a JSON object."
    assert await keys(client, admin_headers) == ["ada@example.com", "alan@example.com"]


@pytest.mark.usefixtures("users")
async def test_a_json_array_with_a_huge_integer_fails_the_run_saying_why(
    upload: Upload, run_worker: RunWorker, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    # The JSON array is one document: its parser cannot resume past the number.
    huge = '{"Email": "x@example.com", "Name": "Xi", "Age": ' + HUGE + "}"
    run, _ = await imported(upload, run_worker, client, admin_headers, f"[{huge}, {ADA}]", "u.json")

    assert run["status"] == "failed"
    assert run["error_message"] == (
        "The JSON file is not valid after item 0: an integer is outside the 64-bit range."
    )
