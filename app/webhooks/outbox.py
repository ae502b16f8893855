"""The outbox: a delivery row per matching subscription, written in the transaction of the
change it announces. A rolled-back change leaves no row (nothing is sent); a committed one
always has its rows (the sender retries until they are delivered or given up).

Each insert also notifies ``NOTIFY_CHANNEL``: Postgres delivers the notification when the
transaction commits and drops it when it rolls back, so the workers' listener
(app.webhooks.sender) learns of new deliveries exactly after commit, whichever connection
(ORM session or a chunk's raw asyncpg connection) wrote them.

The body is rendered here, once: every attempt sends (and signs) the same document, which
shows the run or item as it was when the event happened.
"""

from collections.abc import Sequence
from typing import Literal, get_args

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import json_dumps, raw_connection

EventType = Literal[
    "run.completed",
    "run.completed_with_errors",
    "run.failed",
    "run.cancelled",
    "item.staged",
    "item.approved",
    "item.rejected",
    "item.merged",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
NOTIFY_CHANNEL = "webhook_deliveries"

# An item transition's new status -> its event (other transitions announce nothing).
ITEM_EVENTS = {"approved": "item.approved", "rejected": "item.rejected", "merged": "item.merged"}


def _iso(column: str) -> str:
    """A timestamp as the API shows it (app.core.timefmt.iso)."""
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""


# The item resource as app.items.service.to_resource shows it (tests/webhooks compares them).
_ITEM_RESOURCE = f"""json_build_object(
    'id', i.id, 'type', i.type, 'status', i.status, 'source_id', i.source_id,
    'importer_id', i.importer_id, 'run_id', i.run_id, 'row_number', i.row_number,
    'external_id', i.external_id, 'collection', i.collection, 'key', i.key, 'title', i.title,
    'data', i.data, 'original', i.original, 'content_hash', i.content_hash,
    'duplicates', i.duplicates, 'has_duplicates', jsonb_array_length(i.duplicates) > 0,
    'record_id', i.record_id, 'note', i.note,
    'created_at', {_iso("i.created_at")}, 'updated_at', {_iso("i.updated_at")})"""


def _matching(type_: str, importer: str, source: str) -> str:
    """Subscriptions that take this event of this importer (slug) and source."""
    return (
        f"s.enabled AND {type_} = ANY(s.events) "
        f"AND (s.importer IS NULL OR s.importer = {importer}) "
        f"AND (s.source_id IS NULL OR s.source_id = {source})"
    )


def _insert(select: str) -> str:
    """``select`` (subscription_id, event_type, body) inserted, then one notification if any
    row was."""
    return f"""
WITH inserted AS (
    INSERT INTO webhook_deliveries (subscription_id, message_id, event_type, body)
    SELECT sub_id, 'msg_' || replace(gen_random_uuid()::text, '-', ''), event_type, body
    FROM ({select}) AS due(sub_id, event_type, body)
    RETURNING 1
)
SELECT pg_notify('{NOTIFY_CHANNEL}', '') WHERE EXISTS (SELECT 1 FROM inserted)
"""


_BODY = "json_build_object('type', {type}, 'timestamp', {now}, 'data', {data})::text"

_INSERT_ITEMS = _insert(
    "SELECT s.id, $1::text, "
    + _BODY.format(type="$1::text", now=_iso("now()"), data=_ITEM_RESOURCE)
    + " FROM items i JOIN webhook_subscriptions s ON "
    + _matching("$1::text", "i.type", "i.source_id")
    + " WHERE i.id = ANY($2::bigint[])"
)

_INSERT_RUN = _insert(
    "SELECT s.id, CAST(:type AS text), "
    + _BODY.format(type="CAST(:type AS text)", now=_iso("now()"), data="CAST(:data AS json)")
    + " FROM webhook_subscriptions s WHERE "
    + _matching("CAST(:type AS text)", ":importer", ":source")
)

_ANY_FOR_RUN = (
    "SELECT r.status, r.importer_slug, r.source_id, EXISTS (SELECT 1 FROM webhook_subscriptions s "
    "WHERE " + _matching("'run.' || r.status", "r.importer_slug", "r.source_id") + ") AS wanted "
    "FROM runs r WHERE r.id = :id"
)


async def run_finished(session: AsyncSession, run_id: int) -> None:
    """Announce the end of run ``run_id`` (``run.<its status>``) to its subscriptions."""
    found = (await session.execute(text(_ANY_FOR_RUN), {"id": run_id})).first()
    if found is None or not found.wanted or f"run.{found.status}" not in EVENT_TYPES:
        return
    # Imported here: app.runs.service imports the pipeline, which announces through here.
    from app.runs import service as runs_service
    from app.runs.models import Run

    run = await session.get(Run, run_id, populate_existing=True)
    assert run is not None
    await session.execute(
        text(_INSERT_RUN),
        {
            "type": f"run.{run.status}",
            "importer": run.importer_slug,
            "source": run.source_id,
            "data": json_dumps(runs_service.to_resource(run)),
        },
    )


async def items_staged(conn: asyncpg.Connection, item_ids: Sequence[int]) -> None:
    """Announce items newly staged (or sent back to review by new content): one statement
    for the whole chunk, however many items and subscriptions."""
    if item_ids:
        await conn.execute(_INSERT_ITEMS, "item.staged", list(item_ids))


async def item_transitioned(session: AsyncSession, item_id: int, to_status: str) -> None:
    """Announce a review transition (approve, reject, promote) of one item."""
    event = ITEM_EVENTS.get(to_status)
    if event is not None:
        await (await raw_connection(session)).execute(_INSERT_ITEMS, event, [item_id])
