"""arq jobs. Each takes ids, reads the truth from Postgres, and is safe to run twice."""

import logging
from datetime import UTC, datetime
from typing import Any

from arq import Retry, func
from arq.worker import Function
from croniter import croniter
from sqlalchemy import select, text

from app.core.config import Settings
from app.core.db import unit_of_work
from app.core.queue import enqueue_quietly, enqueue_split
from app.importers.models import Importer
from app.importers.schemas import ImporterDefinition
from app.pipeline import lifecycle, splitter, writer
from app.pipeline.fetch import FetchError, fetch_to_storage
from app.runs.models import FINISHED_STATUSES, Run
from app.runs.service import create_run

log = logging.getLogger("ingest.worker")

# After this many failed attempts a chunk's rows are failed with the error, so the run ends
# instead of retrying forever.
MAX_CHUNK_ATTEMPTS = 3
MAX_SPLIT_ATTEMPTS = 3


async def split_run(ctx: dict[str, Any], run_id: int) -> None:
    factory, settings = ctx["session_factory"], ctx["settings"]
    try:
        if not await _fetch_if_needed(factory, settings, run_id):
            return
        await splitter.split_run(factory, ctx["queue"], settings, run_id)
    except Exception as exc:
        attempt = ctx.get("job_try", 1)
        log.exception("splitting run %s failed (attempt %s)", run_id, attempt)
        if attempt < MAX_SPLIT_ATTEMPTS:
            raise Retry(defer=attempt * 2) from exc
        async with unit_of_work(factory) as session:
            await lifecycle.fail_run(
                session, run_id, f"Reading the input failed: {type(exc).__name__}: {exc}"
            )


async def _fetch_if_needed(factory: Any, settings: Settings, run_id: int) -> bool:
    """URL runs download their input first; False when the run cannot go on."""
    async with unit_of_work(factory) as session:
        run = await session.get(Run, run_id)
        if run is None or run.status in FINISHED_STATUSES:
            return False  # nothing to download for a run that ended (e.g. cancelled)
        if run.kind != "url" or run.file_key is not None:
            return True
        importer = await session.get(Importer, run.importer_id)
        assert importer is not None
        source = ImporterDefinition.model_validate(importer.definition).source
    try:
        assert source.url is not None
        fetched = await fetch_to_storage(source.url, source.headers, settings)
    except FetchError as exc:
        async with unit_of_work(factory) as session:
            await lifecycle.fail_run(session, run_id, str(exc))
        return False
    async with unit_of_work(factory) as session:
        await session.execute(
            text(
                "UPDATE runs SET file_key = :key, file_size = :size, file_sha256 = :sha, "
                "original_filename = :name WHERE id = :id AND file_key IS NULL"
            ),
            {
                "id": run_id,
                "key": fetched.key,
                "size": fetched.size,
                "sha": fetched.sha256,
                "name": fetched.filename,
            },
        )
    return True


async def apply_chunk(ctx: dict[str, Any], run_id: int, index: int) -> None:
    factory = ctx["session_factory"]
    try:
        await writer.apply_chunk(factory, ctx["settings"].storage_dir, run_id, index)
    except Exception as exc:
        log.exception("applying chunk %s of run %s failed", index, run_id)
        async with unit_of_work(factory) as session:
            attempts = await session.scalar(
                text(
                    "UPDATE run_chunks SET attempts = attempts + 1 "
                    "WHERE run_id = :run AND index = :index AND status = 'pending' "
                    "RETURNING attempts"
                ),
                {"run": run_id, "index": index},
            )
        if attempts is None:
            return
        if attempts < MAX_CHUNK_ATTEMPTS:
            raise Retry(defer=attempts * 2) from exc
        reason = f"{type(exc).__name__}: {exc}"
        try:
            await writer.fail_chunk(factory, ctx["settings"].storage_dir, run_id, index, reason)
        except Exception:
            # Even failing the chunk's rows failed: end the run rather than retry forever.
            log.exception("failing chunk %s of run %s failed", index, run_id)
            async with unit_of_work(factory) as session:
                await lifecycle.fail_run(
                    session, run_id, f"Chunk {index} could not be applied: {reason}"
                )


async def schedule_tick(ctx: dict[str, Any]) -> None:
    """Start due scheduled URL importers: once per cron slot, however many workers tick."""
    factory, queue = ctx["session_factory"], ctx["queue"]
    now = datetime.now(UTC)
    started: list[int] = []
    async with unit_of_work(factory) as session:
        importers = (
            await session.scalars(
                select(Importer).where(
                    Importer.definition["source"]["type"].astext == "url",
                    Importer.definition["source"]["schedule"].astext.is_not(None),
                )
            )
        ).all()
        for importer in importers:
            definition = ImporterDefinition.model_validate(importer.definition)
            assert definition.source.schedule is not None
            slot = croniter(definition.source.schedule, now).get_prev(datetime)
            first_time = importer.last_scheduled_at is None
            claimed = await session.scalar(
                text(
                    "UPDATE importers SET last_scheduled_at = :slot WHERE id = :id AND "
                    "(last_scheduled_at IS NULL OR last_scheduled_at < :slot) RETURNING id"
                ),
                {"id": importer.id, "slot": slot},
            )
            # A newly seen schedule starts at its next slot, not at deploy time.
            if claimed is None or first_time or await _source_paused(session, importer):
                continue
            run = await create_run(session, importer, kind="url")
            started.append(run.id)
    for run_id in started:
        await enqueue_quietly(enqueue_split, queue, run_id)


async def _source_paused(session: Any, importer: Importer) -> bool:
    if importer.source_id is None:
        return False
    status = await session.scalar(
        text("SELECT status FROM sources WHERE id = :id"), {"id": importer.source_id}
    )
    return bool(status == "paused")


def split_run_function(settings: Settings) -> Function:
    return func(split_run, name="split_run", timeout=settings.run_timeout_minutes * 60)


def apply_chunk_function(timeout_s: int) -> Function:
    return func(apply_chunk, name="apply_chunk", timeout=timeout_s)
