"""A run's live stream (``GET /{run}/stream``, Server-Sent Events): its events as they are
committed, its progress on every change, and its resource at the end.

Wake-ups travel through Postgres: every event insert notifies the channel ``run_events`` with
the run id (app/runs/events.py), delivered on commit to every listener, whichever process
committed. Each API process holds one LISTEN connection (``EventsHub``, opened with the first
stream, closed by the app's lifespan) and wakes the streams of that run; a stream also re-reads
the run every ``INGEST_STREAM_RECHECK_SECONDS``, so a lost connection delays it but loses
nothing. A stream reads Postgres in short transactions, never across a send to the client.

| SSE event | id | data |
|---|---|---|
| its type (`chunk_applied`...) | its cursor | the event, as `GET /{run}/events` has it |
| `progress` | none | `{"status", "progress": {total, processed, successful, failed, skipped}}` |
| `end` | none | the run resource, as `GET /{run}` answers it (then the stream closes) |
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sse_starlette import ServerSentEvent

from app.core.db import json_dumps, raw_connection
from app.core.storage import Storage
from app.runs import events, service
from app.runs.models import FINISHED_STATUSES, Run
from app.runs.schemas import RunOut

log = logging.getLogger("ingest.stream")

# Events read per query: a stream opened on a long run catches up in pages.
PAGE_EVENTS = 500
# How soon a stream looks again when committed events wait behind an older transaction.
HELD_BACK_RECHECK_S = 0.2


def listen_dsn(database_url: str) -> str:
    """The settings' SQLAlchemy URL as a DSN that asyncpg connects to."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class EventsHub:
    """One LISTEN connection for the whole process, shared by every stream: a notification for
    run N wakes the streams of run N. The connection is opened by the first stream (and again
    by a later one after it was lost) and closed by ``close``."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._waiting: dict[int, set[asyncio.Event]] = {}
        self._closed = False

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def ensure_listening(self) -> None:
        """Listen, if not already; a failure is logged (streams then go by their re-check)."""
        if self.listening or self._closed:
            return
        async with self._lock:
            if self.listening or self._closed:
                return
            try:
                conn = await asyncpg.connect(self._dsn)
                await conn.add_listener(events.NOTIFY_CHANNEL, self._notified)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("cannot listen for run events (streams poll meanwhile): %s", exc)
                return
            self._conn = conn

    def _notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        try:
            run_id = int(payload)
        except ValueError:
            return
        for woken in self._waiting.get(run_id, ()):
            woken.set()

    @contextlib.asynccontextmanager
    async def subscribe(self, run_id: int) -> AsyncIterator[asyncio.Event]:
        """An event set whenever run ``run_id`` got new events (the caller clears it)."""
        woken = asyncio.Event()
        self._waiting.setdefault(run_id, set()).add(woken)
        try:
            await self.ensure_listening()
            yield woken
        finally:
            waiting = self._waiting.get(run_id)
            if waiting is not None:
                waiting.discard(woken)
                if not waiting:
                    del self._waiting[run_id]

    async def close(self) -> None:
        self._closed = True
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                await self._conn.close()
            self._conn = None


def progress_of(run: Run) -> dict[str, Any]:
    item = service.to_list_item(run)
    return {"status": item["status"], "progress": item["progress"]}


async def _read(
    factory: async_sessionmaker[AsyncSession], run_id: int, after: events.Cursor | None
) -> tuple[Run | None, list[asyncpg.Record], bool]:
    """The run, then its events above ``after`` (one page), and whether more were committed
    but are held back behind an older transaction still running. Read in this order, a run
    seen finished has every event it will ever have in the page(s) read after it."""
    async with factory() as session:
        run = await session.get(Run, run_id)
        if run is None:
            return None, [], False
        conn = await raw_connection(session)
        rows, held = await events.read(
            conn, run_id, after, PAGE_EVENTS, settled=run.status in FINISHED_STATUSES
        )
    return run, rows, held


async def _end_resource(
    factory: async_sessionmaker[AsyncSession], run_id: int, max_rows: int, storage: Storage
) -> dict[str, Any] | None:
    async with factory() as session:
        run = await session.get(Run, run_id)
        if run is None:
            return None
        resource = service.to_resource(
            run, await service.first_rows(session, run, max_rows, storage)
        )
    # Through the response model, as GET /{run} answers it (e.g. the summary's key order).
    return RunOut.model_validate(resource).model_dump(mode="json")


async def follow(
    factory: async_sessionmaker[AsyncSession],
    hub: EventsHub,
    run_id: int,
    *,
    after: events.Cursor | None = None,
    recheck_s: float,
    max_rows: int,
    storage: Storage,
) -> AsyncIterator[ServerSentEvent]:
    """The stream of run ``run_id`` from the event above ``after``: events, progress on change,
    then ``end`` once the run has finished (or nothing more if it was deleted)."""
    async with hub.subscribe(run_id) as woken:
        shown: dict[str, Any] | None = None
        while True:
            # Cleared before reading: a commit notified during the read wakes the next round.
            woken.clear()
            run, rows, held = await _read(factory, run_id, after)
            if run is None:  # pruned meanwhile
                return
            for row in rows:
                event = events.to_resource(row)
                yield ServerSentEvent(json_dumps(event), event=event["type"], id=event["cursor"])
                after = events.Cursor(int(row["xid"]), row["id"])
            if len(rows) == PAGE_EVENTS:
                continue  # more to catch up on
            progress = progress_of(run)
            if progress != shown:
                yield ServerSentEvent(json_dumps(progress), event="progress")
                shown = progress
            if run.status in FINISHED_STATUSES:
                resource = await _end_resource(factory, run_id, max_rows, storage)
                if resource is not None:
                    yield ServerSentEvent(json_dumps(resource), event="end")
                return
            # Events held back are shown once the older transaction ends, which notifies
            # nothing: look again soon rather than at the next re-check.
            wait_s = min(recheck_s, HELD_BACK_RECHECK_S) if held else recheck_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), wait_s)
            await hub.ensure_listening()  # again, if the connection was lost
