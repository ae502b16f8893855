"""The whole path: HTTP upload -> real arq worker -> records, row log and counters."""

from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.runs import rowlog
from app.runs.models import Run
from app.runs.service import to_resource
from tests.conftest import CreateImporter, RunWorker, Upload
from tests.factories import USER_FIELDS
from tests.records.stored import stored_data

API = "/api/v1/ingest"


USERS_CSV = (
    "Email,Name,Age\nada@example.com,Ada,36\nalan@example.com,Alan,41\ngrace@example.com,Grace,85\n"
)


async def run_of(factory: async_sessionmaker[AsyncSession], run_id: int) -> dict[str, Any]:
    async with factory() as session:
        run = await session.get(Run, run_id)
        assert run is not None
        return to_resource(run)


async def scalar(factory: async_sessionmaker[AsyncSession], sql: str, **params: Any) -> Any:
    async with factory() as session:
        return await session.scalar(text(sql), params)


async def records(factory: async_sessionmaker[AsyncSession], collection: str) -> dict[str, Any]:
    return await stored_data(factory, collection)


async def session_execute(
    factory: async_sessionmaker[AsyncSession], sql: str, **params: Any
) -> None:
    async with factory() as session, session.begin():
        await session.execute(text(sql), params)


async def row_log(factory: async_sessionmaker[AsyncSession], run_id: int) -> list[dict[str, Any]]:
    """The run's row log as the rows API reads it (entries and chunk records), in row order."""
    async with factory() as session:
        rows, total = await rowlog.page(session, run_id, None, 0, 1_000_000)
    assert total == len(rows)
    return rows


