"""A run's event log: append-only, one row per thing that happened to the run, written in the
transaction of the state change it records (so a rolled-back change leaves no event, and a
change made once has one event however many workers raced to make it). Each insert notifies
the channel `run_events` with the run id, which wakes the run's live streams (app/runs/live.py)
once the transaction commits.

| type | data |
|---|---|
| created | kind, importer, dry_run, parent_run_id |
| split_started | attempt, worker, resumed_from (chunks an earlier attempt stored) |
| split_finished | rows, chunks, bytes (the input's size, null without a file), reused_from, |
|   | blocks (chunks of this attempt cut from a CSV file's bytes without reading rows) |
| chunk_applied | index, status (done / failed), rows (by outcome, and failed), duration_ms, |
|   | attempt, worker (both null when applied without a claim) |
| chunk_retried | index, attempt, reason |
| lease_reclaimed | what (split / chunk), index (chunks), previous (the holder), attempt |
| cancel_requested | status (the run's right after: cancelled, or processing until chunks end) |
| finalized | status, summary |
| failed | message |

Followers read in cursor order, (xid, id): ``xid`` is the writing transaction (migration
0015), so events come in the order their transactions began writing (as ``at``, the
transaction's start, shows), not strictly in id order. Only events of transactions older than
every transaction still running are read (``Cursor``); a finished run's are all read at once.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import asyncpg
import orjson
from fastapi import Request
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import json_dumps
from app.core.errors import BadRequest
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


@dataclass(frozen=True)
class Cursor:
    """A follower's position: the (transaction, id) of the last event it saw. Events are read
    in (xid, id) order, and only those whose transaction finished before every transaction
    still running: an event committed later always sorts above a cursor already handed out.
    Its text (``<xid>-<id>``) is opaque to clients."""

    xid: int
    id: int

    def __str__(self) -> str:
        return f"{self.xid}-{self.id}"


# A cursor, or a plain event id (what clients before cursors sent; 0 for "from the start").
CURSOR_PATTERN = r"^[0-9]{1,20}(-[0-9]{1,19})?$"
_XID8_MAX = 2**64 - 1
_INT8_MAX = 2**63 - 1


def parse_after(value: str) -> Cursor | int:
    """``after``/``Last-Event-ID`` as a cursor, or as a plain event id (legacy)."""
    xid, sep, id_ = value.partition("-")
    try:
        if not sep:
            legacy = int(xid)
            if 0 <= legacy <= _INT8_MAX:
                return legacy
        elif 0 <= int(xid) <= _XID8_MAX and 0 <= int(id_) <= _INT8_MAX:
            return Cursor(int(xid), int(id_))
    except ValueError:
        pass
    raise BadRequest(f"{value!r} is not an event cursor (an event's `cursor`, or its id)")


async def resolve(
    conn: asyncpg.Connection, run_id: int, after: Cursor | int | None
) -> Cursor | None:
    """``after`` as a cursor: a plain event id becomes that event's position (0, or none, is
    the start). An id that is no event of the run is a 400: following from a guess could
    skip events."""
    if after is None or isinstance(after, Cursor):
        return after
    if after == 0:
        return None
    xid = await conn.fetchval(
        "SELECT xid::text FROM run_events WHERE id = $1 AND run_id = $2", after, run_id
    )
    if xid is None:
        raise BadRequest(f"run {run_id} has no event {after} to continue after")
    return Cursor(int(xid), after)


# Every transaction below the snapshot's xmin has ended: the events it committed are all
# visible, and no event will ever be committed below it again. The xmin is cluster-wide (any
# database's open transaction holds it back): followers lag by the oldest running transaction.
_SETTLED = "xid < pg_snapshot_xmin(pg_current_snapshot())"
_COLUMNS = f"id, xid::text AS xid, type, at, data::text AS data, {_SETTLED} AS settled"


def _where(
    run_id: int, types: Sequence[str] | None, after: Cursor | None
) -> tuple[list[str], list[Any]]:
    where: list[str] = ["run_id = $1"]
    args: list[Any] = [run_id]
    if types:
        args.append(list(types))
        where.append(f"type = ANY(${len(args)}::text[])")
    if after is not None:
        args += [str(after.xid), after.id]
        where.append(f"(xid, id) > (CAST(${len(args) - 1} AS text)::xid8, ${len(args)})")
    return where, args


async def read(
    conn: asyncpg.Connection, run_id: int, after: Cursor | None, limit: int, *, settled: bool
) -> tuple[list[asyncpg.Record], bool]:
    """Up to ``limit`` events of the run above ``after`` in cursor order, and whether more
    were committed but held back (an older transaction still runs: read again soon). With
    ``settled`` (the run has finished: nothing more will be written) every committed one."""
    where, args = _where(run_id, None, after)
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM run_events WHERE {' AND '.join(where)} "
        f"ORDER BY xid, id LIMIT {limit}",
        *args,
    )
    if settled:
        return list(rows), False
    # In xid order the events held back all come after those that may be shown.
    shown = [row for row in rows if row["settled"]]
    return shown, len(shown) < len(rows)


async def list_page(
    conn: asyncpg.Connection,
    request: Request,
    run_id: int,
    params: PageParams,
    *,
    types: Sequence[str] | None = None,
    after: Cursor | int | None = None,
    settled: bool = False,
) -> dict[str, Any]:
    """One page of the run's events in cursor order, of ``types`` when given. With ``after``
    (a cursor, or an event id) the page starts above it, and its next link, while more follow,
    continues from the page's last event (the way to follow a run: ``after`` the last cursor
    seen). Until the run has finished (``settled``) only the events that can never be
    overtaken by a later commit are listed (``Cursor``)."""
    position = await resolve(conn, run_id, after)
    where, args = _where(run_id, types, position)
    if not settled:
        where.append(_SETTLED)
    offset = 0 if after is not None else (params.page - 1) * params.per_page
    if after is not None:
        # The count, as without a cursor: the run's events (of ``types``) listed so far.
        count_where, count_args = _where(run_id, types, None)
        count_where += [] if settled else [_SETTLED]
    else:
        count_where, count_args = where, args
    total = await conn.fetchval(
        f"SELECT count(*) FROM run_events WHERE {' AND '.join(count_where)}", *count_args
    )
    # One more than a page: whether a next page follows the keyset one.
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM run_events WHERE {' AND '.join(where)} "
        f"ORDER BY xid, id LIMIT {params.per_page + 1} OFFSET {offset}",
        *args,
    )
    found = [to_resource(row) for row in rows[: params.per_page]]
    page = build_page(request, found, int(total or 0), params)
    if after is not None:
        keyset_links(page, request, found[-1]["cursor"] if len(rows) > params.per_page else None)
    return page


def to_resource(row: asyncpg.Record) -> dict[str, Any]:
    data = row["data"]
    return {
        "id": row["id"],
        "cursor": str(Cursor(int(row["xid"]), row["id"])),
        "type": row["type"],
        "at": iso(row["at"]),
        "data": orjson.loads(data) if data is not None else {},
    }
