"""The server-side commands' own database access (``ingest prune``, the bootstrap ``ingest
token create``): the operator commands go through the API instead (app.client).

`in_database` runs a command's work against ``INGEST_DATABASE_URL`` and turns every failure
into one line on stderr and exit 1: unreachable, not migrated, a rule of the service refused.
"""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.client import fail
from app.core.config import Settings, get_settings
from app.core.db import create_engine, create_session_factory
from app.core.errors import IngestError

T = TypeVar("T")

CONNECT_TIMEOUT_SECONDS = 10


@dataclass
class Context:
    settings: Settings
    factory: async_sessionmaker[AsyncSession]


class _Unreachable(Exception):
    pass


def reason(exc: BaseException) -> str:
    """The driver's own first line, without SQLAlchemy's wrapping."""
    inner = getattr(exc, "orig", None) or exc
    inner = inner.__cause__ or inner
    lines = str(inner).strip().splitlines()
    return lines[0] if lines else type(inner).__name__


def message_of(exc: IngestError) -> str:
    if exc.errors:
        return "; ".join(msg for messages in exc.errors.values() for msg in messages)
    return exc.message


def in_database(work: Callable[[Context], Awaitable[T]]) -> T:
    """Run ``work`` with a session factory on INGEST_DATABASE_URL; failures become one line."""
    settings = get_settings()
    try:
        url = settings.require_database_url()
    except RuntimeError as exc:
        raise fail(str(exc)) from None
    where = make_url(url).render_as_string(hide_password=True)

    async def main() -> T:
        engine = create_engine(url, connect_args={"timeout": CONNECT_TIMEOUT_SECONDS})
        try:
            try:
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            except (OSError, TimeoutError, DBAPIError) as exc:
                raise _Unreachable(f"cannot reach the database at {where}: {reason(exc)}") from exc
            return await work(Context(settings, create_session_factory(engine)))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except IngestError as exc:
        raise fail(message_of(exc)) from None
    except _Unreachable as exc:
        raise fail(str(exc)) from None
    except DBAPIError as exc:
        if isinstance(getattr(exc.orig, "__cause__", None), asyncpg.UndefinedTableError):
            raise fail(f"the database at {where} is not migrated: run `ingest migrate`") from None
        raise fail(f"database error: {reason(exc)}") from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None
