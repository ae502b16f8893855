"""Typed collection tables: each collection is a table of its own, one typed column per field.

The tables live in a schema of their own (`INGEST_DATA_SCHEMA`, default `ingest_data`), named
after the collection, so that SQL reads them as any table: `SELECT name FROM
ingest_data.users WHERE age > 30`. The service's own columns share one prefix (`_key`,
`_content_hash`, ...); field names may not start with it.

A table is made when the first importer names its collection and follows its importers'
definitions as they change: a new field adds a nullable column; a removed field keeps its
column (and its data); a field whose type a column already holds (an integer in a `double
precision` column) changes nothing; a column that can be cast without loss to a wider type
(integer to number, date to datetime, a scalar to text) is widened. Anything else, and a key
other than the collection's, is refused (409) when the importer is saved, saying what
conflicts. Importers sharing a collection must agree on its key, which the `collections`
table keeps.
"""

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import get_settings
from app.core.errors import Conflict
from app.importers.schemas import ImporterDefinition

# Field type -> column type, as Postgres names it (format_type).
COLUMN_TYPES = {
    "string": "text",
    "email": "text",
    "url": "text",
    "integer": "bigint",
    "number": "double precision",
    "boolean": "boolean",
    "date": "date",
    "datetime": "timestamp with time zone",
    "list": "text[]",
    "json": "jsonb",
}
_SCALARS = ("bigint", "double precision", "boolean", "date", "timestamp with time zone")
# (narrower, wider): every value of the first casts to the second without loss.
_WIDENS = {
    ("bigint", "double precision"),
    ("date", "timestamp with time zone"),
    *((scalar, "text") for scalar in _SCALARS),
}

# Record ids come from one sequence, so that an id names one record whatever its collection
# (items link the record they became, duplicate markers the records they match).
RECORD_IDS = "public.record_ids"

SYSTEM_COLUMNS = f"""
    "_id" bigint NOT NULL DEFAULT nextval('{RECORD_IDS}') UNIQUE,
    "_key" text COLLATE "C" PRIMARY KEY,
    "_content_hash" text NOT NULL,
    "_input_hash" text,
    "_source_id" integer REFERENCES public.sources (id) ON DELETE SET NULL,
    "_last_run_id" bigint,
    "_last_row_number" bigint,
    "_created_at" timestamp with time zone NOT NULL DEFAULT now(),
    "_updated_at" timestamp with time zone NOT NULL DEFAULT now(),
    "_extra" jsonb
"""
# `_extra`: values a column could not hold, by field (records moved from the old JSON store
# whose data did not fit the fields, or promoted items whose data has fields the table has
# not). Null for a record that fits.
SYSTEM = (
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
)


def quoted(name: str) -> str:
    """An identifier for SQL. Collection and field names are validated when a definition is
    parsed (no NUL, at most 63 bytes); a double quote is doubled."""
    return '"' + name.replace('"', '""') + '"'


def table_name(collection: str, schema: str | None = None) -> str:
    """The collection's table, schema-qualified and quoted."""
    return f"{quoted(schema or get_settings().data_schema)}.{quoted(collection)}"


@dataclass(frozen=True)
class Change:
    """One step that brings a table to a definition: a column to add or to widen."""

    column: str
    type: str
    widen: bool  # False: add the column


def changes(columns: dict[str, str], definition: ImporterDefinition) -> list[Change]:
    """What the table with `columns` (name -> type) needs to hold the definition's fields;
    Conflict for a field whose column can neither hold its values nor be widened to."""
    needed: list[Change] = []
    for name, spec in definition.fields.items():
        wanted = COLUMN_TYPES[spec.type]
        have = columns.get(name)
        if have is None:
            needed.append(Change(name, wanted, widen=False))
        elif have == wanted or (wanted, have) in _WIDENS:
            continue  # the column holds the field's values as it is
        elif (have, wanted) in _WIDENS:
            needed.append(Change(name, wanted, widen=True))
        else:
            raise Conflict(
                f"The field {name} is {spec.type}, but the column {name} of the collection "
                f"{definition.collection} is {have}, which cannot be cast to {wanted} "
                "without loss. Give the field another name, or keep its type."
            )
    return needed


