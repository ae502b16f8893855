"""Run state transitions that several jobs share: start, fail, finalise.

Every transition is a conditional UPDATE on the run row, so it happens once however many
workers race to make it.
"""

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import json_dumps
from app.importers.schemas import ImporterDefinition
from app.records.tables import table_name
from app.runs import events
from app.webhooks import outbox

SUMMARY_KEYS = ("created", "updated", "unchanged", "skipped", "staged", "deleted")


def empty_summary() -> dict[str, int]:
    return dict.fromkeys(SUMMARY_KEYS, 0)


async def fail_run(session: AsyncSession, run_id: int, message: str) -> bool:
    """End an unfinished run as ``failed`` with ``message``; its pending chunks are dropped."""
    result = await session.execute(
        text(
            "UPDATE runs SET status = 'failed', error_message = :message, completed_at = now(), "
            "updated_at = now(), chunks_total = coalesce(chunks_total, chunks_written) "
            "WHERE id = :id AND status IN ('pending', 'processing') RETURNING id"
        ),
        {"id": run_id, "message": message[:2000]},
    )
    if result.first() is None:
        return False
    await events.add(session, run_id, "failed", message=message[:2000])
    await outbox.run_finished(session, run_id)
    await session.execute(
        text(
            "UPDATE run_chunks SET status = 'cancelled' WHERE run_id = :id AND status = 'pending'"
        ),
        {"id": run_id},
    )
    return True


def final_status(
    *, cancel_requested: bool, total: int, failed: int, failure_threshold: float
) -> str:
    if cancel_requested:
        return "cancelled"
    if failed == 0:
        return "completed"
    if total and failed * 100 / total > failure_threshold:
        return "failed"
    return "completed_with_errors"


async def maybe_finalize(
    session: AsyncSession, run_id: int, definition: ImporterDefinition
) -> bool:
    """Finish the run if every chunk is accounted for. Idempotent; returns True if it finished it.

    Runs are locked FOR NO KEY UPDATE, never FOR UPDATE: concurrent chunk transactions hold
    KEY SHARE locks on the run through the row log's foreign key, and FOR UPDATE would
    deadlock with them.
    """
    row = (
        (
            await session.execute(
                text(
                    "SELECT status, total, failed, cancel_requested, dry_run, summary, "
                    "chunks_total, "
                    "chunks_done FROM runs WHERE id = :id FOR NO KEY UPDATE"
                ),
                {"id": run_id},
            )
        )
        .mappings()
        .first()
    )
    if (
        row is None
        or row["status"] != "processing"
        or row["chunks_total"] is None
        or row["chunks_done"] < row["chunks_total"]
    ):
        return False
    status = final_status(
        cancel_requested=row["cancel_requested"],
        total=row["total"],
        failed=row["failed"],
        failure_threshold=definition.failure_threshold,
    )
    summary: dict[str, Any] = {**empty_summary(), **(row["summary"] or {})}
    error_message = None
    if status == "failed":
        error_message = (
            f"{row['failed']} of {row['total']} rows failed, over the failure threshold of "
            f"{definition.failure_threshold:g}%."
        )
    if status == "completed" and definition.action == "replace":
        summary["deleted"] = await _replace_unseen(session, run_id, definition, row["dry_run"])
    # The event goes with the UPDATE, in its statement.
    await session.execute(
        text(
            events.with_event(
                "UPDATE runs SET status = :status, summary = CAST(:summary AS jsonb), "
                "error_message = coalesce(error_message, :error), completed_at = now(), "
                "updated_at = now() WHERE id = :id",
                "finalized",
                run=":id",
                data=":event",
            )
        ),
        {
            "id": run_id,
            "status": status,
            "summary": json_dumps(summary),
            "error": error_message,
            "event": json_dumps({"status": status, "summary": summary}),
        },
    )
    await outbox.run_finished(session, run_id)
    return True


async def _replace_unseen(
    session: AsyncSession, run_id: int, definition: ImporterDefinition, dry_run: bool
) -> int:
    """``replace``: records of the collection that this run did not see go away; a run for a
    source replaces only that source's records."""
    source_id = await session.scalar(
        text(
            "SELECT coalesce(r.source_id, i.source_id) FROM runs r "
            "JOIN importers i ON i.id = r.importer_id WHERE r.id = :id"
        ),
        {"id": run_id},
    )
    params = {"id": run_id, "source": source_id}
    table = table_name(definition.collection)
    own = "(CAST(:source AS int) IS NULL OR r._source_id = :source)"
    if dry_run:
        # A dry run wrote nothing; it logged every row's key, so count what would go.
        count = await session.scalar(
            text(
                f"SELECT count(*) FROM {table} r WHERE {own} AND NOT EXISTS "
                "(SELECT 1 FROM run_rows w WHERE w.run_id = :id AND w.record_key = r._key "
                "AND w.status <> 'failed')"
            ),
            params,
        )
        return int(count or 0)
    result = await session.execute(
        text(f"DELETE FROM {table} r WHERE r._last_run_id IS DISTINCT FROM :id AND {own}"),
        params,
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
