"""Runs: creation (every front door ends here), the IngestRunResource shape, and what
operators do with runs (list, show, cancel, retry, error summary, failed-rows export, prune)."""

import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Select, delete, exists, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.db import json_dumps
from app.core.errors import BadRequest, Conflict, NotFound
from app.core.storage import Storage
from app.core.timefmt import iso
from app.importers import service as importers_service
from app.importers.models import Importer
from app.importers.schemas import ImporterDefinition
from app.pipeline.lifecycle import empty_summary
from app.pipeline.mapping import MissingColumns, plan_columns
from app.pipeline.readers import ReadError
from app.pipeline.writer import originals_of
from app.runs import events, rowlog
from app.runs.models import FINISHED_STATUSES, Run, RunChunk, RunEvent, RunRow
from app.webhooks import outbox


async def create_run(
    session: AsyncSession,
    importer: Importer,
    *,
    kind: str,
    user_id: int | None = None,
    token_id: int | None = None,
    source_id: int | None = None,
    dry_run: bool = False,
    parent_run_id: int | None = None,
    original_filename: str | None = None,
    file_key: str | None = None,
    file_sha256: str | None = None,
    file_size: int | None = None,
    columns: list[str] | None = None,
) -> Run:
    """A ``pending`` run; the caller enqueues its split job after commit."""
    run = Run(
        importer_id=importer.id,
        importer_slug=importer.slug,
        status="pending",
        kind=kind,
        user_id=user_id,
        token_id=token_id,
        source_id=source_id if source_id is not None else importer.source_id,
        dry_run=dry_run,
        parent_run_id=parent_run_id,
        original_filename=original_filename,
        file_key=file_key,
        file_sha256=file_sha256,
        file_size=file_size,
        columns=columns,
    )
    session.add(run)
    await session.flush()
    await session.refresh(run)
    await events.add(
        session,
        run.id,
        "created",
        kind=kind,
        importer=importer.slug,
        dry_run=dry_run,
        parent_run_id=parent_run_id,
    )
    return run