async def ensure_table(session: AsyncSession, definition: ImporterDefinition) -> None:
    """Make or evolve the definition's collection table, in the session's transaction (the
    importer is saved with it, or neither is)."""
    schema, collection = get_settings().data_schema, definition.collection
    # One importer at a time changes a collection: two first importers race to create it.
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtext('ingest.collection'), hashtext(:name))"),
        {"name": collection},
    )
    key = None if definition.action == "append" else list(definition.key)
    await _check_key(session, collection, key)
    columns = await _columns(session, schema, collection)
    table = table_name(collection, schema)
    if columns is None:
        await session.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quoted(schema)}"))
        fields = "".join(
            f",\n    {quoted(name)} {COLUMN_TYPES[spec.type]}"
            for name, spec in definition.fields.items()
        )
        await session.execute(text(f"CREATE TABLE {table} ({SYSTEM_COLUMNS}{fields})"))
        await _index_title(session, definition, table)
        return
    for change in changes(columns, definition):
        column = quoted(change.column)
        if change.widen:
            await session.execute(
                text(
                    f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {change.type} "
                    f"USING {column}::{change.type}"
                )
            )
        else:
            await session.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {change.type}"))
    await _index_title(session, definition, table)


def title_index(collection: str, column: str) -> str:
    """The trigram index of a title column: named by a digest, as names are limited to 63
    bytes."""
    digest = hashlib.md5(f"{collection}\x1f{column}".encode()).hexdigest()[:16]
    return quoted(f"{collection[:40]}_trgm_{digest}")


async def _index_title(session: AsyncSession, definition: ImporterDefinition, table: str) -> None:
    """A trigram index on the title field's column: near-duplicate markers compare an item's
    title with the collection's records by it."""
    title = definition.title_field
    if title is None or COLUMN_TYPES[definition.fields[title].type] != "text":
        return
    name = title_index(definition.collection, title)
    await session.execute(
        text(
            f"CREATE INDEX IF NOT EXISTS {name} ON {table} USING gin ({quoted(title)} gin_trgm_ops)"
        )
    )


async def _check_key(session: AsyncSession, collection: str, key: list[str] | None) -> None:
    """Record the collection's key, or refuse one that differs. An `append` importer (key
    None) generates its records' keys, so it agrees with any key."""
    stored = await session.execute(
        text("SELECT key FROM collections WHERE name = :name"), {"name": collection}
    )
    row = stored.first()
    if row is None:
        await session.execute(
            text("INSERT INTO collections (name, key) VALUES (:name, CAST(:key AS jsonb))"),
            {"name": collection, "key": _json_list(key)},
        )
        return
    have: list[str] | None = row[0]
    if key is None or have == key:
        return
    if have is None:
        await session.execute(
            text("UPDATE collections SET key = CAST(:key AS jsonb) WHERE name = :name"),
            {"name": collection, "key": _json_list(key)},
        )
        return
    raise Conflict(
        f"The collection {collection} is keyed by {', '.join(have)}; this importer's key "
        f"is {', '.join(key)}. Importers that share a collection must agree on its key."
    )


def _json_list(values: list[str] | None) -> str | None:
    return None if values is None else orjson.dumps(values).decode()


async def _columns(session: AsyncSession, schema: str, collection: str) -> dict[str, str] | None:
    """The table's columns (name -> type), or None when it does not exist."""
    found = await session.execute(
        text(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
            "AND NOT a.attisdropped "
            "WHERE n.nspname = :schema AND c.relname = :name AND c.relkind = 'r'"
        ),
        {"schema": schema, "name": collection},
    )
    rows: list[Any] = list(found.all())
    if not rows:
        return None
    return {name: kind for name, kind in rows if name is not None}
