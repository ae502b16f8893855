"""Records move from the shared JSON `records` table into their collections' typed tables.

Every importer's collection gets its table (made, or given the columns it lacks; importers in
id order, so the oldest decides a column's type), and so does a collection that has records
but no importer left (a table without field columns). Each record moves with its id, key,
hashes, source, last run and row, and times. A field's value goes into its column when the
column's type holds it as it is (a JSON string in a text column, an integral number in a
bigint one, an ISO date in a date one, ...); anything else — a field no column is named after,
a value its column's type does not take — is kept in the record's `_extra`, so nothing is
lost. Then `records` goes.

The downgrade puts every collection table's rows back into `records` (data: the field
columns and `_extra`) and drops the tables.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 09:00:00
"""

import hashlib
import json
import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.core.config import get_settings

log = logging.getLogger("alembic.runtime.migration")

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# What this revision's tables look like (frozen here: later code may make them differently).
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
SEQUENCE = "public.record_ids"
SYSTEM_COLUMNS = f"""
    "_id" bigint NOT NULL DEFAULT nextval('{SEQUENCE}') UNIQUE,
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

# A value `v` (jsonb) as a column of each type holds it, or NULL when it does not fit.
FITS = {
    "text": "CASE WHEN jsonb_typeof({v}) = 'string' THEN {v} #>> '{{}}' END",
    "bigint": (
        "CASE WHEN jsonb_typeof({v}) = 'number' AND ({v} #>> '{{}}') ~ '^-?[0-9]+$' "
        "AND ({v} #>> '{{}}')::numeric BETWEEN -9223372036854775808 AND 9223372036854775807 "
        "THEN ({v} #>> '{{}}')::bigint END"
    ),
    "double precision": (
        "CASE WHEN jsonb_typeof({v}) = 'number' AND abs(({v} #>> '{{}}')::numeric) < 1e308 "
        "THEN ({v} #>> '{{}}')::double precision END"
    ),
    "boolean": "CASE WHEN jsonb_typeof({v}) = 'boolean' THEN ({v})::boolean END",
    "date": "CASE WHEN jsonb_typeof({v}) = 'string' THEN pg_temp.ingest_date({v} #>> '{{}}') END",
    "timestamp with time zone": (
        "CASE WHEN jsonb_typeof({v}) = 'string' THEN pg_temp.ingest_moment({v} #>> '{{}}') END"
    ),
    "text[]": (
        "CASE WHEN jsonb_typeof({v}) = 'array' AND NOT EXISTS (SELECT FROM "
        "jsonb_array_elements({v}) e WHERE jsonb_typeof(e) <> 'string') "
        "THEN ARRAY(SELECT jsonb_array_elements_text({v})) END"
    ),
    "jsonb": "NULLIF({v}, 'null'::jsonb)",
}
# Dates and times as validation writes them (ISO 8601); naive times are UTC.
HELPERS = (
    r"""
CREATE FUNCTION pg_temp.ingest_date(s text) RETURNS date LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF s !~ '^\d{4}-\d{2}-\d{2}$' THEN RETURN NULL; END IF;
    RETURN s::date;
EXCEPTION WHEN others THEN RETURN NULL;
END $$""",
    r"""
CREATE FUNCTION pg_temp.ingest_moment(s text) RETURNS timestamptz LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF s !~ '^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}' THEN RETURN NULL; END IF;
    IF s ~ '([Zz]|[+-]\d{2}(:?\d{2})?)$' THEN RETURN s::timestamptz; END IF;
    RETURN s::timestamp AT TIME ZONE 'UTC';
