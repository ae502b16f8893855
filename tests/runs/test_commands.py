"""``ingest runs|status|cancel|retry|import|importers`` against a real API process (the tests'
database and Redis behind it) and real workers; ``ingest prune`` straight on the database."""

import asyncio
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from arq import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typer.testing import Result

from app.auth import sessions
from app.core.config import Settings, get_settings
from app.core.db import unit_of_work
from app.runs import commands
from tests.cli.harness import api_env, api_server  # noqa: F401  (fixtures)
from tests.conftest import CreateImporter, MakeToken, RunWorker
from tests.runs.conftest import (
    CLEAN_CSV,
    DEFECT_ROWS,
    DEFECTS_CSV,
    USER_FIELDS,
    ImportCsv,
    MakeRun,
    days_ago,
    fetch_run,
    ingest,
    one_error_line,
    sql,
)

pytestmark = pytest.mark.usefixtures("api_env")


@pytest.fixture
def prune_env(
    request: pytest.FixtureRequest, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ingest prune` is a server-side command: the database and the storage, not the API."""
    request.getfixturevalue("api_env")  # first: it clears every INGEST_* variable
    monkeypatch.setenv("INGEST_DATABASE_URL", settings.require_database_url())
    monkeypatch.setenv("INGEST_STORAGE_DIR", str(settings.storage_dir))
    get_settings.cache_clear()


def lines(result: Result) -> list[str]:
    return [line.rstrip() for line in result.stdout.strip().splitlines()]


async def worker_while(
    command: "asyncio.Future[Result] | asyncio.Task[Result]",
    queue: ArqRedis,
    settings: Settings,
    run_worker: RunWorker,
) -> Result:
    """Run the worker while a command that waits for a run is still running."""
    for _ in range(200):
        if command.done() or await queue.zcard(settings.queue_name):
            break
        await asyncio.sleep(0.05)
    await run_worker()
    return await asyncio.wait_for(command, timeout=60)


# --- runs --------------------------------------------------------------------------------------


async def test_runs_lists_runs_newest_first_with_filters(
    create_importer: CreateImporter, make_run: MakeRun
) -> None:
    await create_importer(slug="users", key=["email"], fields=USER_FIELDS)
    await create_importer(slug="events", fields={"name": {"type": "string"}}, action="append")
    first = await make_run("users", status="completed", total=3, processed=3)
    second = await make_run("events", status="failed", original_filename="events.csv")
    third = await make_run("users", status="processing", total=10, processed=4, failed=1)

    result = await ingest("runs")
    assert result.exit_code == 0, result.output
    header, *rows = lines(result)
    assert header.split() == [
        "ID",
        "IMPORTER",
        "KIND",
        "STATUS",
        "ROWS",
        "FAILED",
        "FILE",
        "CREATED",
    ]
    assert [int(row.split()[0]) for row in rows] == [third, second, first]
    assert rows[0].split()[1:7] == ["users", "upload", "processing", "4/10", "1", "-"]
    assert rows[1].split()[1:7] == ["events", "upload", "failed", "0/0", "0", "events.csv"]

    filtered = await ingest("runs", "--status", "failed")
    assert [int(row.split()[0]) for row in lines(filtered)[1:]] == [second]
    by_importer = await ingest("runs", "--importer", "users", "--limit", "1")
    assert [int(row.split()[0]) for row in lines(by_importer)[1:]] == [third]


async def test_runs_with_no_runs_says_so() -> None:
    result = await ingest("runs")
    assert result.exit_code == 0 and result.stdout.strip() == "no runs"


@pytest.mark.usefixtures("users_importer")
async def test_runs_pages_through_the_api_up_to_the_limit(make_run: MakeRun) -> None:
    ids = [await make_run(status="completed") for _ in range(105)]
    result = await ingest("runs", "--limit", "103")
    assert result.exit_code == 0, result.output
    listed = [int(row.split()[0]) for row in lines(result)[1:]]
    assert listed == ids[::-1][:103]  # two pages of the API's 100 at most


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (("--importer", "ghost"), "error: Importer 'ghost' not found.", 1),
        (("--status", "done"), "error: --status must be one of pending, processing, ", 2),
        (("--limit", "0"), "error: --limit must be between 1 and 1000, not 0", 2),
    ],
)
async def test_runs_refuses_bad_options_in_one_line(
    args: tuple[str, ...], message: str, code: int
) -> None:
    result = await ingest("runs", *args)
    assert one_error_line(result).startswith(message)
    assert result.exit_code == code


# --- status ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("users_importer")
async def test_status_of_a_finished_run_shows_progress_timings_and_summary(
    import_csv: ImportCsv,
) -> None:
    run_id = await import_csv(DEFECTS_CSV)
    result = await ingest("status", str(run_id))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"run        {run_id}" in out
    assert "status     completed_with_errors" in out
    assert "importer   users" in out
    assert "file       users.csv (upload)" in out
    assert "9 of 9 rows processed: 2 successful, 7 failed, 0 skipped" in out
    assert "took " in out and "rows/s" in out
    assert "summary    created 2, updated 0, unchanged 0, skipped 0, staged 0, deleted 0" in out


async def test_status_of_a_failed_run_prints_its_error_and_exits_1(
    users_importer: dict[str, Any], import_csv: ImportCsv
) -> None:
    run_id = await import_csv("Name,Age\nAda,36\n")  # no key column
    result = await ingest("status", str(run_id))
    assert result.exit_code == 1
    assert 'error      Missing key column "Email"' in result.stdout
    assert one_error_line(result) == f'error: run {run_id} failed: Missing key column "Email"'


@pytest.mark.usefixtures("users_importer")
async def test_status_draws_a_live_bar_until_the_run_ends(
    upload: Any,
    run_worker: RunWorker,
    queue: ArqRedis,
    settings: Settings,
) -> None:
    run_id = (await upload("users", CLEAN_CSV)).json()["data"]["id"]
    command = asyncio.ensure_future(ingest("status", str(run_id)))
    await asyncio.sleep(1)  # the command polls a pending run
    assert not command.done()
    result = await worker_while(command, queue, settings, run_worker)
    assert result.exit_code == 0, result.output
    assert "rows/s" in result.stdout  # the bar's rate column
    assert "status     completed" in result.stdout


@pytest.mark.usefixtures("users_importer")
async def test_status_no_follow_prints_an_unfinished_run_at_once(make_run: MakeRun) -> None:
    run_id = await make_run(status="processing", total=10, processed=5)
    result = await ingest("status", str(run_id), "--no-follow")
    assert result.exit_code == 0, result.output
    assert "5 of 10 rows processed" in result.stdout and "running for" in result.stdout


@pytest.mark.parametrize(
    ("run", "message", "code"),
    [
        ("4040", "error: Run 4040 not found.", 1),
        ("abc", "error: RUN must be a run id (a positive integer), not 'abc'", 2),
    ],
)
async def test_status_of_an_unknown_run_is_one_error_line(
    run: str, message: str, code: int
) -> None:
    result = await ingest("status", run)
    assert one_error_line(result) == message
    assert result.exit_code == code


# --- cancel ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("users_importer")
async def test_cancel_ends_a_pending_run_and_refuses_a_finished_one(
    make_run: MakeRun, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    pending = await make_run(status="pending")
    result = await ingest("cancel", str(pending))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"run {pending} cancelled"
    assert (await fetch_run(session_factory, pending)).status == "cancelled"

    processing = await make_run(status="processing")
    result = await ingest("cancel", str(processing))
    assert result.stdout.startswith(f"cancellation request sent: run {processing} stops")
    assert (await fetch_run(session_factory, processing)).cancel_requested is True

    line = one_error_line(await ingest("cancel", str(pending)))
    assert line == f"error: Run {pending} has already finished (cancelled)."
    assert one_error_line(await ingest("cancel", "999")) == "error: Run 999 not found."


# --- retry -------------------------------------------------------------------------------------


@pytest.mark.usefixtures("users_importer")
async def test_retry_prints_the_new_run_which_takes_only_the_failed_rows(
    import_csv: ImportCsv,
    run_worker: RunWorker,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    parent = await import_csv(DEFECTS_CSV)
    result = await ingest("retry", str(parent), "--dry-run")
    assert result.exit_code == 0, result.output
    new_id = int(result.stdout.strip())
    assert f"run {new_id} started: the failed rows of run {parent} (dry run)" in result.stderr
    run = await fetch_run(session_factory, new_id)
    assert (run.kind, run.parent_run_id, run.dry_run) == ("retry", parent, True)

    await run_worker()
    rows = await sql(
        session_factory, "SELECT row_number FROM run_rows WHERE run_id = :id ORDER BY 1", id=new_id
    )
    assert [n for (n,) in rows] == DEFECT_ROWS


@pytest.mark.usefixtures("users_importer")
async def test_retry_errors_are_one_line(import_csv: ImportCsv, make_run: MakeRun) -> None:
    clean = await import_csv(CLEAN_CSV)
    line = one_error_line(await ingest("retry", str(clean)))
    assert line == f"error: Run {clean} has no failed rows to retry."
    running = await make_run(status="processing")
    line = one_error_line(await ingest("retry", str(running)))
    assert line == f"error: Run {running} is still processing; retry it once it has finished."
    assert one_error_line(await ingest("retry", "77")) == "error: Run 77 not found."


# --- import ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("users_importer")
async def test_import_uploads_the_file_and_starts_a_run(
    tmp_path: Path,
    settings: Settings,
    run_worker: RunWorker,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    source = tmp_path / "odd name.csv"
    source.write_text(CLEAN_CSV)
    result = await ingest("import", "users", str(source))
    assert result.exit_code == 0, result.output
    run_id = int(result.stdout.strip())
    assert result.stderr.strip() == f"run {run_id} started: odd name.csv into users"
    run = await fetch_run(session_factory, run_id)
    assert (run.kind, run.status, run.original_filename) == ("upload", "pending", "odd name.csv")
    # The API stored it under a name of its own, as every upload.
    assert run.file_key is not None and "odd" not in run.file_key
    stored = settings.storage_dir / run.file_key
    assert stored.read_text() == CLEAN_CSV and run.file_size == len(CLEAN_CSV)

    await run_worker()
    run = await fetch_run(session_factory, run_id)
    assert run.status == "completed" and run.successful == 2
    keys = await sql(session_factory, "SELECT _key FROM ingest_data.users ORDER BY _key")
    assert [k for (k,) in keys] == ["ada@example.com", "alan@example.com"]


@pytest.mark.usefixtures("users_importer")
async def test_import_wait_shows_the_bar_and_ends_with_the_summary(
    tmp_path: Path,
    queue: ArqRedis,
    settings: Settings,
    run_worker: RunWorker,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    source = tmp_path / "users.csv"
    source.write_text(DEFECTS_CSV)
    command = asyncio.ensure_future(ingest("import", "users", str(source), "--wait", "--dry-run"))
    result = await worker_while(command, queue, settings, run_worker)
    assert result.exit_code == 0, result.output
    out = result.stdout
    run_id = int(out.splitlines()[0])
    assert "9/9" in out and "rows/s" in out and "ETA" in out
    assert "status     completed_with_errors" in out
    assert "file       users.csv (upload, dry run)" in out
    assert "summary    created 2," in out
    assert (await fetch_run(session_factory, run_id)).dry_run is True
    assert await sql(session_factory, "SELECT _key FROM ingest_data.users") == []


@pytest.mark.usefixtures("users_importer")
async def test_import_wait_follows_the_run_s_stream_rather_than_polling(
    tmp_path: Path,
    queue: ArqRedis,
    settings: Settings,
    run_worker: RunWorker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Polling would look again only after 25 s: an end within 20 s came from the stream.
    monkeypatch.setattr(commands, "POLL_SECONDS", 25)
    source = tmp_path / "users.csv"
    source.write_text(DEFECTS_CSV)
    command = asyncio.ensure_future(ingest("import", "users", str(source), "--wait"))
    for _ in range(200):
        if command.done() or await queue.zcard(settings.queue_name):
            break
        await asyncio.sleep(0.05)
    await run_worker()
    result = await asyncio.wait_for(command, timeout=20)
    assert result.exit_code == 0, result.output
    assert "9/9" in result.stdout and "rows/s" in result.stdout
    assert "status     completed_with_errors" in result.stdout


@pytest.mark.usefixtures("users_importer")
async def test_import_wait_of_a_run_that_fails_exits_1(
    tmp_path: Path, queue: ArqRedis, settings: Settings, run_worker: RunWorker
) -> None:
    source = tmp_path / "users.csv"
    source.write_text("Name,Age\nAda,36\n")
    command = asyncio.ensure_future(ingest("import", "users", str(source), "--wait"))
    result = await worker_while(command, queue, settings, run_worker)
    assert result.exit_code == 1 and "Traceback" not in result.output
    run_id = int(result.stdout.splitlines()[0])
    # The note that the run started, then the one error line.
    assert result.stderr.strip().splitlines() == [
        f"run {run_id} started: users.csv into users",
        f'error: run {run_id} failed: Missing key column "Email"',
    ]


@pytest.mark.usefixtures("users_importer")
async def test_import_errors_are_one_line_and_leave_nothing_behind(
    tmp_path: Path, settings: Settings, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    good = tmp_path / "users.csv"
    good.write_text(CLEAN_CSV)
    archive = tmp_path / "archive.csv"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.txt", "hello")
    stored_before = sorted(p for p in settings.storage_dir.rglob("*") if p.is_file())

    cases = [
        (("import", "ghost", str(good)), "error: Importer 'ghost' not found."),
        (("import", "users", str(tmp_path / "nope.csv")), "error: file not found: "),
        (("import", "users", str(tmp_path)), "error: not a file: "),
        # The API's 415, in its own words.
        (("import", "users", str(archive)), "error: The file is a ZIP archive"),
    ]
    for args, start in cases:
        result = await ingest(*args)
        line = one_error_line(result)
        assert line.startswith(start), (args, line)
        assert result.exit_code == 1
    assert await sql(session_factory, "SELECT id FROM runs") == []
    stored_after = sorted(p for p in settings.storage_dir.rglob("*") if p.is_file())
    assert stored_after == stored_before


async def test_import_to_an_importer_that_takes_no_uploads_shows_the_api_message(
    create_importer: CreateImporter, tmp_path: Path
) -> None:
    await create_importer(
        slug="feed",
        key=["email"],
        fields=USER_FIELDS,
        source={"type": "url", "url": "https://example.com/feed.csv"},
    )
    source = tmp_path / "users.csv"
    source.write_text(CLEAN_CSV)
    line = one_error_line(await ingest("import", "feed", str(source)))
    assert line == "error: Importer 'feed' takes no uploads (its source is url)."


# --- importers ---------------------------------------------------------------------------------


async def test_importers_lists_format_source_and_schedule(create_importer: CreateImporter) -> None:
    await create_importer(
        slug="users", name="Users", key=["email"], fields=USER_FIELDS, format="csv"
    )
    await create_importer(
        slug="feed",
        name="Feed",
        key=["email"],
        fields=USER_FIELDS,
        format="ndjson",
        source={"type": "url", "url": "https://example.com/feed.ndjson", "schedule": "0 3 * * *"},
    )
    result = await ingest("importers")
    assert result.exit_code == 0, result.output
    header, *rows = lines(result)
    assert header.split() == [
        "SLUG",
        "NAME",
        "FORMAT",
        "SOURCE",
        "SCHEDULE",
        "COLLECTION",
        "APPROVAL",
    ]
    assert rows[0].split() == [
        "feed",
        "Feed",
        "ndjson",
        "url",
        "0",
        "3",
        "*",
        "*",
        "*",
        "feed",
        "auto",
    ]
    assert rows[1].split() == ["users", "Users", "csv", "upload", "-", "users", "auto"]


async def test_importers_with_none_says_so() -> None:
    result = await ingest("importers")
    assert result.exit_code == 0 and result.stdout.strip() == "no importers"


# --- prune -------------------------------------------------------------------------------------


@pytest.mark.usefixtures("users_importer", "prune_env")
async def test_prune_removes_row_logs_chunks_and_files_of_old_runs_only(
    import_csv: ImportCsv, settings: Settings, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    old = await import_csv(DEFECTS_CSV)
    recent = await import_csv(CLEAN_CSV.replace("ada@", "zed@"))
    await sql(
        session_factory,
        "UPDATE runs SET completed_at = :at WHERE id = :id",
        at=days_ago(40),
        id=old,
    )
    old_file = settings.storage_dir / str((await fetch_run(session_factory, old)).file_key)
    recent_file = settings.storage_dir / str((await fetch_run(session_factory, recent)).file_key)
    assert old_file.exists() and recent_file.exists()

    result = await ingest("prune", "--days", "30")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith(
        # Its 7 failed rows had entries; its 2 others were recorded by their chunk. Its events:
        # created, split_started, split_finished, chunk_applied, finalized.
        "pruned 1 run(s) finished more than 30 days ago: 7 row log entries, 1 chunks, 5 events "
        "and 1 stored file(s) ("
    )
    assert not old_file.exists() and recent_file.exists()
    assert await sql(session_factory, "SELECT run_id FROM run_rows") == []
    # The recent run's chunk, which records its two rows, stays.
    kept = await sql(session_factory, "SELECT run_id, outcomes FROM run_chunks")
    assert [tuple(c) for c in kept] == [(recent, "cc")]
    assert await sql(session_factory, "SELECT 1 FROM run_chunks WHERE run_id = :id", id=old) == []
    logged = await sql(session_factory, "SELECT DISTINCT run_id FROM run_events")
    assert [run_id for (run_id,) in logged] == [recent]
    # The run and the records it wrote stay.
    pruned = await fetch_run(session_factory, old)
    assert pruned.status == "completed_with_errors" and pruned.file_key is None
    assert len(await sql(session_factory, "SELECT _key FROM ingest_data.users")) == 4

    again = await ingest("prune", "--days", "30")
    assert again.stdout.strip().startswith("nothing to prune")


@pytest.mark.usefixtures("prune_env")
async def test_prune_removes_console_sessions_that_ended_long_ago(
    make_token: MakeToken, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    await make_token()
    async with unit_of_work(session_factory) as session:
        newest = text("SELECT max(id) FROM tokens")
        (token_id,) = (await session.execute(newest)).one()
        for _ in range(4):
            await sessions.start(session, token_id, None, timedelta(hours=12))
    await sql(  # one revoked and one expired 40 days ago, one revoked today, one live
        session_factory,
        "UPDATE console_sessions SET revoked_at = CASE id WHEN 1 THEN :old WHEN 3 THEN now() END, "
        "expires_at = CASE id WHEN 2 THEN :old ELSE expires_at END",
        old=days_ago(40),
    )
    result = await ingest("prune", "--days", "30")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("removed 2 console session(s) that ended more than 30 days")
    left = await sql(session_factory, "SELECT id FROM console_sessions ORDER BY id")
    assert [session_id for (session_id,) in left] == [3, 4]


@pytest.mark.usefixtures("users_importer", "prune_env")
async def test_prune_leaves_unfinished_runs_alone(
    make_run: MakeRun, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    running = await make_run(status="processing", file_key="ab/ab00.csv")
    await sql(
        session_factory,
        "UPDATE runs SET created_at = :at, started_at = :at WHERE id = :id",
        at=days_ago(90),
        id=running,
    )
    result = await ingest("prune", "--days", "0")
    assert result.stdout.strip().startswith("nothing to prune")
    assert (await fetch_run(session_factory, running)).file_key == "ab/ab00.csv"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "error: --days is required, e.g. `ingest prune --days 30`"),
        (("--days", "-1"), "error: --days must be 0 or more, not -1"),
    ],
)
@pytest.mark.usefixtures("prune_env")
async def test_prune_needs_a_number_of_days(args: tuple[str, ...], message: str) -> None:
    assert one_error_line(await ingest("prune", *args)) == message
