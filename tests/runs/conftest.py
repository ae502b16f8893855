"""Shared pieces of the runs tests: a users importer, a file with known defects, runs made
straight in the database (for listing, filtering and state checks), and the CLI runner."""

import asyncio
import csv
import io
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typer.testing import CliRunner, Result

from app.cli import cli
from app.core.config import Settings, get_settings
from app.core.db import unit_of_work
from app.importers.models import Importer
from app.runs.models import Run
from app.sources.models import Source
from tests.conftest import CreateImporter, RunWorker, Upload
from tests.factories import USER_FIELDS

API = "/api/v1/ingest"


# Known defects (on_duplicate: fail): rows 2 and 3 miss the email, rows 5-7 repeat row 4's
# key, row 8 has a short name and a non-integer age, row 9 an age over the max.
DEFECTS_CSV = (
    "Email,Name,Age\n"
    "ada@example.com,Ada,36\n"
    ",Bob,30\n"
    ",Cy,31\n"
    "dup@example.com,Dan,40\n"
    "dup@example.com,Dan,41\n"
    "dup@example.com,Dan,42\n"
    "dup@example.com,Dan,43\n"
    "eve@example.com,E,x\n"
    "frank@example.com,Frank,200\n"
)
DEFECT_ROWS = [2, 3, 5, 6, 7, 8, 9]

CLEAN_CSV = "Email,Name,Age\nada@example.com,Ada,36\nalan@example.com,Alan,41\n"


def parse_csv(body: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body)))


@pytest.fixture
async def users_importer(create_importer: CreateImporter) -> dict[str, Any]:
    return await create_importer(key=["email"], fields=USER_FIELDS, on_duplicate="fail")


ImportCsv = Callable[..., Awaitable[int]]


@pytest.fixture
def import_csv(upload: Upload, run_worker: RunWorker) -> ImportCsv:
    """``await import_csv(content, slug="users")`` uploads, drains the worker, returns the id."""

    async def run(content: str, *, slug: str = "users", filename: str = "users.csv") -> int:
        response = await upload(slug, content, filename=filename)
        assert response.status_code == 202, response.text
        await run_worker()
        run_id: int = response.json()["data"]["id"]
        return run_id

    return run


MakeRun = Callable[..., Awaitable[int]]


@pytest.fixture
def make_run(session_factory: async_sessionmaker[AsyncSession]) -> MakeRun:
    """``await make_run(importer_slug, status="completed", ...)``: a run row, no worker needed."""

    async def make(slug: str = "users", *, status: str = "completed", **values: Any) -> int:
        async with unit_of_work(session_factory) as session:
            importer = (
                await session.execute(
                    text("SELECT id, source_id FROM importers WHERE slug = :s"), {"s": slug}
                )
            ).one()
            finished = status in ("completed", "completed_with_errors", "failed", "cancelled")
            now = datetime.now(UTC)
            values.setdefault("started_at", None if status == "pending" else now)
            values.setdefault("completed_at", now if finished else None)
            values.setdefault("source_id", importer.source_id)
            run = Run(
                importer_id=importer.id,
                importer_slug=slug,
                status=status,
                kind=values.pop("kind", "upload"),
                **values,
            )
            session.add(run)
            await session.flush()
            return run.id

    return make


MakeSource = Callable[[str], Awaitable[int]]


@pytest.fixture
def make_source(session_factory: async_sessionmaker[AsyncSession]) -> MakeSource:
    async def make(name: str) -> int:
        async with unit_of_work(session_factory) as session:
            source = Source(name=name, source_url=f"https://{name}.example.test/feed")
            session.add(source)
            await session.flush()
            return source.id

    return make


async def fetch_run(factory: async_sessionmaker[AsyncSession], run_id: int) -> Run:
    async with factory() as session:
        run = await session.get(Run, run_id)
        assert run is not None
        return run


async def sql(factory: async_sessionmaker[AsyncSession], statement: str, **params: Any) -> Any:
    async with unit_of_work(factory) as session:
        result = await session.execute(text(statement), params)
        return result.all() if result.returns_rows else None


async def set_importer_source(
    factory: async_sessionmaker[AsyncSession], slug: str, source_id: int
) -> None:
    async with unit_of_work(factory) as session:
        importer = (
            await session.execute(text("SELECT id FROM importers WHERE slug = :s"), {"s": slug})
        ).scalar_one()
        row = await session.get(Importer, importer)
        assert row is not None
        row.source_id = source_id


def days_ago(days: int) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


# --- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI reads INGEST_* like a deployment would: point it at the test servers."""
    monkeypatch.setenv("INGEST_DATABASE_URL", settings.require_database_url())
    monkeypatch.setenv("INGEST_REDIS_URL", settings.require_redis_url())
    monkeypatch.setenv("INGEST_STORAGE_DIR", str(settings.storage_dir))
    monkeypatch.setenv("INGEST_QUEUE_NAME", settings.queue_name)
    # Wide enough that rich never folds a table cell.
    monkeypatch.setenv("COLUMNS", "200")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


async def ingest(*args: str) -> Result:
    # The commands call asyncio.run() themselves: keep them off the test's event loop.
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args))


def one_error_line(result: Result) -> str:
    """A failed command: non-zero exit, no traceback, exactly one line on stderr."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]
