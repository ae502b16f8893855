"""Each collection is a typed table of its own, made and evolved as its importers are saved."""

import asyncio
from typing import Any

import httpx
import orjson
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from app.core import migrate
from app.core.db import async_url
from app.importers.loader import load_directory
from tests.servers import recreate_database

API = "/api/v1/ingest"
Factory = async_sessionmaker[AsyncSession]

EVERY_TYPE: dict[str, Any] = {
    "email": {"type": "email", "required": True},
    "name": {"type": "string"},
    "site": {"type": "url"},
    "age": {"type": "integer"},
    "score": {"type": "number"},
    "active": {"type": "boolean"},
    "born": {"type": "date"},
    "seen_at": {"type": "datetime"},
    "tags": {"type": "list"},
    "extra": {"type": "json"},
}


def definition(**changes: Any) -> dict[str, Any]:
    return {"slug": "people", "collection": "people", "key": ["email"], **changes}


async def columns(factory: Factory, table: str = "people") -> dict[str, str]:
    async with factory() as session:
        rows = await session.execute(
            text(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'ingest_data' AND table_name = :table"
            ),
            {"table": table},
        )
        return dict(rows.all())


async def save(
    client: httpx.AsyncClient, headers: dict[str, str], body: dict[str, Any], *, create: bool
) -> httpx.Response:
    if create:
        return await client.post(f"{API}/importers", json=body, headers=headers)
    return await client.put(f"{API}/importers/{body['slug']}", json=body, headers=headers)


async def test_the_first_importer_of_a_collection_makes_its_table_with_a_typed_column_per_field(
    client: httpx.AsyncClient, admin_headers: dict[str, str], session_factory: Factory
) -> None:
    response = await save(client, admin_headers, definition(fields=EVERY_TYPE), create=True)
    assert response.status_code == 201, response.text

    found = await columns(session_factory)
    assert {name: found[name] for name in EVERY_TYPE} == {
        "email": "text",
        "name": "text",
        "site": "text",
        "age": "bigint",
        "score": "double precision",
        "active": "boolean",
        "born": "date",
        "seen_at": "timestamp with time zone",
        "tags": "ARRAY",
        "extra": "jsonb",
    }
    system = {name for name in found if name.startswith("_")}
    assert system == {
        "_id",
        "_key",
        "_content_hash",
        "_input_hash",
        "_source_id",
        "_last_run_id",
        "_last_row_number",
        "_created_at",
        "_updated_at",
        "_extra",
    }
    async with session_factory() as session:
        primary = await session.scalar(
            text(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'ingest_data.people'::regclass "
                "AND i.indisprimary"
            )
        )
    assert primary == "_key"


async def test_a_new_field_adds_a_column_and_a_removed_one_keeps_its_column_and_data(
    client: httpx.AsyncClient, admin_headers: dict[str, str], session_factory: Factory
) -> None:
    fields = {"email": {"type": "email"}, "age": {"type": "integer"}}
    assert (await save(client, admin_headers, definition(fields=fields), create=True)).is_success
    async with session_factory() as session, session.begin():
        await session.execute(
            text(
                "INSERT INTO ingest_data.people (_key, _content_hash, email, age) "
                "VALUES ('a@example.com', 'h', 'a@example.com', 41)"
            )
        )

    fields = {"email": {"type": "email"}, "city": {"type": "string"}}
    response = await save(client, admin_headers, definition(fields=fields), create=False)
    assert response.status_code == 200, response.text

    assert {"email", "age", "city"} <= set(await columns(session_factory))
    async with session_factory() as session:
        row = (await session.execute(text("SELECT age, city FROM ingest_data.people"))).one()
    assert tuple(row) == (41, None)


async def test_a_column_is_widened_where_its_values_cast_without_loss(
    client: httpx.AsyncClient, admin_headers: dict[str, str], session_factory: Factory
) -> None:
    fields: dict[str, Any] = {
        "email": {"type": "email"},
        "age": {"type": "integer"},
        "born": {"type": "date"},
        "count": {"type": "integer"},
    }
    assert (await save(client, admin_headers, definition(fields=fields), create=True)).is_success
    async with session_factory() as session, session.begin():
        await session.execute(
            text(
                "INSERT INTO ingest_data.people (_key, _content_hash, email, age, born, count) "
                "VALUES ('a@example.com', 'h', 'a@example.com', 41, '2001-02-03', 7)"
            )
        )

    fields = {
        "email": {"type": "email"},
        "age": {"type": "number"},
        "born": {"type": "datetime"},
        "count": {"type": "string"},
    }
    response = await save(client, admin_headers, definition(fields=fields), create=False)
    assert response.status_code == 200, response.text

    found = await columns(session_factory)
    assert (found["age"], found["born"], found["count"]) == (
        "double precision",
        "timestamp with time zone",
        "text",
    )
    async with session_factory() as session:
        row = (
            await session.execute(
                text("SELECT age, born::date::text, count FROM ingest_data.people")
            )
        ).one()
    assert tuple(row) == (41.0, "2001-02-03", "7")

    # A narrower type again fits the wider column as it is: nothing changes.
    fields["age"] = {"type": "integer"}
    response = await save(client, admin_headers, definition(fields=fields), create=False)
    assert response.status_code == 200, response.text
    assert (await columns(session_factory))["age"] == "double precision"


