"""Error summary and the failed-rows CSV: aggregated in SQL, streamed, safe in a spreadsheet,
and good to upload again once fixed."""

from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.runs import service
from tests.conftest import CreateImporter, Upload
from tests.records.stored import stored_data
from tests.runs.conftest import (
    API,
    CLEAN_CSV,
    DEFECTS_CSV,
    USER_FIELDS,
    ImportCsv,
    MakeRun,
    fetch_run,
    parse_csv,
    sql,
)

INVALID = "The given data was invalid."
DUPLICATE = "Duplicate entry found for key 'email'."


# --- error summary -----------------------------------------------------------------------------


@pytest.mark.usefixtures("users_importer")
async def test_error_summary_counts_a_file_with_known_defects(
    client: httpx.AsyncClient, admin_headers: dict[str, str], import_csv: ImportCsv
) -> None:
    run_id = await import_csv(DEFECTS_CSV)
    response = await client.get(f"{API}/{run_id}/errors/summary", headers=admin_headers)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "data": {
            "total_failed_rows": 7,
            "error_summary": [
                {"message": INVALID, "count": 4},
                {"message": DUPLICATE, "count": 3},
            ],
            "validation_summary": [
                {"message": "email: The email field is required.", "count": 2},
                {"message": "age: The age may not be greater than 150.", "count": 1},
                {"message": "age: The age must be an integer.", "count": 1},
                {"message": "name: The name must be at least 2 characters.", "count": 1},
            ],
        }
    }


async def test_error_summary_is_aggregated_by_postgres_not_in_python(
    app: Any,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    users_importer: dict[str, Any],
    import_csv: ImportCsv,
) -> None:
    run_id = await import_csv(DEFECTS_CSV)
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    engine = app.state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        await client.get(f"{API}/{run_id}/errors/summary", headers=admin_headers)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    on_rows = [s for s in statements if "run_rows" in s]
    assert on_rows and all("count(" in s for s in on_rows)
    assert sum("GROUP BY" in s for s in on_rows) == 2


@pytest.mark.usefixtures("users_importer")
async def test_error_summary_of_a_clean_run_is_empty_and_of_an_unknown_run_404(
    client: httpx.AsyncClient, admin_headers: dict[str, str], import_csv: ImportCsv
) -> None:
    run_id = await import_csv(CLEAN_CSV)
    response = await client.get(f"{API}/{run_id}/errors/summary", headers=admin_headers)
    assert response.json() == {
        "data": {"total_failed_rows": 0, "error_summary": [], "validation_summary": []}
    }
    missing = await client.get(f"{API}/5150/errors/summary", headers=admin_headers)
    assert missing.status_code == 404


# --- failed-rows CSV ---------------------------------------------------------------------------


