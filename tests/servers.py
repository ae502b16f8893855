"""Where the test suite's PostgreSQL and Redis come from when no URL is given."""

import asyncio
import tempfile
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from app.core import embedded
from app.core import migrate as migrations

_ROOT = Path(__file__).resolve().parents[1] / ".ingest"


def embedded_postgres_url() -> str:
    return embedded.start_postgres(_ROOT / "test-pg")


def embedded_redis_url() -> str:
    return embedded.start_redis(Path(tempfile.mkdtemp(prefix="ingest-test-redis-")))


def _plain(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def recreate_database(admin_url: str, name: str) -> str:
    """Drop and create database ``name`` on the server of ``admin_url``; return its URL."""

    async def run() -> None:
        conn = await asyncpg.connect(_plain(admin_url))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(run())
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def migrate(url: str, revision: str) -> None:
    migrations.upgrade(url, revision)
