"""Revision 0012 moves records from the shared JSON `records` table into typed collection
tables without losing a value, and its downgrade puts them back."""

import asyncio
from typing import Any

import asyncpg
import orjson
from sqlalchemy.engine import make_url

from app.core import migrate
from app.records.store import columns_of, selected, to_resource
from tests.servers import recreate_database

PEOPLE = {
    "slug": "people",
    "collection": "people",
    "key": ["email"],
    "action": "upsert",
    "title_field": "name",
    "fields": {
        "email": {"type": "email"},
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "score": {"type": "number"},
        "active": {"type": "boolean"},
        "born": {"type": "date"},
        "seen": {"type": "datetime"},
        "tags": {"type": "list"},
        "meta": {"type": "json"},
    },
}
# Every value fits its column.
FITS = {
    "email": "ada@example.com",
    "name": "Ada",
    "age": 36,
    "score": 9.5,
    "active": True,
    "born": "1815-12-10",
    "seen": "2026-01-02T03:04:05+00:00",
    "tags": ["math", "poetry"],
    "meta": {"lang": "en", "n": [1, 2]},
}
# None does: each is kept in `_extra` as it was.
MISFITS = {
    "email": "alan@example.com",
    "name": 7,
    "age": 1.5,
    "score": "high",
    "active": "yes",
    "born": "23/06/1912",
    "seen": "soon",
    "tags": [1, 2],
    "nickname": "Turing",
}
ORPHAN = {"anything": [1, {"b": None}]}


async def _insert_records(conn: asyncpg.Connection) -> None:
    source = await conn.fetchval(
        "INSERT INTO sources (name, source_url, ingestion_type, source_priority, is_active, "
        "approval_mode, status) VALUES ('feed', 'https://feed.example.test', 'push', 0, true, "
        "'manual', 'active') RETURNING id"
    )
    await conn.execute(
        "INSERT INTO importers (slug, name, definition, origin) VALUES ($1, $1, $2, 'api')",
        "people",
        orjson.dumps(PEOPLE).decode(),
    )
    rows: list[tuple[int, str, str, dict[str, Any], int | None]] = [
        (11, "people", FITS["email"], FITS, source),
        (12, "people", MISFITS["email"], MISFITS, None),
        (13, "people", "grace@example.com", {"email": "grace@example.com", "age": None}, None),
        (20, "legacy", "k-1", ORPHAN, None),
    ]
    for record_id, collection, key, data, source_id in rows:
        await conn.execute(
            "INSERT INTO records (id, collection, key, data, content_hash, input_hash, "
            "source_id, last_run_id, last_row_number) "
            "VALUES ($1, $2, $3, $4::json, $5, 'in', $6, 3, $7)",
            record_id,
            collection,
            key,
            orjson.dumps(data).decode(),
            f"h{record_id}",
            source_id,
            record_id,
        )


async def _resources(conn: asyncpg.Connection, collection: str) -> dict[str, dict[str, Any]]:
    columns = await columns_of(conn, collection)
    assert columns is not None
    rows = await conn.fetch(
        f'SELECT {selected(columns)} FROM ingest_data."{collection}" ORDER BY _id'
    )
    return {row["_key"]: to_resource(collection, columns, row) for row in rows}


async def test_records_move_into_typed_tables_and_back(database_url: str) -> None:
    name = f"{make_url(database_url).database}_records_move"
    url = await asyncio.to_thread(recreate_database, database_url, name)
    await asyncio.to_thread(migrate.upgrade, url, "0011")
    conn = await asyncpg.connect(url)
    try:
        await _insert_records(conn)
        await asyncio.to_thread(migrate.upgrade, url, "0012")

        assert await conn.fetchval("SELECT to_regclass('public.records')") is None
        people = await _resources(conn, "people")
        ada, alan, grace = people.values()
        assert (ada["id"], ada["content_hash"], ada["last_run_id"]) == (11, "h11", 3)
        assert ada["source_id"] is not None
        assert ada["data"] == FITS
        typed = await conn.fetchrow(
            "SELECT age, born, tags, _extra FROM ingest_data.people WHERE _key = $1",
            FITS["email"],
        )
        assert (typed["age"], typed["born"].isoformat(), typed["tags"]) == (
            36,
            "1815-12-10",
            ["math", "poetry"],
        )
        assert typed["_extra"] is None
        misfit = await conn.fetchrow(
            "SELECT name, age, tags, _extra FROM ingest_data.people WHERE _key = $1",
            MISFITS["email"],
        )
        assert (misfit["name"], misfit["age"], misfit["tags"]) == (None, None, None)
        assert orjson.loads(misfit["_extra"]) == {k: v for k, v in MISFITS.items() if k != "email"}
        assert alan["data"] == {**dict.fromkeys(PEOPLE["fields"]), **MISFITS}
        assert grace["data"] == {**dict.fromkeys(PEOPLE["fields"]), "email": "grace@example.com"}
        legacy = await _resources(conn, "legacy")
        assert legacy["k-1"]["data"] == ORPHAN and legacy["k-1"]["id"] == 20
        # New records are numbered after the moved ones; the title is indexed for markers.
        assert await conn.fetchval("SELECT nextval('public.record_ids')") == 21
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM pg_indexes WHERE schemaname = 'ingest_data' "
                "AND tablename = 'people' AND indexdef LIKE '%gin_trgm_ops%'"
            )
            == 1
        )
        assert await conn.fetchval("SELECT key FROM collections WHERE name = 'people'") == (
            '["email"]'
        )

        await asyncio.to_thread(migrate.downgrade, url, "0011")
        back = {
            row["id"]: (row["collection"], row["key"], orjson.loads(row["data"]))
            for row in await conn.fetch("SELECT * FROM records ORDER BY id")
        }
        assert back[11] == ("people", FITS["email"], {**FITS, "seen": "2026-01-02T03:04:05+00:00"})
        assert back[12][2] == {**dict.fromkeys(PEOPLE["fields"]), **MISFITS}
        assert back[20] == ("legacy", "k-1", ORPHAN)
        assert (
            await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'ingest_data'")
            == 0
        )
    finally:
        await conn.close()
        await asyncio.to_thread(migrate.downgrade, url, "base")
