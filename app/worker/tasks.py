"""arq jobs. Each takes ids, reads the truth from Postgres, and is safe to run twice."""

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from arq import Retry, func
from arq.worker import Function
from croniter import croniter
from sqlalchemy import select, text

from app.core import logs
from app.core.config import Settings
from app.core.db import unit_of_work
from app.core.queue import enqueue_quietly, enqueue_split
from app.core.storage import storage_of
from app.importers.models import Importer
from app.importers.schemas import ImporterDefinition
from app.pipeline import lifecycle, splitter, writer
from app.pipeline.chunks import Claim
from app.pipeline.fetch import FetchError, fetch_to_storage
from app.runs.models import FINISHED_STATUSES, Run
from app.runs.service import create_run
from app.webhooks import sender as webhook_sender
from app.worker import leases

log = logging.getLogger("ingest.worker")


def _retry_delay(attempt: int) -> int:
    return attempt * 2


async def split_run(ctx: dict[str, Any], run_id: int) -> None:
    """Claim the run's split, then fetch (URL runs) and split it. A split claimed
    INGEST_MAX_ATTEMPTS times without finishing fails its run."""
    factory, settings = ctx["session_factory"], ctx["settings"]
    worker_id = ctx.setdefault("worker_id", leases.new_worker_id())
    claimed = await leases.claim_split(factory, worker_id, settings.lease_seconds, run_id)
    if claimed is None:
        return  # split already, finished, or a live worker splits it
    claim, last_error = claimed
    if claim.attempt > settings.max_attempts:
        async with unit_of_work(factory) as session:
            await lifecycle.fail_run(
                session,
                run_id,
                f"Reading the input was started {settings.max_attempts} times without "
                f"finishing (INGEST_MAX_ATTEMPTS); last error: {last_error or 'none recorded'}",
            )
        await leases.release_split(factory, claim, run_id)
        return
    try:
        if await _fetch_if_needed(factory, settings, run_id):
            await splitter.split_run(factory, ctx["queue"], settings, run_id, claim)
    except splitter.LeaseLost as exc:
        log.warning("%s; this worker stops splitting it", exc)
        return
    except asyncio.CancelledError:
        await leases.release_split(factory, claim, run_id, "cancelled")
        raise
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        log.exception("splitting run %s failed (attempt %s)", run_id, claim.attempt)
        # Given back at once, so the retry (or the reconciler) can claim it.
        if not await leases.release_split(factory, claim, run_id, reason):
            return  # taken over meanwhile: the new holder decides
        if claim.attempt < settings.max_attempts:
            raise Retry(defer=_retry_delay(claim.attempt)) from exc
        async with unit_of_work(factory) as session:
            await lifecycle.fail_run(
                session,
                run_id,
                f"Reading the input failed {claim.attempt} times (INGEST_MAX_ATTEMPTS); "
                f"last error: {reason}",
            )
        return
    await leases.release_split(factory, claim, run_id)


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
    """Claim the chunk, then apply it while the claim holds. A chunk claimed
    INGEST_MAX_ATTEMPTS times without being applied has its rows failed."""
    factory, settings = ctx["session_factory"], ctx["settings"]
    worker_id = ctx.setdefault("worker_id", leases.new_worker_id())
    claimed = await leases.claim_chunk(factory, worker_id, settings.lease_seconds, run_id, index)
    if claimed is None:
        return  # applied, dropped, or a live worker holds it
    claim, last_error = claimed
    if claim.attempt > settings.max_attempts:
        reason = (
            f"chunk {index} was started {settings.max_attempts} times without finishing "
            f"(INGEST_MAX_ATTEMPTS); last error: {last_error or 'none recorded'}"
        )
        await _give_up(ctx, run_id, index, claim, reason)
        await leases.release_chunk(factory, claim, run_id, index)
        return
    if settings.test_chunk_claim_hold_seconds:
        await asyncio.sleep(settings.test_chunk_claim_hold_seconds)
    storage, hold_s = storage_of(settings), settings.test_chunk_hold_seconds
    try:
        await writer.apply_chunk(factory, storage, run_id, index, claim, hold_s=hold_s)
    except writer.LeaseLost as exc:
        log.warning("%s; this worker's copy was rolled back", exc)
        return
    except asyncio.CancelledError:
        # arq's timeout or the end of the shutdown grace: give the chunk back at once.
        await leases.release_chunk(factory, claim, run_id, index, "cancelled")
        raise
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        log.exception(
            "applying chunk %s of run %s failed (attempt %s)", index, run_id, claim.attempt
        )
        if claim.attempt >= settings.max_attempts:
            reason = f"chunk {index} failed {claim.attempt} times; last error: {reason}"
            await _give_up(ctx, run_id, index, claim, reason)
            await leases.release_chunk(factory, claim, run_id, index)
            return
        # Given back at once, so the retry (or the reconciler) can claim it.
        if await leases.release_chunk(factory, claim, run_id, index, reason, retried=True):
            raise Retry(defer=_retry_delay(claim.attempt)) from exc
        return  # taken over meanwhile: the new holder goes on
    await leases.release_chunk(factory, claim, run_id, index)


