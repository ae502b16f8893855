"""Request-scoped dependencies: one unit of work per request, the queue, the settings."""

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from arq import ArqRedis
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """Commit when the handler succeeds, roll back when it raises; then run after-commit hooks.

    Scoped to the path function, so the commit happens before the response is sent: a client
    that gets 202 can read what it created.
    """
    request.state.after_commit = []
    async with request.app.state.session_factory() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise
    for hook in request.state.after_commit:
        await hook()


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


def after_commit(request: Request, hook: Callable[[], Awaitable[None]]) -> None:
    """Run ``hook`` once the request's transaction has committed (e.g. enqueue a job)."""
    request.state.after_commit.append(hook)


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_queue(request: Request) -> ArqRedis:
    queue: ArqRedis = request.app.state.queue
    return queue


SettingsDep = Annotated[Settings, Depends(get_settings)]
QueueDep = Annotated[ArqRedis, Depends(get_queue)]
