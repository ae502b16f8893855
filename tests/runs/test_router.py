"""The runs API: list, show, rows and cancel (SPEC §5)."""

from typing import Any

import httpx
import pytest
from arq import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.db import unit_of_work
from app.core.storage import path_for
from app.main import create_app
from app.pipeline import splitter
from tests.conftest import CreateImporter, MakeToken, RunWorker, Upload
from tests.runs.conftest import (
    API,
    CLEAN_CSV,
    DEFECTS_CSV,
    USER_FIELDS,
    ImportCsv,
    MakeRun,
    MakeSource,
    days_ago,
    fetch_run,
    sql,
)

# SPEC §5: IngestRunResource may gain fields, never lose or rename these.
RUN_KEYS = {
    "id",
    "importer",
    "status",
    "user_id",
    "original_filename",
    "dry_run",
    "parent_run_id",
    "progress",
    "summary",
    "error_message",
    "started_at",
    "completed_at",
}
ROW_KEYS = {"id", "row_number", "status", "outcome", "data", "errors"}
PAGE_META = {"current_page", "per_page", "total", "last_page"}
PAGE_LINKS = {"first", "last", "prev", "next"}


def ids(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [run["id"] for run in response.json()["data"]]


# --- show --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("users_importer")
async def test_show_run_has_the_spec_shape_with_its_rows(
    client: httpx.AsyncClient, admin_headers: dict[str, str], import_csv: ImportCsv
) -> None:
    run_id = await import_csv(DEFECTS_CSV)
    response = await client.get(f"{API}/{run_id}", headers=admin_headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"data"}
    run = body["data"]
    assert RUN_KEYS | {"rows"} <= set(run)
    assert run["importer"] == "users"
    assert run["status"] == "completed_with_errors"
    assert run["original_filename"] == "users.csv"
    assert run["progress"] == {
        "total": 9,
        "processed": 9,
        "successful": 2,
        "failed": 7,
        "skipped": 0,
    }
    assert set(run["progress"]) >= {"total", "processed", "successful", "failed"}
    assert run["summary"] == {
        "created": 2,
        "updated": 0,
        "unchanged": 0,
        "skipped": 0,
        "staged": 0,
        "deleted": 0,
    }
    assert run["started_at"].endswith("Z") and run["completed_at"].endswith("Z")
    assert [row["row_number"] for row in run["rows"]] == list(range(1, 10))
    assert all(set(row) == ROW_KEYS for row in run["rows"])
    first, second = run["rows"][0], run["rows"][1]
    assert first == {
        "id": first["id"],
        "row_number": 1,
        "status": "success",
        "outcome": "created",
        "data": {"Email": "ada@example.com", "Name": "Ada", "Age": "36"},
        "errors": None,
    }
    assert second["status"] == "failed" and second["outcome"] is None
    assert second["errors"] == {
        "message": "The given data was invalid.",
        "validation": {"email": ["The email field is required."]},
    }


async def test_show_run_returns_at_most_max_show_rows_rows(
    settings: Settings,
    queue: ArqRedis,
    users_importer: dict[str, Any],
    import_csv: ImportCsv,
    admin_headers: dict[str, str],
) -> None:
    run_id = await import_csv(DEFECTS_CSV)
    app = create_app(settings.model_copy(update={"max_show_rows": 3}))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        response = await client.get(f"{API}/{run_id}", headers=admin_headers)
    assert [row["row_number"] for row in response.json()["data"]["rows"]] == [1, 2, 3]


async def test_show_unknown_run_is_404(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.get(f"{API}/424242", headers=admin_headers)
    assert response.status_code == 404
    assert response.json() == {"message": "Run 424242 not found."}


async def test_fixed_paths_win_over_run_ids(
    client: httpx.AsyncClient, admin_headers: dict[str, str], users_importer: dict[str, Any]
) -> None:
    response = await client.get(f"{API}/importers", headers=admin_headers)
    assert response.status_code == 200
    assert response.json()["data"][0]["slug"] == "users"
    # Not an integer: no run route matches at all.
    assert (await client.get(f"{API}/abc", headers=admin_headers)).status_code == 404


# --- list --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("users_importer")
async def test_list_runs_is_newest_first_and_paginated(
    client: httpx.AsyncClient, admin_headers: dict[str, str], make_run: MakeRun
) -> None:
    created = [await make_run() for _ in range(5)]
    response = await client.get(f"{API}/", params={"per_page": 2}, headers=admin_headers)
    assert ids(response) == created[::-1][:2]
    body = response.json()
    assert set(body) == {"data", "meta", "links"}
    assert body["meta"] == {"current_page": 1, "per_page": 2, "total": 5, "last_page": 3}
    assert set(body["links"]) == PAGE_LINKS
    assert body["links"]["prev"] is None and "page=2" in body["links"]["next"]
    assert set(body["data"][0]) >= RUN_KEYS
    # A list item carries no rows; only the single resource does.
    assert "rows" not in body["data"][0]

    last = await client.get(f"{API}/", params={"per_page": 2, "page": 3}, headers=admin_headers)
    assert ids(last) == [created[0]]
    assert last.json()["links"]["next"] is None and "page=2" in last.json()["links"]["prev"]
    assert last.json()["meta"]["current_page"] == 3

    beyond = await client.get(f"{API}/", params={"per_page": 2, "page": 9}, headers=admin_headers)
    assert ids(beyond) == []
    assert beyond.json()["meta"]["total"] == 5


@pytest.mark.parametrize(
    "params",
    [{"per_page": 101}, {"per_page": 0}, {"page": 0}, {"status": "done"}, {"sort": "name"}],
)
async def test_list_runs_refuses_bad_query_parameters_with_422(
    client: httpx.AsyncClient, admin_headers: dict[str, str], params: dict[str, Any]
) -> None:
    response = await client.get(f"{API}/", params=params, headers=admin_headers)
    assert response.status_code == 422, response.text
    assert set(response.json()["errors"]) == set(params)


async def test_list_runs_defaults_to_15_per_page_and_accepts_100(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.get(f"{API}/", headers=admin_headers)
    assert response.json()["meta"] == {
        "current_page": 1,
        "per_page": 15,
        "total": 0,
        "last_page": 1,
    }
    response = await client.get(f"{API}/", params={"per_page": 100}, headers=admin_headers)
    assert response.status_code == 200


async def test_list_runs_filters_by_status_and_importer(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    create_importer: CreateImporter,
    make_run: MakeRun,
) -> None:
    await create_importer(slug="users", key=["email"], fields=USER_FIELDS)
    await create_importer(slug="events", fields={"name": {"type": "string"}}, action="append")
    failed = await make_run("users", status="failed")
    done = await make_run("users", status="completed")
    other = await make_run("events", status="failed")
    pending = await make_run("events", status="pending")

    get = lambda **params: client.get(f"{API}/", params=params, headers=admin_headers)  # noqa: E731
    assert ids(await get(status="failed")) == [other, failed]
    assert ids(await get(importer="users")) == [done, failed]
    assert ids(await get(importer="events", status="failed")) == [other]
    assert ids(await get(status="pending")) == [pending]
    assert ids(await get(importer="nope")) == []


@pytest.mark.usefixtures("users_importer")
async def test_list_runs_sorts_by_a_field_in_either_order(
    client: httpx.AsyncClient, admin_headers: dict[str, str], make_run: MakeRun
) -> None:
    old = await make_run(status="completed", completed_at=days_ago(3))
    running = await make_run(status="processing")
    recent = await make_run(status="failed", completed_at=days_ago(1))

    get = lambda **params: client.get(f"{API}/", params=params, headers=admin_headers)  # noqa: E731
    assert ids(await get(sort="id", order="asc")) == [old, running, recent]
    # Runs not finished yet have no completed_at: they come last either way.
    assert ids(await get(sort="completed_at")) == [recent, old, running]
    assert ids(await get(sort="completed_at", order="asc")) == [old, recent, running]
    assert ids(await get(sort="status", order="asc")) == [old, recent, running]
    assert ids(await get(sort="created_at", order="desc")) == [recent, running, old]


# --- rows --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("users_importer")
async def test_rows_are_paginated_in_row_order_and_filter_by_status(
    client: httpx.AsyncClient, admin_headers: dict[str, str], import_csv: ImportCsv
) -> None:
    run_id = await import_csv(DEFECTS_CSV)
    url = f"{API}/{run_id}/rows"
    response = await client.get(url, params={"per_page": 4}, headers=admin_headers)
    assert response.status_code == 200
    body = response.json()
    assert [r["row_number"] for r in body["data"]] == [1, 2, 3, 4]
    assert body["meta"] == {"current_page": 1, "per_page": 4, "total": 9, "last_page": 3}
    assert all(set(row) == ROW_KEYS for row in body["data"])

    last = await client.get(url, params={"per_page": 4, "page": 3}, headers=admin_headers)
    assert [r["row_number"] for r in last.json()["data"]] == [9]
    beyond = await client.get(url, params={"per_page": 4, "page": 4}, headers=admin_headers)
    assert beyond.json()["data"] == []

    failed = await client.get(url, params={"status": "failed"}, headers=admin_headers)
    assert [r["row_number"] for r in failed.json()["data"]] == [2, 3, 5, 6, 7, 8, 9]
    assert failed.json()["data"][2]["errors"] == {
        "message": "Duplicate entry found for key 'email'."
    }
    success = await client.get(url, params={"status": "success"}, headers=admin_headers)
    assert [r["row_number"] for r in success.json()["data"]] == [1, 4]


async def test_rows_that_did_not_fail_are_read_back_from_the_input_file(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    create_importer: CreateImporter,
    import_csv: ImportCsv,
    session_factory: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    # Chunks of 2 rows, a quoted newline, a ragged row and a skipped repeat: failed rows have
    # entries with their data, the chunks record the others, which the API reads back from
    # the file.
    await create_importer(key=["email"], fields=USER_FIELDS, on_duplicate="skip", chunk_size=2)
    content = (
        "Email,Name,Age,Note\n"
        'ada@example.com,Ada,36,"two\nlines"\n'
        "bob@example.com,Bob,x,\n"
        "cy@example.com,Cy,31\n"
        "ada@example.com,Ada,37,again\n"
        "dan@example.com,Dan,40,last\n"
    )
    run_id = await import_csv(content)
    logged = await sql(
        session_factory,
        "SELECT row_number, status, data IS NOT NULL FROM run_rows WHERE run_id = :id "
        "ORDER BY row_number",
        id=run_id,
    )
    assert [tuple(row) for row in logged] == [(2, "failed", True), (3, "failed", True)]
    chunks = await sql(
        session_factory,
        "SELECT first_row, outcomes FROM run_chunks WHERE run_id = :id ORDER BY index",
        id=run_id,
    )
    assert [tuple(chunk) for chunk in chunks] == [(1, "c-"), (3, "-s"), (5, "c")]
    originals = {
        1: {"Email": "ada@example.com", "Name": "Ada", "Age": "36", "Note": "two\nlines"},
        2: {"Email": "bob@example.com", "Name": "Bob", "Age": "x", "Note": ""},
        3: {"Email": "cy@example.com", "Name": "Cy", "Age": "31"},
        4: {"Email": "ada@example.com", "Name": "Ada", "Age": "37", "Note": "again"},
        5: {"Email": "dan@example.com", "Name": "Dan", "Age": "40", "Note": "last"},
    }

    shown = (await client.get(f"{API}/{run_id}", headers=admin_headers)).json()["data"]["rows"]
    assert {row["row_number"]: row["data"] for row in shown} == originals
    assert list(shown[0]["data"]) == ["Email", "Name", "Age", "Note"]  # the file's order
    url = f"{API}/{run_id}/rows"
    page = await client.get(url, params={"per_page": 2, "page": 2}, headers=admin_headers)
    assert [row["data"] for row in page.json()["data"]] == [originals[3], originals[4]]
    for status, numbers in (("success", [1, 5]), ("skipped", [4])):
        response = await client.get(url, params={"status": status}, headers=admin_headers)
        assert [row["data"] for row in response.json()["data"]] == [originals[n] for n in numbers]

    # A file changed or removed by hand: the rows the log did not copy have no data, the
    # others do.
    expected = [False, True, True, False, False]
    (file_key,) = (
        await sql(session_factory, "SELECT file_key FROM runs WHERE id = :id", id=run_id)
    )[0]
    path = path_for(settings.storage_dir, file_key)
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n\n"))
    response = await client.get(url, headers=admin_headers)
    assert response.status_code == 200
    assert [row["data"] is not None for row in response.json()["data"]] == expected
    path.unlink()
    response = await client.get(url, headers=admin_headers)
    assert response.status_code == 200
    assert [row["data"] is not None for row in response.json()["data"]] == expected


async def test_rows_of_unknown_run_is_404_and_bad_filters_422(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    assert (await client.get(f"{API}/77/rows", headers=admin_headers)).status_code == 404
    response = await client.get(
        f"{API}/77/rows", params={"status": "weird", "per_page": 101}, headers=admin_headers
    )
    assert response.status_code == 422
    assert set(response.json()["errors"]) == {"status", "per_page"}


# --- cancel ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("users_importer")
async def test_cancel_a_pending_run_ends_it_before_it_starts(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    upload: Upload,
    run_worker: RunWorker,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    run_id = (await upload("users", CLEAN_CSV)).json()["data"]["id"]
    response = await client.post(f"{API}/{run_id}/cancel", headers=admin_headers)
    assert response.status_code == 200
    assert response.json() == {"message": "Cancellation request sent."}
    run = (await client.get(f"{API}/{run_id}", headers=admin_headers)).json()["data"]
    assert run["status"] == "cancelled" and run["completed_at"] is not None
    assert run["cancel_requested"] is True

    await run_worker()  # the split job finds the run finished and does nothing
    run = (await client.get(f"{API}/{run_id}", headers=admin_headers)).json()["data"]
    assert run["status"] == "cancelled" and run["progress"]["processed"] == 0
    assert await sql(session_factory, "SELECT _key FROM ingest_data.users") == []


async def test_cancel_a_processing_run_skips_its_pending_chunks(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    queue: ArqRedis,
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=1)
    run_id = (await upload("users", CLEAN_CSV)).json()["data"]["id"]
    # Split only: the run is processing, its chunks wait in the queue.
    await splitter.split_run(session_factory, queue, settings, run_id)
    assert (await fetch_run(session_factory, run_id)).status == "processing"

    response = await client.post(f"{API}/{run_id}/cancel", headers=admin_headers)
    assert response.status_code == 200
    assert (await fetch_run(session_factory, run_id)).cancel_requested is True

    await run_worker()
    run = await fetch_run(session_factory, run_id)
    assert run.status == "cancelled"
    assert run.successful == 0
    assert await sql(session_factory, "SELECT _key FROM ingest_data.users") == []
    chunks = await sql(
        session_factory, "SELECT status FROM run_chunks WHERE run_id = :id", id=run_id
    )
    assert {status for (status,) in chunks} == {"cancelled"}


@pytest.mark.usefixtures("users_importer")
@pytest.mark.parametrize("status", ["completed", "completed_with_errors", "failed", "cancelled"])
async def test_cancel_a_finished_run_is_409(
    client: httpx.AsyncClient, admin_headers: dict[str, str], make_run: MakeRun, status: str
) -> None:
    run_id = await make_run(status=status)
    response = await client.post(f"{API}/{run_id}/cancel", headers=admin_headers)
    assert response.status_code == 409
    assert response.json() == {"message": f"Run {run_id} has already finished ({status})."}


async def test_cancel_unknown_run_is_404(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.post(f"{API}/31337/cancel", headers=admin_headers)
    assert response.status_code == 404


# --- source scope ------------------------------------------------------------------------------


async def test_a_source_bound_token_sees_only_its_source_runs(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    create_importer: CreateImporter,
    make_token: MakeToken,
    make_source: MakeSource,
    import_csv: ImportCsv,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    mine, theirs = await make_source("mine"), await make_source("theirs")
    await create_importer(slug="ours", key=["email"], fields=USER_FIELDS, source_id=mine)
    await create_importer(slug="users", key=["email"], fields=USER_FIELDS, source_id=theirs)
    own_run = await import_csv(DEFECTS_CSV, slug="ours")
    other_run = await import_csv(DEFECTS_CSV, slug="users")
    token = await make_token(
        role="service", abilities=["ingest:view", "ingest:create"], source_id=mine
    )
    headers = {"Authorization": f"Bearer {token}"}

    assert ids(await client.get(f"{API}/", headers=headers)) == [own_run]
    assert ids(await client.get(f"{API}/", headers=admin_headers)) == [other_run, own_run]
    for method, path in [
        ("GET", "{id}"),
        ("GET", "{id}/rows"),
        ("POST", "{id}/cancel"),
        ("POST", "{id}/retry"),
        ("GET", "{id}/errors/summary"),
        ("GET", "{id}/failed-rows/download"),
    ]:
        url = f"{API}/{path.format(id=other_run)}"
        response = await client.request(method, url, headers=headers)
        assert response.status_code == 404, f"{method} {url}: {response.status_code}"
        assert response.json() == {"message": f"Run {other_run} not found."}
        own = await client.request(method, f"{API}/{path.format(id=own_run)}", headers=headers)
        # Its own run answers (cancel of a finished run: 409, which still proves visibility).
        assert own.status_code in (200, 202, 409), f"{method} {path}: {own.text}"
    runs = await sql(session_factory, "SELECT id, parent_run_id FROM runs ORDER BY id")
    # The only new run is the retry of its own run.
    assert [tuple(r) for r in runs][2:] == [(3, own_run)]


async def test_run_routes_declare_their_errors_in_openapi(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    expected = {
        ("get", f"{API}/"): {"401", "403", "422"},
        ("get", f"{API}/{{run}}"): {"401", "403", "404"},
        ("get", f"{API}/{{run}}/rows"): {"404", "422"},
        ("post", f"{API}/{{run}}/cancel"): {"404", "409"},
        ("post", f"{API}/{{run}}/retry"): {"400", "404", "409", "422"},
        ("get", f"{API}/{{run}}/errors/summary"): {"404"},
        ("get", f"{API}/{{run}}/failed-rows/download"): {"404"},
    }
    for (method, path), codes in expected.items():
        operation = paths[path][method]
        assert codes <= set(operation["responses"]), f"{method} {path}"
        assert operation["summary"] and operation["description"]
    download = paths[f"{API}/{{run}}/failed-rows/download"]["get"]["responses"]["200"]
    assert "text/csv" in download["content"]


async def test_processing_run_counters_are_visible_while_it_runs(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    users_importer: dict[str, Any],
    make_run: MakeRun,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    run_id = await make_run(status="processing", total=10, processed=4, successful=3, failed=1)
    async with unit_of_work(session_factory) as session:
        await session.execute(
            text("UPDATE runs SET summary = '{\"created\": 3}' WHERE id = :id"), {"id": run_id}
        )
    run = (await client.get(f"{API}/{run_id}", headers=admin_headers)).json()["data"]
    assert run["status"] == "processing"
    assert run["progress"] == {
        "total": 10,
        "processed": 4,
        "successful": 3,
        "failed": 1,
        "skipped": 0,
    }
    # A summary is reported at the end, not half-way.
    assert run["summary"] is None and run["completed_at"] is None and run["rows"] == []


# --- rows in every single-run response ---------------------------------------------------------
# SPEC §5: an IngestRunResource has `rows`; a run that was just started has none loaded yet.


@pytest.mark.usefixtures("users_importer")
async def test_upload_answers_a_run_resource_with_empty_rows(upload: Upload) -> None:
    response = await upload("users", CLEAN_CSV, filename="users.csv")
    assert response.status_code == 202, response.text
    run = response.json()["data"]
    assert set(run) >= RUN_KEYS
    assert run["rows"] == []


async def test_trigger_answers_a_run_resource_with_empty_rows(
    client: httpx.AsyncClient, admin_headers: dict[str, str], create_importer: CreateImporter
) -> None:
    await create_importer(
        key=["email"],
        fields=USER_FIELDS,
        source={"type": "url", "url": "https://data.example.test/users.csv"},
    )
    response = await client.post(f"{API}/trigger/users", headers=admin_headers)
    assert response.status_code == 202, response.text
    run = response.json()["data"]
    assert set(run) >= RUN_KEYS
    assert run["rows"] == []


@pytest.mark.usefixtures("users_importer")
async def test_retry_answers_a_run_resource_with_empty_rows(
    client: httpx.AsyncClient, admin_headers: dict[str, str], import_csv: ImportCsv
) -> None:
    parent_id = await import_csv(DEFECTS_CSV)
    response = await client.post(f"{API}/{parent_id}/retry", headers=admin_headers)
    assert response.status_code == 202, response.text
    run = response.json()["data"]
    assert set(run) >= RUN_KEYS
    assert run["rows"] == []


@pytest.mark.parametrize("action", ["sync", "import"])
async def test_source_sync_and_import_answer_run_resources_with_empty_rows(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    create_importer: CreateImporter,
    make_source: MakeSource,
    action: str,
) -> None:
    source_id = await make_source("feed")
    await create_importer(
        slug="prices",
        source={"type": "url", "url": "https://data.example.test/prices.csv"},
        source_id=source_id,
        key=["sku"],
        fields={"sku": {"type": "string"}},
    )
    response = await client.post(f"{API}/sources/{source_id}/{action}", headers=admin_headers)
    assert response.status_code == 202, response.text
    (run,) = response.json()["data"]["runs"]
    assert set(run) >= RUN_KEYS
    assert run["rows"] == []


@pytest.mark.usefixtures("users_importer")
async def test_an_idempotent_replay_of_an_upload_has_the_same_rows(
    upload: Upload, admin_headers: dict[str, str]
) -> None:
    headers = {**admin_headers, "Idempotency-Key": "upload-once"}
    first = await upload("users", CLEAN_CSV, headers=headers)
    again = await upload("users", CLEAN_CSV, headers=headers)
    assert first.status_code == again.status_code == 202, again.text
    assert again.json() == first.json()
    assert again.json()["data"]["rows"] == []