EXCEPTION WHEN others THEN RETURN NULL;
END $$""",
)


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def upgrade() -> None:
    conn = op.get_bind()
    schema = get_settings().data_schema
    op.execute(f"CREATE SEQUENCE {SEQUENCE}")
    # Moved records keep their ids; new ones come after them.
    op.execute(
        f"SELECT setval('{SEQUENCE}', coalesce((SELECT max(id) FROM records), 0) + 1, false)"
    )
    op.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted(schema)}")
    for table in _tables(conn, schema):  # made by importers saved since 0011
        columns = _columns(conn, schema, table)
        if "_id" not in columns:
            op.execute(
                f"ALTER TABLE {quoted(schema)}.{quoted(table)} ADD COLUMN _id bigint NOT NULL "
                f"DEFAULT nextval('{SEQUENCE}') UNIQUE"
            )
        if "_extra" not in columns:
            op.execute(f"ALTER TABLE {quoted(schema)}.{quoted(table)} ADD COLUMN _extra jsonb")
    importers = conn.execute(sa.text("SELECT definition FROM importers ORDER BY id")).scalars()
    for definition in importers:
        _ensure(conn, schema, definition)
    for helper in HELPERS:
        op.execute(helper)
    collections = conn.execute(sa.text("SELECT DISTINCT collection FROM records")).scalars()
    for collection in list(collections):
        _ensure(conn, schema, {"collection": collection, "fields": {}})
        _move(conn, schema, collection)
    op.execute("DROP FUNCTION pg_temp.ingest_date(text), pg_temp.ingest_moment(text)")
    op.drop_table("records")


def _tables(conn: sa.Connection, schema: str) -> list[str]:
    return list(
        conn.execute(
            sa.text("SELECT tablename FROM pg_tables WHERE schemaname = :s ORDER BY tablename"),
            {"s": schema},
        ).scalars()
    )


def _columns(conn: sa.Connection, schema: str, table: str) -> dict[str, str]:
    rows = conn.execute(
        sa.text(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass(:t) AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum"
        ),
        {"t": f"{quoted(schema)}.{quoted(table)}"},
    ).all()
    return {name: kind for name, kind in rows}


def _ensure(conn: sa.Connection, schema: str, definition: dict) -> None:
    """The definition's table, made or given the field columns it lacks; a column of another
    type stays as it is (values it cannot hold go to `_extra`). The collection's key is
    recorded as importers record it."""
    collection = definition["collection"]
    table = f"{quoted(schema)}.{quoted(collection)}"
    wanted = {
        name: COLUMN_TYPES[spec.get("type", "string")]
        for name, spec in definition["fields"].items()
    }
    have = _columns(conn, schema, collection)
    if not have:
        fields = "".join(f",\n    {quoted(name)} {kind}" for name, kind in wanted.items())
        op.execute(f"CREATE TABLE {table} ({SYSTEM_COLUMNS}{fields})")
    for name, kind in wanted.items():
        if name not in have and have:
            op.execute(f"ALTER TABLE {table} ADD COLUMN {quoted(name)} {kind}")
        elif name in have and have[name] != kind:
            log.warning(
                "the field %s of the collection %s is %s; its column stays %s",
                name,
                collection,
                kind,
                have[name],
            )
    title = definition.get("title_field")
    if title is not None and _columns(conn, schema, collection).get(title) == "text":
        digest = hashlib.md5(f"{collection}\x1f{title}".encode()).hexdigest()[:16]
        index = quoted(f"{collection[:40]}_trgm_{digest}")
        op.execute(
            f"CREATE INDEX IF NOT EXISTS {index} ON {table} USING gin ({quoted(title)} "
            "gin_trgm_ops)"
        )
    if "action" in definition:
        key = None if definition["action"] == "append" else definition.get("key") or []
        conn.execute(
            sa.text(
                "INSERT INTO collections (name, key) VALUES (:name, CAST(:key AS jsonb)) "
                "ON CONFLICT (name) DO UPDATE SET key = EXCLUDED.key "
                "WHERE collections.key IS NULL"
            ),
            {"name": collection, "key": None if key is None else json.dumps(key)},
        )


def _move(conn: sa.Connection, schema: str, collection: str) -> None:
    fields = {
        name: kind
        for name, kind in _columns(conn, schema, collection).items()
        if name not in SYSTEM
    }
    names = list(fields)
    fits = [
        FITS[kind].format(v=f"(r.d -> CAST(:f{n} AS text))") + f" AS c{n}"
        for n, kind in enumerate(fields.values())
    ]
    # A value stays in `_extra` unless its column holds it; a JSON null needs no column.
    kept = "".join(
        f" WHEN CAST(:f{n} AS text) THEN f.c{n} IS NULL AND e.value <> 'null'::jsonb"
        for n in range(len(names))
    )
    extra = (
        "(SELECT jsonb_object_agg(e.key, e.value) FROM jsonb_each(r.d) e WHERE "
        + (f"CASE e.key{kept} ELSE true END" if names else "true")
        + ")"
    )
    targets = ", ".join([*SYSTEM, *(quoted(name) for name in names)])
    values = "".join(f", f.c{n}" for n in range(len(names)))
    statement = f"""
INSERT INTO {quoted(schema)}.{quoted(collection)} ({targets})
SELECT r.id, r.key, r.content_hash, r.input_hash, r.source_id, r.last_run_id,
       r.last_row_number, r.created_at, r.updated_at, {extra}{values}
FROM (SELECT *, data::jsonb AS d FROM records WHERE collection = :collection) r
CROSS JOIN LATERAL (SELECT {", ".join(fits) or "NULL"}) f
"""
    params = {"collection": collection, **{f"f{n}": name for n, name in enumerate(names)}}
    moved = conn.execute(sa.text(statement), params).rowcount
    log.info("moved %d records of %s into %s.%s", moved, collection, schema, collection)


def downgrade() -> None:
    conn = op.get_bind()
    schema = get_settings().data_schema
    op.execute(
        """
CREATE TABLE records (
    id bigserial PRIMARY KEY,
    collection varchar(100) COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    data json NOT NULL,
    content_hash varchar(32) NOT NULL,
    source_id integer CONSTRAINT fk_records_source_id_sources REFERENCES sources (id)
        ON DELETE SET NULL,
    last_run_id integer,
    last_row_number integer,
    created_at timestamp with time zone NOT NULL DEFAULT now(),
    updated_at timestamp with time zone NOT NULL DEFAULT now(),
    input_hash varchar(32)
)"""
    )
    op.execute("CREATE UNIQUE INDEX uq_records_collection_key ON records (collection, key)")
    system = ", ".join(f"'{name}'" for name in SYSTEM)
    for table in _tables(conn, schema):
        conn.execute(
            sa.text(
                f"""
INSERT INTO records (id, collection, key, data, content_hash, source_id, last_run_id,
                     last_row_number, created_at, updated_at, input_hash)
SELECT t._id, CAST(:collection AS text), t._key,
       ((to_jsonb(t) - ARRAY[{system}]) || coalesce(t._extra, '{{}}'::jsonb))::json,
       t._content_hash, t._source_id, t._last_run_id, t._last_row_number, t._created_at,
       t._updated_at, t._input_hash
FROM {quoted(schema)}.{quoted(table)} t
"""
            ),
            {"collection": table},
        )
        op.execute(f"DROP TABLE {quoted(schema)}.{quoted(table)}")
    op.execute(
        "SELECT setval('records_id_seq', coalesce((SELECT max(id) FROM records), 0) + 1, false)"
    )
    op.execute(f"DROP SEQUENCE {SEQUENCE}")
