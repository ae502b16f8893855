"""Front doors: upload limits and formats, URL trigger, schedules, idempotency, records API."""

import asyncio
import gzip
import http.server
import io
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openpyxl
import pytest
from arq import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.main import create_app
from app.worker.settings import create_worker
from tests.conftest import CreateImporter, RunWorker, Upload
from tests.pipeline.test_pipeline import USER_FIELDS, USERS_CSV, records, row_log, run_of

API = "/api/v1/ingest"


def stored_files(settings: Settings) -> list[Path]:
    return [p for p in settings.storage_dir.rglob("*") if p.is_file()]


def xlsx_bytes(rows: list[list[Any]]) -> bytes:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    for row in rows:
        sheet.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


async def test_upload_over_the_limit_is_413_and_leaves_no_file(
    settings: Settings,
    queue: ArqRedis,
    create_importer: CreateImporter,
    admin_headers: dict[str, str],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    small = settings.model_copy(update={"max_upload_mb": 1})
    before = stored_files(settings)
    app = create_app(small)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            big = b"Email,Name,Age\n" + b"a@example.com,Ann,1\n" * 60_000  # ~1.2 MB
            response = await client.post(
                f"{API}/upload/users", files={"file": ("big.csv", big)}, headers=admin_headers
            )
    assert response.status_code == 413
    assert response.json()["message"] == "The file is larger than the 1 MB limit."
    assert stored_files(settings) == before


async def test_upload_without_a_file_is_422(
    client: httpx.AsyncClient, create_importer: CreateImporter, admin_headers: dict[str, str]
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    response = await client.post(
        f"{API}/upload/users",
        data={"dry_run": "1"},
        files={"other": ("x", b"y")},
        headers=admin_headers,
    )
    assert response.status_code == 422
    assert response.json()["errors"] == {"file": ["The file field is required."]}


async def test_binary_junk_is_refused_with_415_and_not_kept(
    upload: Upload, create_importer: CreateImporter, settings: Settings
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    before = stored_files(settings)
    response = await upload("users", bytes(range(256)) * 64, filename="junk.bin")
    assert response.status_code == 415
    assert stored_files(settings) == before


async def test_a_zip_renamed_csv_is_refused_with_415_that_says_it_is_a_zip(
    upload: Upload, create_importer: CreateImporter
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, format="csv")
    response = await upload("users", xlsx_bytes([["Email"]]), filename="users.csv")
    assert response.status_code == 415
    assert response.json() == {"message": "The file is a ZIP archive (perhaps XLSX), not CSV."}


OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


@pytest.mark.parametrize(
    ("fmt", "filename", "content", "message"),
    [
        # format auto reads users.csv as CSV, so the ZIP inside is refused the same way.
        (
            "auto",
            "users.csv",
            xlsx_bytes([["Email"]]),
            "The file is a ZIP archive (perhaps XLSX), not CSV.",
        ),
        (
            "xlsx",
            "users.xlsx",
            OLE2_MAGIC + bytes(504),
            "The file is an OLE2 compound file (perhaps a legacy XLS), not XLSX.",
        ),
        (
            "json",
            "users.json",
            gzip.compress(b'[{"Email": "ada@example.com"}]', mtime=0),
            "The file is a gzip archive, not JSON.",
        ),
    ],
    ids=["zip-named-csv-format-auto", "legacy-xls-as-xlsx", "gzip-as-json"],
)
async def test_a_binary_container_of_another_format_is_refused_with_415_naming_it(
    upload: Upload,
    create_importer: CreateImporter,
    settings: Settings,
    fmt: str,
    filename: str,
    content: bytes,
    message: str,
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, format=fmt)
    before = stored_files(settings)
    response = await upload("users", content, filename=filename)
    assert response.status_code == 415
    assert response.json() == {"message": message}
    assert stored_files(settings) == before


async def test_hostile_filename_is_kept_only_as_sanitised_metadata(
    upload: Upload,
    create_importer: CreateImporter,
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    response = await upload(
        "users", USERS_CSV, filename="../../etc/pass\x00wd" + "a" * 1000 + ".csv"
    )
    assert response.status_code == 202
    run = response.json()["data"]
    assert "/" not in run["original_filename"] and "\x00" not in run["original_filename"]
    assert len(run["original_filename"]) <= 255
    async with session_factory() as session:
        key = await session.scalar(
            text("SELECT file_key FROM runs WHERE id = :id"), {"id": run["id"]}
        )
    assert (settings.storage_dir / key).resolve().is_relative_to(settings.storage_dir.resolve())


async def test_unknown_importer_is_404(upload: Upload) -> None:
    response = await upload("nope", USERS_CSV)
    assert response.status_code == 404
    assert response.json() == {"message": "Importer 'nope' not found."}


async def test_xlsx_upload_is_imported(
    upload: Upload,
    create_importer: CreateImporter,
    run_worker: RunWorker,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    content = xlsx_bytes([["Email", "Name", "Age"], ["ada@example.com", "Ada", 36]])
    run_id = (await upload("users", content, filename="users.xlsx")).json()["data"]["id"]
    await run_worker()
    assert (await run_of(session_factory, run_id))["status"] == "completed"
    assert (await records(session_factory, "users"))["ada@example.com"]["age"] == 36


async def test_an_xlsx_bomb_fails_its_run_and_the_worker_goes_on(
    upload: Upload,
    create_importer: CreateImporter,
    run_worker: RunWorker,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    import zipfile

    await create_importer(key=["email"], fields=USER_FIELDS)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        with zf.open("xl/worksheets/sheet1.xml", "w") as entry:
            for _ in range(300):
                entry.write(b"\0" * (1 << 20))
    bad = (await upload("users", bomb.getvalue(), filename="bomb.xlsx")).json()["data"]["id"]
    good = (await upload("users", USERS_CSV)).json()["data"]["id"]
    await run_worker()

    failed = await run_of(session_factory, bad)
    assert failed["status"] == "failed"
    assert failed["error_message"]
    assert (await run_of(session_factory, good))["status"] == "completed"


async def test_upload_with_an_idempotency_key_replays_the_same_run(
    upload: Upload, create_importer: CreateImporter, admin_headers: dict[str, str]
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    headers = {**admin_headers, "Idempotency-Key": "abc-123"}
    first = await upload("users", USERS_CSV, headers=headers)
    second = await upload("users", USERS_CSV, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["data"]["id"] == second.json()["data"]["id"]
    other = await upload("users", USERS_CSV + "bob@example.com,Bob,1\n", headers=headers)
    assert other.status_code == 422
    assert "different request body" in other.json()["message"]


# --- URL sources -------------------------------------------------------------------------


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "users.csv").write_text(USERS_CSV)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def drain(settings: Settings) -> None:
    worker = create_worker(settings, burst=True)
    try:
        await worker.main()
    finally:
        await worker.close()


async def test_trigger_downloads_a_url_allowed_by_setting_and_imports_it(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    create_importer: CreateImporter,
    file_server: str,
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(
        key=["email"], fields=USER_FIELDS, source={"type": "url", "url": f"{file_server}/users.csv"}
    )
    response = await client.post(f"{API}/trigger/users", headers=admin_headers)
    assert response.status_code == 202
    run_id = response.json()["data"]["id"]
    await drain(settings.model_copy(update={"allow_private_urls": True}))
    run = await run_of(session_factory, run_id)
    assert run["status"] == "completed", run["error_message"]
    assert run["original_filename"] == "users.csv"
    assert len(await records(session_factory, "users")) == 3


async def test_trigger_refuses_a_loopback_url_by_default(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    create_importer: CreateImporter,
    file_server: str,
    run_worker: RunWorker,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(
        key=["email"], fields=USER_FIELDS, source={"type": "url", "url": f"{file_server}/users.csv"}
    )
    run_id = (await client.post(f"{API}/trigger/users", headers=admin_headers)).json()["data"]["id"]
    await run_worker()
    run = await run_of(session_factory, run_id)
    assert run["status"] == "failed"
    assert "private or loopback address" in run["error_message"]
    assert await records(session_factory, "users") == {}


async def test_trigger_of_an_upload_importer_is_422(
    client: httpx.AsyncClient, admin_headers: dict[str, str], create_importer: CreateImporter
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    response = await client.post(f"{API}/trigger/users", headers=admin_headers)
    assert response.status_code == 422


async def test_a_schedule_slot_starts_exactly_one_run_however_many_workers_tick(
    create_importer: CreateImporter,
    settings: Settings,
    queue: ArqRedis,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    from app.worker.tasks import schedule_tick

    await create_importer(
        key=["email"],
        fields=USER_FIELDS,
        source={"type": "url", "url": "https://example.com/u.csv", "schedule": "* * * * *"},
    )
    ctx = {"session_factory": session_factory, "queue": queue, "settings": settings}
    await schedule_tick(ctx)  # first sight of the schedule: remembered, nothing started
    async with session_factory() as session:
        assert await session.scalar(text("SELECT count(*) FROM runs")) == 0
        await session.execute(
            text("UPDATE importers SET last_scheduled_at = :t"),
            {"t": datetime.now(UTC) - timedelta(minutes=5)},
        )
        await session.commit()

    await asyncio.gather(*(schedule_tick(ctx) for _ in range(4)))

    async with session_factory() as session:
        assert await session.scalar(text("SELECT count(*) FROM runs WHERE kind = 'url'")) == 1


# --- Records API -------------------------------------------------------------------------


async def test_records_are_listed_and_shown_by_key(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    await upload("users", USERS_CSV)
    await run_worker()
    listing = (await client.get(f"{API}/records/users?per_page=2", headers=admin_headers)).json()
    assert listing["meta"] == {"current_page": 1, "per_page": 2, "total": 3, "last_page": 2}
    assert listing["links"]["next"].endswith("page=2")
    one = await client.get(f"{API}/records/users/ada@example.com", headers=admin_headers)
    assert one.status_code == 200
    body = one.json()["data"]
    assert body["data"] == {"email": "ada@example.com", "name": "Ada", "age": 36}
    assert {
        "collection",
        "key",
        "data",
        "source_id",
        "last_run_id",
        "created_at",
        "updated_at",
    } <= set(body)
    filtered = await client.get(
        f"{API}/records/users", params={"key": "alan@example.com"}, headers=admin_headers
    )
    assert [r["key"] for r in filtered.json()["data"]] == ["alan@example.com"]
    missing = await client.get(f"{API}/records/users/nobody", headers=admin_headers)
    assert missing.status_code == 404


async def test_composite_keys_join_values_with_a_pipe(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(
        slug="flights",
        key=["year", "carrier", "flight"],
        fields={
            "year": {"type": "integer"},
            "carrier": {"type": "string"},
            "flight": {"type": "integer"},
        },
    )
    run_id = (await upload("flights", "year,carrier,flight\n2013,UA,1545\n")).json()["data"]["id"]
    await run_worker()
    assert list(await records(session_factory, "flights")) == ["2013|UA|1545"]
    assert [r["outcome"] for r in await row_log(session_factory, run_id)] == ["created"]


async def test_ndjson_fields_that_appear_only_in_later_rows_are_mapped(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    content = (
        '{"Email": "ada@example.com", "Name": "Ada"}\n'
        '{"Email": "bob@example.com", "Name": "Bob", "Age": 7}\n'
    )
    run_id = (await upload("users", content, filename="users.ndjson")).json()["data"]["id"]
    await run_worker()
    assert (await run_of(session_factory, run_id))["status"] == "completed"
    assert (await records(session_factory, "users"))["bob@example.com"]["age"] == 7
