"""Test harness: a real PostgreSQL built by the Alembic migrations and a real Redis.

``INGEST_TEST_DATABASE_URL`` names a server (and a database on it to connect to); the suite
creates its own ``ingest_test`` database there. ``INGEST_TEST_REDIS_URL`` names a Redis database
that is flushed before every test. With neither set, embedded servers are started.
"""

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq import ArqRedis
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.auth import service as auth_service
from app.core.config import Settings
from app.core.db import create_engine, create_session_factory, unit_of_work
from app.core.queue import close_queue, create_queue
from app.main import create_app
from tests import servers

# The S3 server fixtures (`s3`, a fresh bucket on moto's server on loopback).
pytest_plugins = ["tests.objects"]

# Several checkouts may share one server: INGEST_TEST_DB_NAME keeps their databases apart.
TEST_DB_NAME = os.environ.get("INGEST_TEST_DB_NAME", "ingest_test")


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    admin_url = os.environ.get("INGEST_TEST_DATABASE_URL") or servers.embedded_postgres_url()
    url = servers.recreate_database(admin_url, TEST_DB_NAME)
    servers.migrate(url, "head")
    yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    return os.environ.get("INGEST_TEST_REDIS_URL") or servers.embedded_redis_url()


@pytest.fixture(scope="session")
def storage_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("storage")


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str, storage_dir: Path) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        storage_dir=storage_dir,
        queue_name="ingest:test-queue",
        allow_private_urls=False,
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture(scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings.require_database_url())
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_session_factory(engine)


@pytest.fixture
async def queue(settings: Settings) -> AsyncIterator[ArqRedis]:
    queue = create_queue(settings.require_redis_url(), settings.queue_name)
    await queue.flushdb()
    yield queue
    await close_queue(queue)


@pytest.fixture(autouse=True)
async def clean_database(engine: AsyncEngine) -> AsyncIterator[None]:
    """Every test starts from empty tables (the schema stays as the migrations built it)."""
    async with engine.begin() as conn:
        tables = (
            await conn.execute(
                text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                    "AND tablename <> 'alembic_version'"
                )
            )
        ).scalars()
        names = ", ".join(f'"{t}"' for t in tables)
        if names:
            await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        # Collection tables are made by importers, not by the migrations: they go.
        schema = Settings().data_schema
        collections = (
            await conn.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = :schema"),
                {"schema": schema},
            )
        ).scalars()
        for table in collections:
            await conn.execute(text(f'DROP TABLE "{schema}"."{table}"'))
    yield


@pytest.fixture
async def app(settings: Settings, queue: ArqRedis) -> AsyncIterator[FastAPI]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


MakeToken = Callable[..., Awaitable[str]]


@pytest.fixture
def make_token(session_factory: async_sessionmaker[AsyncSession]) -> MakeToken:
    """``await make_token(role="curator", abilities=[...], source_id=None)`` -> plaintext."""
    counter = iter(range(1, 1_000_000))

    async def make(
        role: str = "admin",
        abilities: list[str] | None = None,
        *,
        email: str | None = None,
        source_id: int | None = None,
        **kwargs: Any,
    ) -> str:
        async with unit_of_work(session_factory) as session:
            user = await auth_service.get_or_create_user(
                session, email or f"{role}-{next(counter)}@example.test", role
            )
            issued = await auth_service.issue_token(
                session,
                user,
                "test",
                abilities or ["ingest:admin"],
                source_id=source_id,
                **kwargs,
            )
        return issued.plaintext

    return make


@pytest.fixture
async def admin_headers(make_token: MakeToken) -> dict[str, str]:
    return {"Authorization": f"Bearer {await make_token()}"}


RunWorker = Callable[[], Awaitable[None]]


@pytest.fixture
def run_worker(settings: Settings, queue: ArqRedis) -> RunWorker:
    """``await run_worker()`` drains the queue with a real arq worker in burst mode."""

    async def run() -> None:
        from app.worker.settings import create_worker

        worker = create_worker(settings, burst=True)
        try:
            await worker.main()
        finally:
            await worker.close()

    return run


Upload = Callable[..., Awaitable[httpx.Response]]


@pytest.fixture
def upload(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> Upload:
    """``await upload("slug", "a,b\\n1,2\\n", filename="x.csv", dry_run=False)``."""

    async def send(
        slug: str,
        content: str | bytes,
        *,
        filename: str = "data.csv",
        dry_run: bool = False,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        body = content.encode() if isinstance(content, str) else content
        return await client.post(
            f"/api/v1/ingest/upload/{slug}",
            files={"file": (filename, body)},
            data={"dry_run": "1"} if dry_run else {},
            headers=headers or admin_headers,
        )

    return send


CreateImporter = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
def create_importer(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> CreateImporter:
    """``await create_importer(slug="users", fields={...}, key=["email"], ...)`` via the API."""

    async def create(**definition: Any) -> dict[str, Any]:
        definition.setdefault("slug", "users")
        definition.setdefault("collection", definition["slug"].replace("-", "_"))
        response = await client.post(
            "/api/v1/ingest/importers", json=definition, headers=admin_headers
        )
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    return create
