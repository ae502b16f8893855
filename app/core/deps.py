"""Request-scoped dependencies: one unit of work per request (and the split jobs it starts),
the settings."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.queue import enqueue_quietly, enqueue_split


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
