"""CSV quotes over HTTP: a quote left open at the end of the file fails its row (issue 12)."""

from typing import Any

import httpx
import pytest

from tests.conftest import CreateImporter, RunWorker, Upload
from tests.factories import USER_FIELDS

API = "/api/v1/ingest"


async def finished_run(
    client: httpx.AsyncClient, headers: dict[str, str], run_id: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    run = (await client.get(f"{API}/{run_id}", headers=headers)).json()["data"]
    rows = (await client.get(f"{API}/{run_id}/rows?per_page=100", headers=headers)).json()
    return run, sorted(rows["data"], key=lambda row: row["row_number"])


def outcomes(rows: list[dict[str, Any]]) -> list[tuple[int, str, str | None]]:
    return [
        (row["row_number"], row["status"], row["errors"] and row["errors"]["message"])
        for row in rows
    ]


@pytest.mark.parametrize(
    "content",
    [
        'email,name\na@x.org,Ann\nb@x.org,"Bob\nc@x.org,Cy\n',
        'email,name\r\na@x.org,Ann\r\nb@x.org,"Bob\r\nc@x.org,Cy',
        'email,name\na@x.org,Ann\nb@x.org,"Bob',
    ],
    ids=["lf", "crlf-no-final-newline", "quote-on-the-last-line"],
)
async def test_a_quote_left_open_at_the_end_of_the_file_fails_its_row(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    content: str,
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    run_id = (await upload("users", content)).json()["data"]["id"]

    await run_worker()

    run, rows = await finished_run(client, admin_headers, run_id)
    assert run["status"] == "completed_with_errors"
    assert run["progress"] == {
        "total": 2,
        "processed": 2,
        "successful": 1,
        "failed": 1,
        "skipped": 0,
    }
    assert outcomes(rows) == [
        (1, "success", None),
        (2, "failed", "Unterminated quoted field starting on line 3"),
    ]


async def test_an_open_quote_in_a_later_chunk_names_its_line_in_the_whole_file(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
) -> None:
    """The chunk job parses its byte range alone: the line it names is still the file's."""
    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=2)
    content = (
        "\nemail,name\n"  # a blank line before the header is line 1
        'a@x.org,"Ann\nMarie"\n'  # a quoted newline: one row over lines 3 and 4
        "b@x.org,Ben\n"
        "c@x.org,Cy\r\n"
        "d@x.org,Di\r"
        'e@x.org,Eve,"and ""then""\nmore\n'  # the open quote is on line 8
        "f@x.org,Flo\n"
    )
    run_id = (await upload("users", content)).json()["data"]["id"]

    await run_worker()

    run, rows = await finished_run(client, admin_headers, run_id)
    assert run["status"] == "completed_with_errors"
    assert outcomes(rows) == [
        (1, "success", None),
        (2, "success", None),
        (3, "success", None),
        (4, "success", None),
        (5, "failed", "Unterminated quoted field starting on line 8"),
    ]


async def test_an_open_quote_in_utf16_text_fails_its_row_alike(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    content = 'email,name\na@x.org,Ann\nb@x.org,"Bob\nc@x.org,Cy\n'.encode("utf-16")
    run_id = (await upload("users", content)).json()["data"]["id"]

    await run_worker()

    run, rows = await finished_run(client, admin_headers, run_id)
    assert run["status"] == "completed_with_errors"
    assert outcomes(rows) == [
        (1, "success", None),
        (2, "failed", "Unterminated quoted field starting on line 3"),
    ]


async def test_a_quote_left_open_in_the_header_fails_the_run(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    run_id = (await upload("users", 'email,"name\na@x.org,Ann\n')).json()["data"]["id"]

    await run_worker()

    run, _ = await finished_run(client, admin_headers, run_id)
    assert run["status"] == "failed"
    assert run["error_message"] == "Unterminated quoted field starting on line 1"


async def test_a_quote_closed_many_lines_later_is_one_legal_multiline_field(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=1)
    content = 'email,name\na@x.org,Ann\nb@x.org,"Bob\nc@x.org,Cy\nd@x.org,Di"\ne@x.org,Eve\n'
    run_id = (await upload("users", content)).json()["data"]["id"]

    await run_worker()

    run, rows = await finished_run(client, admin_headers, run_id)
    assert run["status"] == "completed"
    assert outcomes(rows) == [(1, "success", None), (2, "success", None), (3, "success", None)]
    assert rows[1]["data"]["name"] == "Bob\nc@x.org,Cy\nd@x.org,Di"
