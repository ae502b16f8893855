"""An idle worker is quiet at INFO: no line per reconciler tick or scheduler tick, while the
jobs that do work, retries and errors still show."""

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from arq import ArqRedis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.worker.reconcile import reconcile
from app.worker.settings import QUIET_CRON_LOGS, quiet_cron_logs
from tests.conftest import CreateImporter, RunWorker, Upload
from tests.factories import USER_FIELDS

# arq.worker's own format strings (arq/worker.py, Worker.run_job).
STARTED = "%6.2fs → %s(%s)%s"
FINISHED = "%6.2fs ← %s ● %s"
RETRYING = "%6.2fs ↻ %s retrying job in %0.2fs"
FAILED = "%6.2fs ! %s failed, %s: %s"


def arq_record(msg: str, *args: Any, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("arq.worker", level, "arq/worker.py", 0, msg, args, None)


@pytest.fixture
def quiet_arq() -> Iterator[None]:
    """The filter the worker process installs, for the in-process worker of a test."""
    quiet_cron_logs()
    yield
    logging.getLogger("arq.worker").removeFilter(QUIET_CRON_LOGS)


@pytest.mark.parametrize(
    ("msg", "args"),
    [
        (STARTED, (0.01, "cron:schedule_tick", "", " delayed=1.30s")),
        (FINISHED, (0.00, "cron:schedule_tick", "")),
    ],
)
def test_the_filter_demotes_the_start_and_finish_lines_of_the_ticks_to_debug(
    msg: str, args: tuple[Any, ...], caplog: pytest.LogCaptureFixture
) -> None:
    record = arq_record(msg, *args)
    assert args[1] in record.getMessage()  # shaped as arq prints it, e.g. "0.01s → cron:..."

    caplog.set_level(logging.INFO, logger="arq.worker")
    assert not QUIET_CRON_LOGS.filter(record)

    caplog.set_level(logging.DEBUG, logger="arq.worker")
    shown = arq_record(msg, *args)
    assert QUIET_CRON_LOGS.filter(shown)
    assert (shown.levelno, shown.levelname) == (logging.DEBUG, "DEBUG")


@pytest.mark.parametrize(
    ("msg", "args", "level"),
    [
        (STARTED, (0.01, "split:1:0:split_run", "1", ""), logging.INFO),
        (FINISHED, (1.20, "chunk:1:0:0:apply_chunk", ""), logging.INFO),
        (RETRYING, (0.30, "cron:schedule_tick", 2.0), logging.INFO),
        (FAILED, (0.30, "cron:schedule_tick", "OperationalError", "gone"), logging.ERROR),
        ("Starting worker for %d functions: %s", (2, "split_run, apply_chunk"), logging.INFO),
    ],
)
def test_the_filter_keeps_job_lines_retries_and_errors(
    msg: str, args: tuple[Any, ...], level: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="arq.worker")
    record = arq_record(msg, *args, level=level)
    assert QUIET_CRON_LOGS.filter(record)
    assert record.levelno == level


async def test_an_idle_reconcile_logs_nothing_at_info(
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    queue: ArqRedis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    ctx = {"session_factory": session_factory, "queue": queue, "settings": settings}

    counts = await reconcile(ctx)

    assert not any(counts.values())
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == []
    assert "ingest.reconcile" in {r.name for r in caplog.records}  # quiet, said at DEBUG


@pytest.mark.usefixtures("quiet_arq")
async def test_a_worker_logs_its_jobs_and_the_reconcilers_work_but_not_its_ticks(
    create_importer: CreateImporter,
    upload: Upload,
    queue: ArqRedis,
    run_worker: RunWorker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    response = await upload("users", "Email,Name,Age\nada@example.com,Ada,36\n")
    assert response.status_code == 202, response.text
    await queue.flushdb()  # the split job is lost: the reconciler at start-up enqueues it
    caplog.set_level(logging.INFO)

    await run_worker()

    arq_lines = [r.getMessage() for r in caplog.records if r.name == "arq.worker"]
    assert any("split_run(" in line for line in arq_lines), arq_lines
    assert any("apply_chunk(" in line for line in arq_lines), arq_lines
    assert not any(("→ cron:" in line or "← cron:" in line) for line in arq_lines), arq_lines
    reconciled = [r.getMessage() for r in caplog.records if r.name == "ingest.reconcile"]
    assert any("'splits_enqueued': 1" in line for line in reconciled), reconciled