async def test_a_type_the_column_cannot_be_cast_to_is_a_409_and_nothing_is_saved(
    client: httpx.AsyncClient, admin_headers: dict[str, str], session_factory: Factory
) -> None:
    fields: dict[str, Any] = {"email": {"type": "email"}, "active": {"type": "boolean"}}
    assert (await save(client, admin_headers, definition(fields=fields), create=True)).is_success

    fields = {"email": {"type": "email"}, "active": {"type": "date"}, "new": {"type": "string"}}
    response = await save(client, admin_headers, definition(fields=fields), create=False)

    assert response.status_code == 409, response.text
    message = response.json()["message"]
    assert "active" in message and "boolean" in message and "date" in message
    found = await columns(session_factory)
    assert found["active"] == "boolean" and "new" not in found
    shown = await client.get(f"{API}/importers/people", headers=admin_headers)
    assert shown.json()["data"]["definition"]["fields"]["active"]["type"] == "boolean"


async def test_importers_sharing_a_collection_must_agree_on_its_key(
    client: httpx.AsyncClient, admin_headers: dict[str, str], session_factory: Factory
) -> None:
    fields = {"email": {"type": "email"}, "code": {"type": "string"}}
    assert (await save(client, admin_headers, definition(fields=fields), create=True)).is_success

    same = definition(slug="people-too", fields={**fields, "phone": {"type": "string"}})
    assert (await save(client, admin_headers, same, create=True)).status_code == 201
    assert "phone" in await columns(session_factory)

    other = definition(slug="people-by-code", key=["code"], fields=fields)
    response = await save(client, admin_headers, other, create=True)
    assert response.status_code == 409, response.text
    assert response.json()["message"] == (
        "The collection people is keyed by email; this importer's key is code. "
        "Importers that share a collection must agree on its key."
    )

    appending = definition(slug="people-log", key=[], action="append", fields=fields)
    assert (await save(client, admin_headers, appending, create=True)).status_code == 201


async def test_two_first_importers_of_one_collection_saved_at_once_both_succeed(
    client: httpx.AsyncClient, admin_headers: dict[str, str], session_factory: Factory
) -> None:
    bodies = [
        definition(slug=f"racer-{i}", fields={"email": {"type": "email"}, f"f{i}": {}})
        for i in range(2)
    ]
    responses = await asyncio.gather(*(save(client, admin_headers, b, create=True) for b in bodies))
    assert [r.status_code for r in responses] == [201, 201], [r.text for r in responses]
    assert {"email", "f0", "f1"} <= set(await columns(session_factory))


async def test_names_that_cannot_name_a_table_or_a_column_are_422(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    fields = {"email": {"type": "email"}}
    for collection in ("People", "people-list", "1people", "p" * 64, "people list"):
        body = definition(collection=collection, fields=fields)
        response = await save(client, admin_headers, body, create=True)
        assert response.status_code == 422, (collection, response.text)
        assert "it names a table" in response.text

    for field in ("_key", "_anything", "x" * 64):
        body = definition(fields={"email": {"type": "email"}, field: {"type": "string"}})
        response = await save(client, admin_headers, body, create=True)
        assert response.status_code == 422, (field, response.text)


async def test_importers_loaded_from_files_make_their_tables_too(
    tmp_path: Any, session_factory: Factory
) -> None:
    (tmp_path / "people.yaml").write_text(
        "slug: people\ncollection: people\nkey: [email]\n"
        "fields: {email: {type: email}, age: {type: integer}}\n"
    )
    assert await load_directory(session_factory, tmp_path) == 1
    assert (await columns(session_factory))["age"] == "bigint"


async def test_the_migration_renames_collections_that_cannot_name_a_table(
    database_url: str,
) -> None:
    """Collections saved before names became table names are renamed in their importers,
    records and items alike, losing nothing."""
    name = f"{make_url(database_url).database}_collections"
    url = await asyncio.to_thread(recreate_database, database_url, name)
    await asyncio.to_thread(migrate.upgrade, url, "0010")
    engine = create_async_engine(async_url(url))
    old = {"slug": "people", "collection": "People-List", "key": ["email"], "fields": {}}
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO importers (slug, name, definition, origin) "
                    "VALUES ('people', 'People', CAST(:d AS jsonb), 'api')"
                ),
                {"d": orjson.dumps(old).decode()},
            )
            await conn.execute(
                text(
                    "INSERT INTO records (collection, key, data, content_hash) "
                    "VALUES ('People-List', 'a@example.com', '{}', 'h')"
                )
            )
        await asyncio.to_thread(migrate.upgrade, url, "0011")
        async with engine.connect() as conn:
            definition = await conn.scalar(text("SELECT definition FROM importers"))
            collections = (await conn.execute(text("SELECT collection, key FROM records"))).all()
    finally:
        await engine.dispose()
    assert definition == {**old, "collection": "people_list"}
    assert [tuple(row) for row in collections] == [("people_list", "a@example.com")]