@pytest.mark.usefixtures("users_importer")
async def test_failed_rows_download_keeps_the_original_columns_in_order(
    client: httpx.AsyncClient, admin_headers: dict[str, str], import_csv: ImportCsv
) -> None:
    # Columns in an order unlike the fields', with an unmapped column kept in the row data.
    csv_text = "Age,Note,Name,Email\n36,first,Ada,ada@example.com\nx,second,B,\n"
    run_id = await import_csv(csv_text)
    response = await client.get(f"{API}/{run_id}/failed-rows/download", headers=admin_headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == (
        f'attachment; filename="run-{run_id}-failed-rows.csv"'
    )
    assert parse_csv(response.text) == [
        ["Age", "Note", "Name", "Email", "_error_message", "_row_number"],
        [
            "x",
            "second",
            "B",
            "",
            # Field errors in the order of the file's columns.
            "The given data was invalid. age: The age must be an integer.; "
            "name: The name must be at least 2 characters.; email: The email field is required.",
            "2",
        ],
    ]


@pytest.mark.usefixtures("users_importer")
async def test_failed_rows_download_escapes_cells_a_spreadsheet_would_run(
    client: httpx.AsyncClient, admin_headers: dict[str, str], import_csv: ImportCsv
) -> None:
    csv_text = (
        "Email,Name,Age,Note\n"
        "bad-1,=SUM(A1),1,+cmd\n"
        'bad-2,-Dash,2,"@import"\n'
        'bad-3,"\tTab",3,"\rCR"\n'
        "bad-4,Plain,4,a=b\n"
    )
    run_id = await import_csv(csv_text)
    response = await client.get(f"{API}/{run_id}/failed-rows/download", headers=admin_headers)
    rows = parse_csv(response.text)
    assert [row[:4] for row in rows[1:]] == [
        ["bad-1", "'=SUM(A1)", "1", "'+cmd"],
        ["bad-2", "'-Dash", "2", "'@import"],
        ["bad-3", "'\tTab", "3", "'\rCR"],
        ["bad-4", "Plain", "4", "a=b"],
    ]


@pytest.mark.usefixtures("users_importer")
async def test_failed_rows_download_appends_keys_missing_from_the_header(
    client: httpx.AsyncClient, admin_headers: dict[str, str], import_csv: ImportCsv
) -> None:
    # A ragged row: its extra cell is kept as `_extra_1`, which the header never had.
    run_id = await import_csv("Email,Name,Age\nbad,Ann,1,surplus\nworse,Bo,2\n")
    response = await client.get(f"{API}/{run_id}/failed-rows/download", headers=admin_headers)
    rows = parse_csv(response.text)
    assert rows[0] == ["Email", "Name", "Age", "_extra_1", "_error_message", "_row_number"]
    assert rows[1][:4] == ["bad", "Ann", "1", "surplus"]
    assert rows[2][:4] == ["worse", "Bo", "2", ""]


@pytest.mark.usefixtures("users_importer")
async def test_failed_rows_download_is_404_without_failed_rows(
    client: httpx.AsyncClient, admin_headers: dict[str, str], import_csv: ImportCsv
) -> None:
    run_id = await import_csv(CLEAN_CSV)
    response = await client.get(f"{API}/{run_id}/failed-rows/download", headers=admin_headers)
    assert response.status_code == 404
    assert response.json() == {"message": f"Run {run_id} has no failed rows."}
    missing = await client.get(f"{API}/8080/failed-rows/download", headers=admin_headers)
    assert missing.status_code == 404


@pytest.mark.usefixtures("users_importer")
async def test_failed_rows_download_streams_many_rows_in_row_order(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    make_run: MakeRun,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    count = service.EXPORT_PAGE_ROWS * 3 + 17
    run_id = await make_run(status="failed", columns=["Email", "Name"])
    await sql(
        session_factory,
        "INSERT INTO run_rows (run_id, row_number, status, data, errors) "
        "SELECT :id, n, CASE WHEN n % 3 = 0 THEN 'success' ELSE 'failed' END, "
        "jsonb_build_object('Email', 'user' || n, 'Name', '-' || n), "
        "jsonb_build_object('message', 'bad ' || n) FROM generate_series(1, :count) AS n",
        id=run_id,
        count=count,
    )
    response = await client.get(f"{API}/{run_id}/failed-rows/download", headers=admin_headers)
    assert response.status_code == 200
    rows = parse_csv(response.text)
    expected = [n for n in range(1, count + 1) if n % 3]
    assert rows[0] == ["Email", "Name", "_error_message", "_row_number"]
    assert [int(row[-1]) for row in rows[1:]] == expected
    assert rows[1] == ["user1", "'-1", "bad 1", "1"]

    # The body is produced page by page (httpx's test transport buffers it, so ask the
    # generator itself): one piece per keyset page, never the whole file at once.
    async with session_factory() as session:
        export = await service.failed_rows_export(session, await service.get_run(session, run_id))
    pieces = [piece async for piece in service.failed_rows_csv(session_factory, export)]
    assert len(expected) > 2 * service.EXPORT_PAGE_ROWS
    assert len(pieces) == 3
    assert b"".join(pieces).decode() == response.text


# --- fix & re-upload ---------------------------------------------------------------------------


async def test_fixed_failed_rows_csv_uploads_cleanly_to_the_same_importer(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    create_importer: CreateImporter,
    upload: Upload,
    import_csv: ImportCsv,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    run_id = await import_csv(
        "Email,Name,Age\n"
        "ada@example.com,Ada,36\n"
        "not-an-email,=SUM(A1),40\n"
        "bob@example.com,-Dash,-3\n"
        ",Cy,x\n"
    )
    response = await client.get(f"{API}/{run_id}/failed-rows/download", headers=admin_headers)
    rows = parse_csv(response.text)
    assert rows[0] == ["Email", "Name", "Age", "_error_message", "_row_number"]
    assert rows[1][:3] == ["not-an-email", "'=SUM(A1)", "40"]
    assert rows[2][:3] == ["bob@example.com", "'-Dash", "'-3"]

    # The operator fixes the bad cells and leaves everything else as exported.
    rows[1][0] = "sum@example.com"
    rows[2][2] = "3"
    rows[3][0], rows[3][2] = "cy@example.com", "31"
    fixed = "".join(",".join(_quote(cell) for cell in row) + "\r\n" for row in rows)

    new_run = await import_csv(fixed, filename="run-failed-rows.csv")
    run = await fetch_run(session_factory, new_run)
    assert run.status == "completed", run.error_message
    assert (run.total, run.successful, run.failed) == (3, 3, 0)
    assert await stored_data(session_factory, "users") == {
        "ada@example.com": {"email": "ada@example.com", "name": "Ada", "age": 36},
        "bob@example.com": {"email": "bob@example.com", "name": "-Dash", "age": 3},
        "cy@example.com": {"email": "cy@example.com", "name": "Cy", "age": 31},
        # The export's escape is gone: the value is what the original file held.
        "sum@example.com": {"email": "sum@example.com", "name": "=SUM(A1)", "age": 40},
    }


def _quote(cell: str) -> str:
    return '"' + cell.replace('"', '""') + '"' if any(c in cell for c in ',"\r\n') else cell