async def test_upload_is_processed_into_records_with_exact_counters(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    response = await upload("users", USERS_CSV, filename="users.csv")
    assert response.status_code == 202, response.text
    run = response.json()["data"]
    assert run["status"] == "pending"
    assert run["original_filename"] == "users.csv"

    await run_worker()

    run = await run_of(session_factory, run["id"])
    assert run["status"] == "completed"
    assert run["progress"] == {
        "total": 3,
        "processed": 3,
        "successful": 3,
        "failed": 0,
        "skipped": 0,
    }
    assert run["summary"] == {
        "created": 3,
        "updated": 0,
        "unchanged": 0,
        "skipped": 0,
        "staged": 0,
        "deleted": 0,
    }
    stored = await records(session_factory, "users")
    assert stored["ada@example.com"] == {"email": "ada@example.com", "name": "Ada", "age": 36}
    assert set(stored) == {"ada@example.com", "alan@example.com", "grace@example.com"}


async def test_invalid_rows_fail_with_laravel_messages_and_the_rest_are_written(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    csv = "Email,Name,Age\nada@example.com,Ada,36\n,B,x\nnot-an-email,Carl,200\n"
    run_id = (await upload("users", csv)).json()["data"]["id"]
    await run_worker()

    run = await run_of(session_factory, run_id)
    assert run["status"] == "completed_with_errors"
    assert run["progress"]["failed"] == 2 and run["progress"]["successful"] == 1
    log = await row_log(session_factory, run_id)
    assert log[1]["status"] == "failed"
    assert log[1]["errors"] == {
        "message": "The given data was invalid.",
        "validation": {
            "email": ["The email field is required."],
            "name": ["The name must be at least 2 characters."],
            "age": ["The age must be an integer."],
        },
    }
    assert log[2]["errors"]["validation"] == {
        "email": ["The email must be a valid email address."],
        "age": ["The age may not be greater than 150."],
    }
    assert list(await records(session_factory, "users")) == ["ada@example.com"]


async def test_missing_key_column_fails_the_run_with_a_clear_message(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    run_id = (await upload("users", "Name,Age\nAda,36\n")).json()["data"]["id"]
    await run_worker()
    run = await run_of(session_factory, run_id)
    assert run["status"] == "failed"
    assert run["error_message"] == 'Missing key column "Email"'


async def test_reupload_counts_unchanged_and_updated_rows(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    await upload("users", USERS_CSV)
    await run_worker()
    changed = USERS_CSV.replace("Alan,41", "Alan,42")
    run_id = (await upload("users", changed)).json()["data"]["id"]
    await run_worker()
    run = await run_of(session_factory, run_id)
    assert run["summary"]["unchanged"] == 2
    assert run["summary"]["updated"] == 1
    assert (await records(session_factory, "users"))["alan@example.com"]["age"] == 42


async def test_a_resent_row_is_unchanged_by_its_input_until_the_importer_changes(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    definition = {"key": ["email"], "fields": USER_FIELDS}
    await create_importer(**definition)
    await upload("users", USERS_CSV)
    await run_worker()
    hashes = await scalar(
        session_factory, "SELECT count(DISTINCT _input_hash) FROM ingest_data.users"
    )
    assert hashes == 3

    run_id = (await upload("users", USERS_CSV)).json()["data"]["id"]
    await run_worker()
    assert (await run_of(session_factory, run_id))["summary"]["unchanged"] == 3

    # The same cells under another definition may type differently: they are validated again.
    fields = {**USER_FIELDS, "name": {**USER_FIELDS["name"], "transform": ["upper"]}}
    response = await client.put(
        f"{API}/importers/users",
        json={"slug": "users", "collection": "users", **definition, "fields": fields},
        headers=admin_headers,
    )
    assert response.status_code == 200, response.text
    run_id = (await upload("users", USERS_CSV)).json()["data"]["id"]
    await run_worker()
    assert (await run_of(session_factory, run_id))["summary"]["updated"] == 3
    assert (await records(session_factory, "users"))["ada@example.com"]["name"] == "ADA"


async def test_a_file_split_before_reuses_that_split_until_the_importer_changes(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    definition = {"key": ["email"], "fields": USER_FIELDS, "chunk_size": 2}
    await create_importer(**definition)
    csv = USERS_CSV + "ada@example.com,Ada,37\n"  # row 4 repeats row 1's key
    ledger = (
        "SELECT array_agg(array[first_row, row_count, byte_start, byte_end, "
        "coalesce(duplicate_rows[1], 0)] ORDER BY index) FROM run_chunks WHERE run_id = :id"
    )
    first = (await upload("users", csv)).json()["data"]["id"]
    await run_worker()
    split = await scalar(session_factory, ledger, id=first)
    assert [chunk[4] for chunk in split] == [0, 4]
    # A mark no split makes: a run whose ledger has it copied that ledger.
    await session_execute(
        session_factory,
        "UPDATE run_chunks SET duplicate_rows = '{1}' WHERE run_id = :id AND index = 0",
        id=first,
    )
    copied = [[*split[0][:4], 1], split[1]]

    again = (await upload("users", csv)).json()["data"]["id"]
    await run_worker()
    assert await scalar(session_factory, ledger, id=again) == copied
    # Every row is still applied by its chunk: the later row of the key still wins.
    run = await run_of(session_factory, again)
    assert run["status"] == "completed"
    assert run["progress"]["total"] == run["progress"]["processed"] == 4
    assert (await records(session_factory, "users"))["ada@example.com"]["age"] == 37

    # Another file, or the same file once the importer changed, is split anew.
    other = (await upload("users", csv + "\n")).json()["data"]["id"]
    fields = {**USER_FIELDS, "name": {**USER_FIELDS["name"], "transform": ["upper"]}}
    response = await client.put(
        f"{API}/importers/users",
        json={"slug": "users", "collection": "users", **definition, "fields": fields},
        headers=admin_headers,
    )
    assert response.status_code == 200, response.text
    later = (await upload("users", csv)).json()["data"]["id"]
    await run_worker()
    assert await scalar(session_factory, ledger, id=other) == split
    assert await scalar(session_factory, ledger, id=later) == split

    # Nor is a run whose ledger is gone in part (pruned) copied.
    await session_execute(
        session_factory,
        "UPDATE run_chunks SET duplicate_rows = '{1}' WHERE run_id = :id AND index = 0",
        id=later,
    )
    await session_execute(
        session_factory, "DELETE FROM run_chunks WHERE run_id = :id AND index = 1", id=later
    )
    last = (await upload("users", csv)).json()["data"]["id"]
    await run_worker()
    assert await scalar(session_factory, ledger, id=last) == split


async def test_a_csv_row_staged_for_review_keeps_its_original_cells_by_column(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, approval="manual")
    run_id = (await upload("users", USERS_CSV)).json()["data"]["id"]
    await run_worker()
    assert (await run_of(session_factory, run_id))["summary"]["staged"] == 3
    response = await client.get(f"{API}/items", headers=admin_headers)
    assert response.status_code == 200, response.text
    ada = next(i for i in response.json()["data"] if i["key"] == "ada@example.com")
    assert ada["row_number"] == 1
    assert list(ada["original"].items()) == [
        ("Email", "ada@example.com"),
        ("Name", "Ada"),
        ("Age", "36"),
    ]
    assert ada["data"] == {"email": "ada@example.com", "name": "Ada", "age": 36}


async def test_a_later_row_of_a_key_wins_even_when_its_input_is_the_stored_one(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    await upload("users", "Email,Name,Age\nbob@example.com,Bob,3\n")
    await run_worker()
    # One chunk: the first row changes the record, the second (as stored before) restores it.
    csv = "Email,Name,Age\nbob@example.com,Bobby,4\nbob@example.com,Bob,3\n"
    await upload("users", csv)
    await run_worker()
    assert (await records(session_factory, "users"))["bob@example.com"]["name"] == "Bob"


async def test_on_duplicate_skip_skips_existing_and_in_file_duplicates(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, on_duplicate="skip", chunk_size=2)
    await upload("users", "Email,Name,Age\nada@example.com,Ada,1\n")
    await run_worker()
    csv = "Email,Name,Age\nada@example.com,Ada,2\nbob@example.com,Bob,3\nbob@example.com,Bobby,4\n"
    run_id = (await upload("users", csv)).json()["data"]["id"]
    await run_worker()

    run = await run_of(session_factory, run_id)
    assert run["status"] == "completed"
    assert run["progress"]["skipped"] == 2 and run["progress"]["successful"] == 1
    assert [r["status"] for r in await row_log(session_factory, run_id)] == [
        "skipped",
        "success",
        "skipped",
    ]
    stored = await records(session_factory, "users")
    assert stored["ada@example.com"]["age"] == 1
    assert stored["bob@example.com"]["name"] == "Bob"


async def test_on_duplicate_fail_fails_the_second_row_with_the_duplicate_message(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, on_duplicate="fail")
    csv = "Email,Name,Age\nbob@example.com,Bob,3\nbob@example.com,Bobby,4\n"
    run_id = (await upload("users", csv)).json()["data"]["id"]
    await run_worker()
    log = await row_log(session_factory, run_id)
    assert log[0]["status"] == "success"
    assert log[1]["status"] == "failed"
    assert log[1]["errors"] == {"message": "Duplicate entry found for key 'email'."}


async def test_on_duplicate_update_lets_the_later_row_win_across_chunks(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=1)
    csv = "Email,Name,Age\nbob@example.com,Bob,3\nbob@example.com,Bobby,4\nbob@example.com,Rob,5\n"
    await upload("users", csv)
    await run_worker()
    assert (await records(session_factory, "users"))["bob@example.com"]["name"] == "Rob"


async def test_update_if_newer_keeps_the_newer_record(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    fields = {**USER_FIELDS, "updated_at": {"type": "date"}}
    await create_importer(
        key=["email"], fields=fields, on_duplicate="update_if_newer", compare_field="updated_at"
    )
    await upload("users", "Email,Name,Updated At\nada@example.com,Ada,2024-05-01\n")
    await run_worker()
    csv = (
        "Email,Name,Updated At\n"
        "ada@example.com,Old Ada,2024-01-01\n"
        "ada@example.com,New Ada,2024-06-01\n"
    )
    run_id = (await upload("users", csv)).json()["data"]["id"]
    await run_worker()
    run = await run_of(session_factory, run_id)
    assert run["summary"]["skipped"] == 1 and run["summary"]["updated"] == 1
    assert (await records(session_factory, "users"))["ada@example.com"]["name"] == "New Ada"


async def test_append_gives_every_row_a_generated_key(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(slug="events", fields={"name": {"type": "string"}}, action="append")
    await upload("events", "name\nclick\nclick\n")
    await upload("events", "name\nclick\n")
    await run_worker()
    assert len(await records(session_factory, "events")) == 3


async def test_replace_deletes_records_not_seen_in_a_completed_run(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, action="replace")
    await upload("users", USERS_CSV)
    await run_worker()
    run_id = (await upload("users", "Email,Name,Age\nada@example.com,Ada,36\n")).json()["data"][
        "id"
    ]
    await run_worker()
    run = await run_of(session_factory, run_id)
    assert run["summary"]["deleted"] == 2 and run["summary"]["unchanged"] == 1
    assert list(await records(session_factory, "users")) == ["ada@example.com"]


async def test_replace_keeps_everything_when_the_run_has_failed_rows(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, action="replace")
    await upload("users", USERS_CSV)
    await run_worker()
    await upload("users", "Email,Name,Age\nada@example.com,Ada,36\nbad,B,1\n")
    await run_worker()
    assert len(await records(session_factory, "users")) == 3


async def test_dry_run_reports_outcomes_and_writes_no_record(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, log_rows="failed")
    response = await upload("users", USERS_CSV, dry_run=True)
    assert response.json()["data"]["dry_run"] is True
    run_id = response.json()["data"]["id"]
    await run_worker()
    run = await run_of(session_factory, run_id)
    assert run["status"] == "completed" and run["summary"]["created"] == 3
    assert await records(session_factory, "users") == {}
    assert [r["outcome"] for r in await row_log(session_factory, run_id)] == ["created"] * 3


async def test_failure_threshold_fails_a_run_with_too_many_bad_rows(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, failure_threshold=40)
    csv = "Email,Name,Age\nada@example.com,Ada,1\nbad,B,1\nworse,C,1\n"
    run_id = (await upload("users", csv)).json()["data"]["id"]
    await run_worker()
    run = await run_of(session_factory, run_id)
    assert run["status"] == "failed"
    assert "over the failure threshold of 40%" in run["error_message"]


async def test_log_rows_failed_keeps_only_failed_rows(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, log_rows="failed")
    run_id = (await upload("users", USERS_CSV + "bad,B,1\n")).json()["data"]["id"]
    await run_worker()
    assert [r["row_number"] for r in await row_log(session_factory, run_id)] == [4]


async def test_new_records_created_meanwhile_by_another_chunk_are_upserted(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    """New keys are written by COPY; when another transaction created one of them since the
    chunk was planned, the COPY fails under a savepoint and the upsert writes them all."""
    from app.core.db import raw_connection, unit_of_work
    from app.records.store import Table, Write
    from app.records.tables import SYSTEM_COLUMNS

    await session_execute(
        session_factory, f"CREATE TABLE ingest_data.things ({SYSTEM_COLUMNS}, n bigint)"
    )
    table = Table("things", {"n": "bigint"}, ["n"])
    writes = {"a": Write({"n": 1}, "h1", 1, None), "b": Write({"n": 2}, "h2", 2, None)}
    async with unit_of_work(session_factory) as session:
        conn = await raw_connection(session)
        await table.write(conn, None, 1, {"a": writes["a"]}, {"a"})
    async with unit_of_work(session_factory) as session:
        conn = await raw_connection(session)
        await table.write(conn, None, 2, writes, {"a", "b"})  # "a" exists now
        assert await conn.fetchval("SELECT count(*) FROM ingest_data.things") == 2
    stored = await records(session_factory, "things")
    assert stored == {"a": {"n": 1}, "b": {"n": 2}}
    last_runs = await scalar(
        session_factory, "SELECT array_agg(_last_run_id ORDER BY _key) FROM ingest_data.things"
    )
    assert last_runs == [2, 2]