async def _give_up(ctx: dict[str, Any], run_id: int, index: int, claim: Claim, reason: str) -> None:
    factory, storage = ctx["session_factory"], storage_of(ctx["settings"])
    try:
        await writer.fail_chunk(factory, storage, run_id, index, reason, claim)
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


async def send_webhooks(ctx: dict[str, Any]) -> None:
    """Send the webhook deliveries that are due (app.webhooks.sender)."""
    await webhook_sender.send_due(ctx["session_factory"], ctx["settings"])


# arq's timeouts no longer matter for recovery (a dead attempt's work is enqueued again under
# a new job id once its lease expires), but the largest one is also how long arq keeps a killed
# job "in progress": an hour for a split (a 10 GB file), two minutes for a chunk.
SPLIT_TIMEOUT_S = 3600
CHUNK_TIMEOUT_S = 120


async def _importer_of(ctx: dict[str, Any], run_id: int) -> str | None:
    """The run's importer, for its jobs' JSON log lines: one query per run and process (and
    none in text format, which does not show it)."""
    if ctx["settings"].log_format != "json":
        return None
    known: dict[int, str | None] = ctx.setdefault("importer_of_run", {})
    if run_id not in known:
        if len(known) >= 1000:
            known.clear()
        async with ctx["session_factory"]() as session:
            known[run_id] = await session.scalar(
                text("SELECT importer_slug FROM runs WHERE id = :id"), {"id": run_id}
            )
    return known[run_id]


# The jobs as arq runs them: every line logged meanwhile names the run (and chunk, importer).
async def _split_run_logged(ctx: dict[str, Any], run_id: int) -> None:
    with logs.bound(run_id=run_id, importer=await _importer_of(ctx, run_id)):
        await split_run(ctx, run_id)
        log.debug("split job of run %s done", run_id)


async def _apply_chunk_logged(ctx: dict[str, Any], run_id: int, index: int) -> None:
    with logs.bound(run_id=run_id, chunk=index, importer=await _importer_of(ctx, run_id)):
        await apply_chunk(ctx, run_id, index)
        log.debug("chunk %s job of run %s done", index, run_id)


def split_run_function(settings: Settings) -> Function:
    return func(_split_run_logged, name="split_run", timeout=SPLIT_TIMEOUT_S)


def apply_chunk_function(timeout_s: int = CHUNK_TIMEOUT_S) -> Function:
    return func(_apply_chunk_logged, name="apply_chunk", timeout=timeout_s)


def send_webhooks_function() -> Function:
    # A pass sends until nothing is due; each attempt is capped by its own timeout.
    return func(send_webhooks, name=webhook_sender.SEND_JOB, timeout=SPLIT_TIMEOUT_S)
