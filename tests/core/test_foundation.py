"""Settings, the error envelope, pagination and the migrations."""

import asyncio
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from app.core import migrate
from app.core.config import Settings
from app.core.db import async_url
from tests.conftest import CreateImporter
from tests.servers import recreate_database

API = "/api/v1/ingest"


def test_settings_read_the_ingest_prefix_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INGEST_MAX_UPLOAD_MB", "7")
    monkeypatch.setenv("INGEST_API_PREFIX", "api/v2/")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.max_upload_mb == 7
    assert settings.max_upload_bytes == 7 * 1024 * 1024
    assert settings.api_prefix == "/api/v2"


def test_settings_refuse_invalid_values_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGEST_MAX_UPLOAD_MB", "0")
    with pytest.raises(ValidationError, match="max_upload_mb"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_a_missing_database_url_names_the_variable() -> None:
    settings = Settings(database_url=None, _env_file=None)  # type: ignore[call-arg]
    with pytest.raises(RuntimeError, match="INGEST_DATABASE_URL"):
        settings.require_database_url()


def test_plain_postgres_urls_get_the_asyncpg_driver() -> None:
    assert async_url("postgresql://u@h:5432/db") == "postgresql+asyncpg://u@h:5432/db"


async def test_unknown_route_is_a_json_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/nope")
    assert response.status_code == 404
    assert response.json() == {"message": "Not found."}


async def test_missing_token_is_a_json_401(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{API}/importers")
    assert response.status_code == 401
    assert response.json() == {"message": "Unauthenticated."}


async def test_invalid_query_is_422_with_field_messages(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.get(f"{API}/importers?per_page=101", headers=admin_headers)
    assert response.status_code == 422
    body = response.json()
    assert "per_page" in body["errors"]
    assert body["message"] == body["errors"]["per_page"][0]


async def test_invalid_importer_definition_names_each_bad_field(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    definition: dict[str, Any] = {
        "slug": "Bad Slug",
        "collection": "users",
        "key": ["email"],
        "fields": {"email": {"type": "emial"}, "age": {"type": "integer", "min_length": -1}},
    }
    response = await client.post(f"{API}/importers", json=definition, headers=admin_headers)
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert {"slug", "fields.email.type", "fields.age.min_length"} <= set(errors)


async def test_pagination_envelope_and_edges(
    client: httpx.AsyncClient, admin_headers: dict[str, str], create_importer: CreateImporter
) -> None:
    for n in range(5):
        await create_importer(slug=f"imp-{n}", fields={"a": {"type": "string"}}, action="append")
    page = (await client.get(f"{API}/importers?per_page=2&page=3", headers=admin_headers)).json()
    assert [i["slug"] for i in page["data"]] == ["imp-4"]
    assert page["meta"] == {"current_page": 3, "per_page": 2, "total": 5, "last_page": 3}
    assert page["links"]["next"] is None
    assert page["links"]["prev"].endswith("page=2")
    assert page["links"]["first"].endswith("page=1")
    beyond = (await client.get(f"{API}/importers?per_page=2&page=9", headers=admin_headers)).json()
    assert beyond["data"] == [] and beyond["meta"]["total"] == 5
    zero = await client.get(f"{API}/importers?page=0", headers=admin_headers)
    assert zero.status_code == 422


async def test_migrations_go_down_to_base_and_up_again(database_url: str) -> None:
    name = f"{make_url(database_url).database}_migrations"
    url = await asyncio.to_thread(recreate_database, database_url, name)
    await asyncio.to_thread(migrate.upgrade, url, "head")
    await asyncio.to_thread(migrate.downgrade, url, "base")
    engine = create_async_engine(async_url(url))
    try:
        async with engine.connect() as conn:
            tables = (
                (
                    await conn.execute(
                        text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                    )
                )
                .scalars()
                .all()
            )
        assert set(tables) <= {"alembic_version"}
        await asyncio.to_thread(migrate.upgrade, url, "head")
        async with engine.connect() as conn:
            count = await conn.scalar(
                text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            )
        assert count >= 12
    finally:
        await engine.dispose()
