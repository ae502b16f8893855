"""A run's event log: append-only, one row per thing that happened to the run, written in the
transaction of the state change it records (so a rolled-back change leaves no event, and a
change made once has one event however many workers raced to make it). Each insert notifies
the channel `run_events` with the run id, which wakes the run's live streams (app/runs/live.py)
once the transaction commits.

| type | data |
|---|---|
| created | kind, importer, dry_run, parent_run_id |
| split_started | attempt, worker, resumed_from (chunks an earlier attempt stored) |
| split_finished | rows, chunks, bytes (the input's size, null without a file), reused_from |
| chunk_applied | index, status (done / failed), rows (by outcome, and failed), duration_ms, |
|   | attempt, worker (both null when applied without a claim) |
| chunk_retried | index, attempt, reason |
| lease_reclaimed | what (split / chunk), index (chunks), previous (the holder), attempt |
| cancel_requested | status (the run's right after: cancelled, or processing until chunks end) |
| finalized | status, summary |
| failed | message |
"""

from collections.abc import Sequence
from typing import Any, Literal, get_args

import asyncpg
import orjson
from fastapi import Request
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import json_dumps
from app.core.pagination import PageParams, build_page, keyset_links
from app.core.timefmt import iso

EventType = Literal[
    "created",
    "split_started",
    "split_finished",
    "chunk_applied",
    "chunk_retried",
    "lease_reclaimed",
    "cancel_requested",
    "finalized",
    "failed",
]
TYPES: tuple[str, ...] = get_args(EventType)

# Every insert also notifies NOTIFY_CHANNEL with the run id (app/runs/live.py listens):
# Postgres delivers it on commit only, once per run and transaction, to every API process.
NOTIFY_CHANNEL = "run_events"


def _insert(run: str, type: str, data: str) -> str:
    # pg_notify in the FROM clause: it runs once, in the statement of the insert.
    return (
        "INSERT INTO run_events (run_id, type, data) "
        f"SELECT CAST({run} AS bigint), {type}, CAST({data} AS jsonb) "
        f"FROM pg_notify('{NOTIFY_CHANNEL}', CAST(CAST({run} AS bigint) AS text))"
    )


_INSERT = _insert(":run", "CAST(:type AS text)", ":data")


async def add(session: AsyncSession, run_id: int, type: EventType, **data: Any) -> None:
    """Append an event, in the session's transaction."""
    await session.execute(text(_INSERT), {"run": run_id, "type": type, "data": json_dumps(data)})


def with_event(statement: str, type: EventType, run: str, data: str) -> str:
    """``statement`` preceded by the insert of one event, so both go in one round trip
    (the hot path: a chunk's count). ``run`` and ``data`` are the statement's parameters
    (``$7`` for asyncpg, ``:event`` for SQLAlchemy) holding the run id and the event's data
    as JSON text."""
    assert type in TYPES  # a literal in the SQL: never anything but a known type
    literal = f"'{type}'"
    return f"WITH run_event AS ({_insert(run, literal, data)}) {statement}"


async def list_page(
    conn: asyncpg.Connection,
    request: Request,
    run_id: int,
    params: PageParams,
    *,
    types: Sequence[str] | None = None,
    after: int | None = None,
) -> dict[str, Any]:
    """One page of the run's events in id order, of ``types`` when given. With ``after`` (an
    event id) the page starts above it, and its next link, while more follow, continues from
    the page's last event (the way to follow a run: ``after`` the last id seen)."""
    where: list[str] = ["run_id = $1"]
    args: list[Any] = [run_id]
    if types:
        args.append(list(types))
        where.append(f"type = ANY(${len(args)}::text[])")
    total = await conn.fetchval(
        f"SELECT count(*) FROM run_events WHERE {' AND '.join(where)}", *args
    )
    offset = (params.page - 1) * params.per_page
    if after is not None:
        args.append(after)
        where.append(f"id > ${len(args)}")
        offset = 0
    # One more than a page: whether a next page follows the keyset one.
    rows = await conn.fetch(
        f"SELECT id, type, at, data::text AS data FROM run_events WHERE {' AND '.join(where)} "
        f"ORDER BY id LIMIT {params.per_page + 1} OFFSET {offset}",
        *args,
    )
    found = [to_resource(row) for row in rows[: params.per_page]]
    page = build_page(request, found, int(total or 0), params)
    if after is not None:
        keyset_links(page, request, found[-1]["id"] if len(rows) > params.per_page else None)
    return page


def to_resource(row: asyncpg.Record) -> dict[str, Any]:
    data = row["data"]
    return {
        "id": row["id"],
        "type": row["type"],
        "at": iso(row["at"]),
        "data": orjson.loads(data) if data is not None else {},
    }
