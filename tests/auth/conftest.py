from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.models import Token
from app.core.db import unit_of_work
from app.core.security import hash_token
from app.sources.models import Source

MakeSource = Callable[..., Awaitable[int]]
GetToken = Callable[[str], Awaitable[Token]]


@pytest.fixture
def queries(app: FastAPI) -> Iterator[list[str]]:
    """Every SQL statement the app's engine runs while the test runs."""
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])  # (conn, cursor, statement, parameters, context, many)

    engine = app.state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    yield statements
    event.remove(engine, "before_cursor_execute", record)


@pytest.fixture
def make_source(session_factory: async_sessionmaker[AsyncSession]) -> MakeSource:
    """``await make_source("a")`` -> the id of a new source."""

    async def make(name: str) -> int:
        async with unit_of_work(session_factory) as session:
            source = Source(name=name, source_url=f"https://{name}.example.test/feed")
            session.add(source)
            await session.flush()
            return source.id

    return make


@pytest.fixture
def get_token(session_factory: async_sessionmaker[AsyncSession]) -> GetToken:
    """The stored row of a plaintext token, read fresh."""

    async def get(plaintext: str) -> Token:
        async with session_factory() as session:
            token = await session.scalar(
                select(Token).where(Token.token_hash == hash_token(plaintext))
            )
        assert token is not None
        return token

    return get