def to_resource(run: Run, rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """IngestRunResource (SPEC §5), as every single-run response answers it: with `rows`, the
    first rows when the caller loaded them and `[]` otherwise (a run just started has none)."""
    return {**to_list_item(run), "rows": [] if rows is None else rows}


def to_list_item(run: Run) -> dict[str, Any]:
    """IngestRunResource as the run list shows it: without `rows`, which only `GET /{run}`
    loads. Fields may be added, never removed or renamed."""
    return {
        "id": run.id,
        "importer": run.importer_slug,
        "status": run.status,
        "user_id": run.user_id,
        "source_id": run.source_id,
        "kind": run.kind,
        "original_filename": run.original_filename,
        "dry_run": run.dry_run,
        "parent_run_id": run.parent_run_id,
        "progress": {
            "total": run.total,
            "processed": run.processed,
            "successful": run.successful,
            "failed": run.failed,
            "skipped": run.skipped,
        },
        "summary": run.summary if run.status in FINISHED_STATUSES else None,
        "error_message": run.error_message,
        "cancel_requested": run.cancel_requested,
        "started_at": iso(run.started_at),
        "completed_at": iso(run.completed_at),
        "created_at": iso(run.created_at),
    }


# --- Operator surface: list, show, rows, cancel, retry, error summary, failed rows ---------

RUN_STATUSES = ("pending", "processing", *FINISHED_STATUSES)
# The error summary lists the most frequent messages; a run whose every row failed with its
# own message (e.g. a driver error quoting the row) must not turn into a huge response.
SUMMARY_LIMIT = 100
# The CSV export reads failed rows in keyset pages of this size, each in its own short
# transaction: memory stays flat and no connection is held while a slow client reads.
EXPORT_PAGE_ROWS = 1000
EXPORT_COLUMNS = ("_error_message", "_row_number")
# Cells a spreadsheet would evaluate as a formula (OWASP "CSV injection").
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def _sort_column(sort: str) -> Any:
    return {
        "id": Run.id,
        "created_at": Run.created_at,
        "status": Run.status,
        "completed_at": Run.completed_at,
    }[sort]


def visible(stmt: Select[Any], source_id: int | None) -> Select[Any]:
    """A source-scoped principal sees only its own source's runs."""
    return stmt if source_id is None else stmt.where(Run.source_id == source_id)


def list_query(
    *,
    source_id: int | None = None,
    status: str | None = None,
    importer: str | None = None,
    sort: str = "id",
    order: str = "desc",
) -> Select[Run]:
    """Runs, newest first unless ``sort``/``order`` say otherwise (ties broken by id)."""
    stmt = visible(select(Run), source_id)
    if status is not None:
        stmt = stmt.where(Run.status == status)
    if importer is not None:
        # By id, so the (importer_id, id) index serves the filter.
        importer_id = select(Importer.id).where(Importer.slug == importer).scalar_subquery()
        stmt = stmt.where(Run.importer_id == importer_id)
    column = _sort_column(sort)
    direction = column.desc() if order == "desc" else column.asc()
    tiebreak = Run.id.desc() if order == "desc" else Run.id.asc()
    # Unfinished runs have no completed_at: they go last in either direction.
    ordering = [direction.nulls_last()] if sort == "completed_at" else [direction]
    if sort != "id":
        ordering.append(tiebreak)
    return stmt.order_by(*ordering)


async def get_run(
    session: AsyncSession, run_id: int, *, source_id: int | None = None, lock: bool = False
) -> Run:
    """The run, if this principal may see it (404 otherwise, so ids do not leak)."""
    stmt = visible(select(Run).where(Run.id == run_id), source_id)
    if lock:
        # Fresh values: the locking read may have waited for another transaction's commit.
        # NO KEY UPDATE, like every lock on runs: it does not conflict with the KEY SHARE
        # locks that chunk transactions hold through foreign keys.
        stmt = stmt.with_for_update(key_share=True).execution_options(populate_existing=True)
    run: Run | None = await session.scalar(stmt)
    if run is None:
        raise NotFound(f"Run {run_id} not found.")
    return run


async def rows_page(
    session: AsyncSession, run: Run, status: str | None, offset: int, limit: int, storage: Storage
) -> tuple[list[dict[str, Any]], int]:
    """IngestRowResources (SPEC §5) of the run at [offset, offset + limit) in row order, with
    their data, and the number of rows (of `status`, when given)."""
    rows, total = await rowlog.page(session, run.id, status, offset, limit)
    return await with_originals(session, run, rows, storage), total


async def first_rows(
    session: AsyncSession, run: Run, limit: int, storage: Storage
) -> list[dict[str, Any]]:
    if limit <= 0:
        return []
    rows, _ = await rows_page(session, run, None, 0, limit, storage)
    return rows


async def with_originals(
    session: AsyncSession, run: Run, rows: list[dict[str, Any]], storage: Storage
) -> list[dict[str, Any]]:
    """Row resources with the data the row log keeps no copy of (rows of CSV chunks that did
    not fail) read back from the run's input file. It stays null if the file was changed
    or removed."""
    numbers = {row["row_number"] for row in rows if row["data"] is None}
    if not numbers or run.file_key is None:
        return rows
    spans = (
        await session.execute(
            text(
                "SELECT first_row, row_count, byte_start, byte_end FROM run_chunks "
                "WHERE run_id = :id AND byte_start IS NOT NULL "
                "AND first_row <= :last AND first_row + row_count > :first ORDER BY first_row"
            ),
            {"id": run.id, "first": min(numbers), "last": max(numbers)},
        )
    ).all()
    file, columns = (run.file_key, run.file_size), list(run.columns or [])
    try:
        found = await originals_of(storage, *file, columns, spans, numbers)
    except (OSError, ValueError, ReadError):
        return rows
    for row in rows:
        if row["data"] is None:
            row["data"] = found.get(row["row_number"])
    return rows


async def cancel_run(session: AsyncSession, run: Run) -> str:
    """Cancel an unfinished run; returns its status afterwards (``cancelled`` or
    ``processing``). A run that has not started ends at once; a processing run stops at the
    next chunk (chunks already running finish). A finished run is a Conflict."""
    # The splitter starts a run under a row lock: a run still `pending` here has not started,
    # and the conditional UPDATE re-checks the status after any lock wait.
    ended = await session.scalar(
        text(
            "UPDATE runs SET status = 'cancelled', cancel_requested = true, "
            "summary = CAST(:summary AS jsonb), completed_at = now(), updated_at = now(), "
            "chunks_total = coalesce(chunks_total, chunks_written) "
            "WHERE id = :id AND status = 'pending' RETURNING id"
        ),
        {"id": run.id, "summary": json_dumps(empty_summary())},
    )
    if ended is None:
        requested = await session.scalar(
            text(
                "UPDATE runs SET cancel_requested = true, updated_at = now() "
                "WHERE id = :id AND status = 'processing' RETURNING id"
            ),
            {"id": run.id},
        )
        if requested is None:
            current = await session.scalar(select(Run.status).where(Run.id == run.id))
            raise Conflict(f"Run {run.id} has already finished ({current}).")
    await session.refresh(run)
    await events.add(session, run.id, "cancel_requested", status=run.status)
    if ended is not None:  # it ends here, not in maybe_finalize
        await events.add(session, run.id, "finalized", status=run.status, summary=run.summary)
        await outbox.run_finished(session, run.id)
    return run.status


async def has_failed_rows(session: AsyncSession, run_id: int) -> bool:
    found = await session.scalar(
        select(RunRow.row_number).where(RunRow.run_id == run_id, RunRow.status == "failed").limit(1)
    )
    return found is not None


async def create_retry(
    session: AsyncSession,
    run_id: int,
    *,
    source_id: int | None = None,
    user_id: int | None = None,
    token_id: int | None = None,
    dry_run: bool = False,
) -> Run:
    """A new ``retry`` run holding exactly the failed rows of run ``run_id``.

    The parent row is locked until the transaction ends, so two concurrent retries of one run
    are serialised: the second sees the first's unfinished retry and gets a Conflict.
    """
    parent = await get_run(session, run_id, source_id=source_id, lock=True)
    if parent.status not in FINISHED_STATUSES:
        raise Conflict(f"Run {parent.id} is still {parent.status}; retry it once it has finished.")
    running = await session.scalar(
        select(Run.id)
        .where(
            Run.parent_run_id == parent.id,
            Run.kind == "retry",
            Run.status.in_(("pending", "processing")),
        )
        .limit(1)
    )
    if running is not None:
        raise Conflict(f"Run {parent.id} is already being retried by run {running}.")
    if not await has_failed_rows(session, parent.id):
        raise BadRequest(f"Run {parent.id} has no failed rows to retry.")
    importer = await session.get(Importer, parent.importer_id)
    assert importer is not None  # runs cascade with their importer
    return await create_run(
        session,
        importer,
        kind="retry",
        user_id=user_id,
        token_id=token_id,
        source_id=parent.source_id,
        dry_run=dry_run,
        parent_run_id=parent.id,
        original_filename=parent.original_filename,
        columns=list(parent.columns) if parent.columns is not None else None,
    )


async def error_summary(session: AsyncSession, run_id: int) -> dict[str, Any]:
    """IngestErrorSummaryResource, aggregated by Postgres (GROUP BY), most frequent first."""
    params = {"id": run_id, "limit": SUMMARY_LIMIT}
    total = await session.scalar(
        select(func.count()).where(RunRow.run_id == run_id, RunRow.status == "failed")
    )
    messages = await session.execute(
        text(
            "SELECT coalesce(errors ->> 'message', 'Unknown error.') AS message, "
            "count(*) AS count FROM run_rows WHERE run_id = :id AND status = 'failed' "
            "GROUP BY 1 ORDER BY count DESC, message LIMIT :limit"
        ),
        params,
    )
    # One entry per (field, message): {"email": ["...", "..."]} counts each message once.
    validation = await session.execute(
        text(
            "SELECT f.key || ': ' || m.message AS message, count(*) AS count "
            "FROM run_rows r CROSS JOIN LATERAL (SELECT CAST(r.errors AS jsonb) AS e) AS x "
            "CROSS JOIN LATERAL jsonb_each(CASE WHEN jsonb_typeof(x.e -> 'validation') "
            "  = 'object' THEN x.e -> 'validation' ELSE '{}'::jsonb END) AS f "
            "CROSS JOIN LATERAL jsonb_array_elements_text(CASE WHEN jsonb_typeof(f.value) "
            "  = 'array' THEN f.value ELSE jsonb_build_array(f.value) END) AS m(message) "
            "WHERE r.run_id = :id AND r.status = 'failed' "
            "GROUP BY 1 ORDER BY count DESC, message LIMIT :limit"
        ),
        params,
    )
    return {
        "total_failed_rows": int(total or 0),
        "error_summary": [{"message": m, "count": int(c)} for m, c in messages],
        "validation_summary": [{"message": m, "count": int(c)} for m, c in validation],
    }


@dataclass(frozen=True)
class FailedRowsExport:
    run_id: int
    # The CSV header: the input's columns, keys found only in some rows, then EXPORT_COLUMNS.
    columns: list[str]
    # The importer's fields in the order of the columns they read: a row's field errors are
    # listed in `_error_message` in that order.
    fields: list[str]

    @property
    def filename(self) -> str:
        return f"run-{self.run_id}-failed-rows.csv"


async def failed_rows_export(session: AsyncSession, run: Run) -> FailedRowsExport:
    """What the failed-rows CSV of ``run`` holds; NotFound when it has no failed rows."""
    if not await has_failed_rows(session, run.id):
        raise NotFound(f"Run {run.id} has no failed rows.")
    columns = [c for c in (run.columns or []) if c not in EXPORT_COLUMNS]
    # Keys that only some rows have (ragged CSV rows, JSON objects), found by Postgres: memory
    # is bounded by the number of distinct keys, not of rows.
    extra = await session.scalars(
        text(
            "SELECT k.key FROM run_rows r CROSS JOIN LATERAL json_object_keys(r.data) AS k(key) "
            "WHERE r.run_id = :id AND r.status = 'failed' AND json_typeof(r.data) = 'object' "
            "AND NOT (k.key = ANY(CAST(:known AS text[]))) "
            "GROUP BY k.key ORDER BY min(r.row_number), k.key"
        ),
        {"id": run.id, "known": [*columns, *EXPORT_COLUMNS]},
    )
    header = [*columns, *extra.all()]
    importer = await session.get(Importer, run.importer_id)
    fields = (
        _fields_by_column(importers_service.definition_of(importer), header) if importer else []
    )
    return FailedRowsExport(run.id, [*header, *EXPORT_COLUMNS], fields)


def _fields_by_column(definition: ImporterDefinition, columns: list[str]) -> list[str]:
    """The importer's fields in the order of the columns they read (stored definitions are
    JSONB, which does not keep the fields' own order); unmatched fields last, by name."""
    try:
        sources = plan_columns(definition, columns).sources
    except MissingColumns:  # the definition changed since the run: any stable order will do
        sources = {}
    position = {column: i for i, column in enumerate(columns)}
    return sorted(
        definition.fields,
        key=lambda name: (position.get(sources.get(name) or "", len(position)), name),
    )


def csv_cell(value: Any) -> str:
    """A value as CSV text, with formula-looking text prefixed by ``'``."""
    if value is None:
        text_value = ""
    elif isinstance(value, str):
        text_value = value
    elif isinstance(value, bool):
        text_value = "true" if value else "false"
    elif isinstance(value, int | float):
        text_value = str(value)
    else:
        text_value = json_dumps(value)
    return "'" + text_value if text_value.startswith(FORMULA_PREFIXES) else text_value


def error_text(errors: dict[str, Any] | None, fields: list[str] | None = None) -> str:
    """A failed row's errors as one line: the message, then each field's messages (in the
    order of ``fields``, then any others)."""
    if not errors:
        return ""
    message = str(errors.get("message") or "")
    validation = errors.get("validation")
    if isinstance(validation, dict) and validation:
        rank = {name: i for i, name in enumerate(fields or ())}
        names = sorted(validation, key=lambda name: (rank.get(name, len(rank)), name))
        details = "; ".join(
            f"{name}: {msg}"
            for name in names
            for msg in (
                validation[name] if isinstance(validation[name], list) else [validation[name]]
            )
        )
        message = f"{message} {details}".strip()
    return message


async def failed_rows_csv(
    factory: async_sessionmaker[AsyncSession], export: FailedRowsExport
) -> AsyncIterator[bytes]:
    """The failed rows as CSV, streamed in keyset pages (constant memory for any row count).

    Takes a session factory rather than a session: the response outlives the request's unit
    of work, and each page is read in its own short transaction.
    """
    run_id = export.run_id
    data_columns = export.columns[: -len(EXPORT_COLUMNS)]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([csv_cell(c) for c in export.columns])
    after = 0
    while True:
        async with factory() as session:
            page = (
                await session.execute(
                    select(RunRow.row_number, RunRow.data, RunRow.errors)
                    .where(
                        RunRow.run_id == run_id,
                        RunRow.status == "failed",
                        RunRow.row_number > after,
                    )
                    .order_by(RunRow.row_number)
                    .limit(EXPORT_PAGE_ROWS)
                )
            ).all()
        for row_number, data, errors in page:
            values = data if isinstance(data, dict) else {}
            writer.writerow(
                [
                    *(csv_cell(values.get(c)) for c in data_columns),
                    csv_cell(error_text(errors, export.fields)),
                    row_number,
                ]
            )
        if buffer.tell():
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
        if len(page) < EXPORT_PAGE_ROWS:
            return
        after = page[-1][0]


async def prunable_runs(
    session: AsyncSession, days: int, limit: int = 500
) -> list[tuple[int, str | None]]:
    """(id, file_key) of finished runs, completed more than ``days`` days ago, that still hold
    a row log, chunks, events or a stored file."""
    stmt = (
        select(Run.id, Run.file_key)
        .where(
            Run.status.in_(FINISHED_STATUSES),
            Run.completed_at < func.now() - timedelta(days=days),
            or_(
                Run.file_key.is_not(None),
                exists().where(RunRow.run_id == Run.id),
                exists().where(RunChunk.run_id == Run.id),
                exists().where(RunEvent.run_id == Run.id),
            ),
        )
        .order_by(Run.id)
        .limit(limit)
    )
    return [(run_id, key) for run_id, key in (await session.execute(stmt)).all()]


async def prune_runs(session: AsyncSession, run_ids: list[int]) -> dict[str, int]:
    """Delete the row logs, chunks and event logs of these runs and forget their files (the
    caller removes the files after commit). The runs themselves and the records they wrote stay."""
    if not run_ids:
        return {"rows": 0, "chunks": 0, "events": 0}
    rows = await session.execute(delete(RunRow).where(RunRow.run_id.in_(run_ids)))
    chunks = await session.execute(delete(RunChunk).where(RunChunk.run_id.in_(run_ids)))
    logged = await session.execute(delete(RunEvent).where(RunEvent.run_id.in_(run_ids)))
    await session.execute(
        update(Run)
        .where(Run.id.in_(run_ids))
        .values(file_key=None, updated_at=func.now())
        .execution_options(synchronize_session=False)
    )
    return {"rows": _rowcount(rows), "chunks": _rowcount(chunks), "events": _rowcount(logged)}


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
