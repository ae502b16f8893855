"""The reconciler: Postgres says what is unfinished; make sure a job exists for it.

Runs on every worker at start-up and every INGEST_RECONCILE_INTERVAL_SECONDS, in a task beside
its jobs (one worker at a time: a pass that finds another worker's pass under way is skipped).
It enqueues unfinished work that no live worker holds (unclaimed, or
its lease expired) under the job id of its next attempt: work that still has a queued job is
not doubled, and the claim in Postgres, not arq, decides who runs it.
"""

import logging
import time
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import text

from app.core.db import unit_of_work
from app.core.queue import (
    chunk_job_id,
    enqueue_chunk,
    enqueue_quietly,
    enqueue_split,
    split_job_id,
    taken_by_a_worker,
)
from app.core.storage import Storage, storage_of
from app.pipeline import lifecycle
from app.pipeline.chunks import remove_run_payloads

log = logging.getLogger("ingest.reconcile")

# A worker whose heartbeat stopped this long ago leaves the workers table.
WORKER_FORGOTTEN_AFTER_S = 300
COUNTS = ("stuck_failed", "splits_enqueued", "chunks_enqueued", "workers_forgotten")
# Pending chunks of a stalled run checked for a job a dead worker took, per reconcile.
STALLED_CHECKS = 64


async def reconcile(ctx: dict[str, Any], *, thorough: bool = True) -> dict[str, int]:
    """One pass. A `thorough` pass (a worker's first) also enqueues the unclaimed chunks of
    runs that still progress, in case their jobs are gone (a Redis restart)."""
    factory, queue, settings = ctx["session_factory"], ctx["queue"], ctx["settings"]
    timeout = settings.run_timeout_minutes
    async with unit_of_work(factory) as session:
        alone = await session.scalar(
            text("SELECT pg_try_advisory_xact_lock(hashtext('ingest.reconcile'))")
        )
        if not alone:
            log.debug("another worker is reconciling: this pass is skipped")
            return dict.fromkeys(COUNTS, 0)
        stuck = (
            await session.execute(
                text(
                    "SELECT r.id, c.index, c.claimed_by, c.attempts FROM runs r "
                    "LEFT JOIN LATERAL (SELECT index, claimed_by, attempts FROM run_chunks "
                    "  WHERE run_id = r.id AND status = 'pending' ORDER BY index LIMIT 1) c "
                    "ON true WHERE r.status IN ('pending', 'processing') "
                    "AND r.updated_at < now() - make_interval(mins => :minutes)"
                ),
                {"minutes": timeout},
            )
        ).all()
        for run_id, index, claimed_by, attempts in stuck:
            where = (
                "before its input was split"
                if index is None
                else f"at chunk {index} (claimed by {claimed_by or 'no worker'}, "
                f"{attempts} attempts)"
            )
            await lifecycle.fail_run(
                session,
                run_id,
                f"The run made no progress for {timeout} minutes and was stopped {where} "
                "(INGEST_RUN_TIMEOUT_MINUTES).",
            )
        # Work nobody holds, or whose holder's lease expired (it died or froze), under the
        # job id of its next attempt: a dead attempt's arq lock never blocks it.
        unsplit = (
            await session.execute(
                text(
                    "SELECT id, split_attempt FROM runs WHERE status IN ('pending', 'processing') "
                    "AND chunks_total IS NULL "
                    "AND (split_claimed_by IS NULL OR split_lease_until < now())"
                )
            )
        ).all()
        stalled = set(
            (
                await session.execute(
                    text(
                        "SELECT id FROM runs WHERE status IN ('pending', 'processing') "
                        "AND updated_at < now() - make_interval(secs => :lease)"
                    ),
                    {"lease": settings.lease_seconds},
                )
            ).scalars()
        )
        # An unclaimed chunk of a run that progresses has its job queued (the splitter
        # enqueued it): between thorough passes it is enqueued again only once the run
        # stopped progressing for a lease, which is what a lost job (Redis flushed, a
        # splitter killed between its commit and its enqueue) looks like. So a 10,000-chunk
        # run costs no 10,000 Redis calls every pass.
        pending = (
            await session.execute(
                text(
                    "SELECT c.run_id, c.index, c.attempts FROM run_chunks c "
                    "JOIN runs r ON r.id = c.run_id "
                    "WHERE c.status = 'pending' AND r.status = 'processing' "
                    "AND (c.lease_until < now() OR (c.claimed_by IS NULL AND (:thorough "
                    "OR r.updated_at < now() - make_interval(secs => :lease)))) "
                    "ORDER BY c.run_id, c.index"
                ),
                {"lease": settings.lease_seconds, "thorough": thorough},
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
        gone = await session.execute(
            text("DELETE FROM workers WHERE last_beat < now() - make_interval(secs => :after)"),
            {"after": max(10 * settings.lease_seconds, WORKER_FORGOTTEN_AFTER_S)},
        )
    storage = storage_of(settings)
    for run_id in await _finished_runs(factory, storage):
        await remove_run_payloads(storage, run_id)
    # A worker that died after arq gave it a job but before the job claimed its work leaves
    # that job "in progress" in arq (for its timeout) and nothing claimed in Postgres: in a run
    # that stopped progressing, such work is enqueued under a job id of its own, new every
    # lease period.
    retake = int(time.time() // settings.lease_seconds)
    for run_id, attempt in unsplit:
        await enqueue_quietly(enqueue_split, queue, run_id, attempt)
        if run_id in stalled and await _taken(queue, split_job_id(run_id, attempt)):
            await enqueue_quietly(enqueue_split, queue, run_id, attempt, retake)
    checked: dict[int, int] = {}
    for run_id, index, attempt in pending:
        await enqueue_quietly(enqueue_chunk, queue, run_id, index, attempt)
        if run_id in stalled and checked.setdefault(run_id, 0) < STALLED_CHECKS:
            checked[run_id] += 1
            if await _taken(queue, chunk_job_id(run_id, index, attempt)):
                await enqueue_quietly(enqueue_chunk, queue, run_id, index, attempt, retake)
    counts = {
        "stuck_failed": len(stuck),
        "splits_enqueued": len(unsplit),
        "chunks_enqueued": len(pending),
        "workers_forgotten": gone.rowcount,  # type: ignore[attr-defined]
    }
    # Every few seconds on every idle deployment: a line at INFO only when it did something.
    log.log(logging.INFO if any(counts.values()) else logging.DEBUG, "reconciled: %s", counts)
    return counts


async def _taken(queue: Any, job_id: str) -> bool:
    try:
        return await taken_by_a_worker(queue, job_id)
    except (OSError, RedisError):
        return False


async def _finished_runs(factory: Any, storage: Storage) -> set[int]:
    """Runs with chunk payloads that are no longer running (failed mid-way, cancelled,
    or deleted with their importer): their payloads will never be read."""
    ids = [int(name) for name in await storage.prefixes("chunks") if name.isdigit()]
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
