"""Request-scoped dependencies: one unit of work per request (and the split jobs it starts),
the settings, and the back-pressure check of the doors that start runs."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.errors import TooManyRequests
from app.core.queue import enqueue_quietly, enqueue_split, queue_depth


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """Commit when the handler succeeds, roll back when it raises; then queue the split jobs
    of the runs the request started.

    Scoped to the path function, so the commit happens before the response is sent: a client
    that gets 202 can read what it created.
    """
    request.state.runs_to_split = []
    async with request.app.state.session_factory() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise
    for run_id in request.state.runs_to_split:
        await enqueue_quietly(enqueue_split, request.app.state.queue, run_id)


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


def split_after_commit(request: Request, *run_ids: int) -> None:
    """Queue the runs' split jobs once the request's transaction has committed, so that a job
    never names a run that is not there (yet). A job lost on the way (Redis down) is queued
    again by the reconciler: Postgres holds the run."""
    request.state.runs_to_split.extend(run_ids)


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def check_queue_room(request: Request) -> None:
    """429 with ``Retry-After`` while the queue holds ``INGEST_MAX_QUEUE_DEPTH`` jobs or more.

    Called by every door that starts a run, before it stores anything: a refused request leaves
    no run, item or file behind. A Redis that cannot be reached refuses nothing: the run's split
    would then be enqueued later by the reconciler, as today.
    """
    settings: Settings = request.app.state.settings
    if not settings.max_queue_depth:
        return
    depth = await queue_depth(request.app.state.queue, settings.queue_name)
    if depth is not None and depth >= settings.max_queue_depth:
        wait = settings.queue_retry_after_seconds
        raise TooManyRequests(
            f"The work queue is full ({depth:,} jobs waiting, at most "
            f"{settings.max_queue_depth:,}): try again in {wait} seconds.",
            retry_after=wait,
        )
