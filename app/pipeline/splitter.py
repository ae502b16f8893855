"""Split a run's input into chunks: read, map and validate rows, store each chunk's payload.

The splitter is the only sequential step of a run. It streams the input once, so memory stays
flat; each chunk is committed (with the run's progress) before its apply job is enqueued. If
the worker dies, the job runs again and resumes after the last committed chunk.
"""

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from arq import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.db import json_dumps, unit_of_work
from app.core.queue import enqueue_chunk, enqueue_quietly
from app.core.storage import path_for
from app.importers.models import Importer
from app.importers.schemas import ImporterDefinition
from app.pipeline import chunks, lifecycle
from app.pipeline.mapping import MissingColumns, plan_columns
from app.pipeline.readers import ReadError, open_table
from app.pipeline.validation import RowValidator
from app.runs.models import FINISHED_STATUSES, Run

log = logging.getLogger(__name__)

InputRow = tuple[int, dict[str, Any], str | None]  # row number, original data, read error


class Splitter:
    """Checks the header and marks rows whose key an earlier row of the run already had.

    Validation itself happens when chunks are applied, in parallel; only ``skip`` and
    ``fail`` need the first row of each key, so only they compute keys here (from the key
    fields alone) and remember them as hashes to keep memory small.
    """

    def __init__(self, definition: ImporterDefinition, columns: list[str]):
        plan = plan_columns(definition, columns)  # a missing key column fails the run now
        self.key_validator: RowValidator | None = None
        if definition.on_duplicate in ("skip", "fail") and definition.action != "append":
            key_fields = {name: definition.fields[name] for name in definition.key}
            self.key_validator = RowValidator(
                definition.model_copy(update={"fields": key_fields}), plan
            )
        self.seen: set[int] = set()

    def row(self, row_number: int, original: dict[str, Any], error: str | None) -> chunks.RawRow:
        duplicate = False
        if self.key_validator is not None and error is None:
            key = self.key_validator.validate(original).key
            if key is not None:
                digest = hash(key)
                duplicate = digest in self.seen
                self.seen.add(digest)
        return (row_number, original, error, duplicate)


def _file_rows(path: Path, fmt: str, filename: str, sheet: str | None) -> Iterator[Any]:
    """Yields the table first (its ``columns`` list grows for JSON), then (row_number, data,
    error) per row."""
    with open_table(path, fmt, filename=filename, sheet=sheet) as table:
        yield table
        for number, (data, error) in enumerate(table.rows(), start=1):
            yield number, data, error


async def _parent_failed_rows(
    factory: async_sessionmaker[AsyncSession], parent_id: int
) -> AsyncIterator[InputRow]:
    """The failed rows of the parent run, in row order, read in keyset pages."""
    after = 0
    while True:
        async with factory() as session:
            page = (
                await session.execute(
                    text(
                        "SELECT row_number, data FROM run_rows WHERE run_id = :id AND "
                        "status = 'failed' AND row_number > :after ORDER BY row_number LIMIT 5000"
                    ),
                    {"id": parent_id, "after": after},
                )
            ).all()
        if not page:
            return
        for number, data in page:
            yield number, data, None
        after = page[-1][0]


async def split_run(
    factory: async_sessionmaker[AsyncSession], queue: ArqRedis, settings: Settings, run_id: int
) -> None:
    async with unit_of_work(factory) as session:
        run = await session.get(Run, run_id, with_for_update={"key_share": True})
        if run is None or run.status in FINISHED_STATUSES or run.chunks_total is not None:
            return
        importer = await session.get(Importer, run.importer_id)
        assert importer is not None  # runs cascade with their importer
        definition = ImporterDefinition.model_validate(importer.definition)
        if run.status == "pending":
            await session.execute(
                text(
                    "UPDATE runs SET status = 'processing', started_at = coalesce(started_at, "
                    "now()), updated_at = now() WHERE id = :id"
                ),
                {"id": run_id},
            )
        resume_from = run.chunks_written
        parent_id, kind, file_key = run.parent_run_id, run.kind, run.file_key
        filename, parent_columns = run.original_filename or "", None
        if parent_id is not None:
            parent = await session.get(Run, parent_id)
            parent_columns = list(parent.columns or []) if parent else []

    try:
        if kind == "retry":
            assert parent_id is not None and parent_columns is not None
            await _split(
                factory,
                queue,
                settings.storage_dir,
                run_id,
                definition,
                parent_columns,
                _parent_failed_rows(factory, parent_id),
                resume_from,
            )
        else:
            if file_key is None:
                raise ReadError("The run has no input file.")
            path = path_for(settings.storage_dir, file_key)
            rows = _file_rows(path, definition.format, filename, definition.source.sheet)
            table = next(rows)
            await _split(
                factory,
                queue,
                settings.storage_dir,
                run_id,
                definition,
                table.columns,
                _aiter(rows),
                resume_from,
            )
    except (ReadError, MissingColumns) as exc:
        async with unit_of_work(factory) as session:
            await lifecycle.fail_run(session, run_id, str(exc))
    except FileNotFoundError:
        async with unit_of_work(factory) as session:
            await lifecycle.fail_run(session, run_id, "The run's input file is missing.")


async def _aiter(rows: Iterator[Any]) -> AsyncIterator[InputRow]:
    for item in rows:
        yield item


async def _split(
    factory: async_sessionmaker[AsyncSession],
    queue: ArqRedis,
    storage_dir: Path,
    run_id: int,
    definition: ImporterDefinition,
    columns: list[str],
    rows: AsyncIterator[InputRow],
    resume_from: int,
) -> None:
    splitter = Splitter(definition, columns)
    size = definition.chunk_size
    batch: list[chunks.RawRow] = []
    index = 0
    total = 0
    cancelled = False

    async def flush() -> bool:
        """Store one chunk (unless an earlier attempt did); True when the run was cancelled."""
        nonlocal index
        this, index = index, index + 1
        if this < resume_from:
            return False
        chunks.write_payload(chunks.payload_path(storage_dir, run_id, this), batch)
        async with unit_of_work(factory) as session:
            await session.execute(
                text(
                    "INSERT INTO run_chunks (run_id, index, status, first_row, row_count, attempts)"
                    " VALUES (:run, :index, 'pending', :first, :count, 0) ON CONFLICT DO NOTHING"
                ),
                {"run": run_id, "index": this, "first": batch[0][0], "count": len(batch)},
            )
            flag = await session.scalar(
                text(
                    "UPDATE runs SET chunks_written = :written, total = :total, "
                    "columns = CAST(:columns AS jsonb), updated_at = now() "
                    "WHERE id = :id RETURNING cancel_requested"
                ),
                {
                    "id": run_id,
                    "written": this + 1,
                    "total": total,
                    "columns": json_dumps(columns),
                },
            )
        await enqueue_quietly(enqueue_chunk, queue, run_id, this)
        return bool(flag)

    async for number, data, error in rows:
        batch.append(splitter.row(number, data, error))
        total += 1
        if len(batch) >= size:
            cancelled = await flush()
            batch = []
            if cancelled:
                break
    if batch and not cancelled:
        await flush()

    async with unit_of_work(factory) as session:
        await session.execute(
            text(
                "UPDATE runs SET chunks_total = chunks_written, total = :total, "
                "columns = CAST(:columns AS jsonb), updated_at = now() "
                "WHERE id = :id AND chunks_total IS NULL"
            ),
            {"id": run_id, "total": total, "columns": json_dumps(columns)},
        )
        await lifecycle.maybe_finalize(session, run_id, definition)
