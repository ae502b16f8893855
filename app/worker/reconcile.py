"""The reconciler: Postgres says what is unfinished; make sure a job exists for it.

Runs on every worker at start-up and once a minute (one worker at a time, arq's unique cron).
Enqueueing uses deterministic job ids, so work that still has a live job is not doubled.
"""

import logging
from typing import Any

from sqlalchemy import text

from app.core.db import unit_of_work
from app.core.queue import enqueue_chunk, enqueue_quietly, enqueue_split
from app.pipeline import lifecycle
from app.pipeline.chunks import remove_run_payloads

log = logging.getLogger("ingest.reconcile")


async def reconcile(ctx: dict[str, Any]) -> dict[str, int]:
    factory, queue, settings = ctx["session_factory"], ctx["queue"], ctx["settings"]
    timeout = settings.run_timeout_minutes
    async with unit_of_work(factory) as session:
        stuck = (
            (
                await session.execute(
                    text(
                        "SELECT id FROM runs WHERE status IN ('pending', 'processing') "
                        "AND updated_at < now() - make_interval(mins => :minutes)"
                    ),
                    {"minutes": timeout},
                )
            )
            .scalars()
            .all()
        )
        for run_id in stuck:
            await lifecycle.fail_run(
                session,
                run_id,
                f"The run made no progress for {timeout} minutes and was stopped "
                "(INGEST_RUN_TIMEOUT_MINUTES).",
            )
        unsplit = (
            (
                await session.execute(
                    text(
                        "SELECT id FROM runs WHERE status IN ('pending', 'processing') "
                        "AND chunks_total IS NULL"
                    )
                )
            )
            .scalars()
            .all()
        )
        pending = (
            await session.execute(
                text(
                    "SELECT c.run_id, c.index FROM run_chunks c JOIN runs r ON r.id = c.run_id "
                    "WHERE c.status = 'pending' AND r.status = 'processing' "
                    "ORDER BY c.run_id, c.index"
                )
            )
        ).all()
        finished_splits = (
            await session.execute(
                text(
                    "SELECT r.id, i.definition FROM runs r "
                    "JOIN importers i ON i.id = r.importer_id "
                    "WHERE r.status = 'processing' AND r.chunks_total IS NOT NULL "
                    "AND r.chunks_done >= r.chunks_total"
                )
            )
        ).all()
        from app.importers.schemas import ImporterDefinition

        for run_id, definition in finished_splits:
            await lifecycle.maybe_finalize(
                session, run_id, ImporterDefinition.model_validate(definition)
            )
    _remove_finished_payloads(settings.storage_dir, await _finished_runs(factory, settings))
    for run_id in unsplit:
        await enqueue_quietly(enqueue_split, queue, run_id)
    for run_id, index in pending:
        await enqueue_quietly(enqueue_chunk, queue, run_id, index)
    counts = {
        "stuck_failed": len(stuck),
        "splits_enqueued": len(unsplit),
        "chunks_enqueued": len(pending),
    }
    if any(counts.values()):
        log.info("reconciled: %s", counts)
    return counts


async def _finished_runs(factory: Any, settings: Any) -> set[int]:
    """Runs with a payload directory that are no longer running (failed mid-way, cancelled,
    or deleted with their importer): their payloads will never be read."""
    root = settings.storage_dir / "chunks"
    ids = [int(p.name) for p in root.iterdir() if p.name.isdigit()] if root.is_dir() else []
    if not ids:
        return set()
    async with factory() as session:
        running = await session.execute(
            text(
                "SELECT id FROM runs WHERE id = ANY(:ids) AND status IN ('pending', 'processing')"
            ),
            {"ids": ids},
        )
        return set(ids) - set(running.scalars())


def _remove_finished_payloads(storage_dir: Any, run_ids: set[int]) -> None:
    for run_id in run_ids:
        remove_run_payloads(storage_dir, run_id)
