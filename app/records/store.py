"""The records store: each collection's typed table (app.records.tables), written by the
pipeline's chunks and by review promotion, read by both and by the records API.

Values arrive as validation makes them (ISO text for dates and times, lists, JSON values) and
are converted to what the column holds. A value a column cannot hold — a field the table
has no column for, or a value its column's type does not take — is kept in the record's
`_extra` instead of being dropped. Naive times are UTC.

Every statement runs on the caller's asyncpg connection, inside its transaction.
"""

import hashlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, NamedTuple

import asyncpg
import orjson
import polars as pl

from app.core.config import get_settings
from app.core.errors import Conflict
from app.core.timefmt import iso
from app.records.tables import SYSTEM, quoted, table_name


@dataclass(slots=True)
class Known:
    """What a chunk needs of an existing record."""

    hash: str
    compare: Any
    input_hash: str | None = None
    # The source the record belongs to: a run of another source may not change it.
    source_id: int | None = None


class Write(NamedTuple):
    """One record to write: its data (field -> validated value), content hash, the row that
    wrote it and that row's input hash."""

    data: Mapping[str, Any]
    hash: str
    row_number: int
    input_hash: str | None


Writes = dict[str, Write]


# Records per part of a COPY's CSV (about 1 MB of the bench's users).
CSV_ROWS = 5000


@dataclass(slots=True)
class Batch:
    """Records to write: a list per system column (keys, content and input hashes, the rows
    that wrote them), `values` those of a table's `fields` (a column per field, in order,
    whose CSV text Postgres reads as them: `copy_column`), and `extras` what no column
    holds, as JSON (None: nothing, in every record)."""

    keys: list[str]
    hashes: list[str]
    input_hashes: list[str | None]
    row_numbers: list[int]
    values: pl.DataFrame
    extras: list[str | None] | None = None

    def take(self, rows: Sequence[int]) -> "Batch":
        """The batch of records at positions `rows`."""
        return Batch(
            [self.keys[i] for i in rows],
            [self.hashes[i] for i in rows],
            [self.input_hashes[i] for i in rows],
            [self.row_numbers[i] for i in rows],
            self.values[list(rows)] if self.values.width else self.values,
            None if self.extras is None else [self.extras[i] for i in rows],
        )

    async def csv(self, source_id: int | None, run_id: int | None) -> AsyncIterator[bytes]:
        """The records as COPY ... CSV reads them: the system columns of `_WRITTEN`, then
        the fields (an unquoted empty field is NULL, a quoted one empty text), written a
        part of CSV_ROWS records at a time (a whole chunk's CSV at once, and polars' buffer
        for it, took tens of MB more of a worker's memory)."""
        height = len(self.keys)
        extras = self.extras if self.extras is not None else [None] * height
        columns = (
            pl.Series(self.keys, dtype=pl.String),
            pl.Series(self.hashes, dtype=pl.String),
            pl.Series(self.input_hashes, dtype=pl.String),
            pl.repeat(source_id, height, dtype=pl.Int32, eager=True),
            pl.repeat(run_id, height, dtype=pl.Int64, eager=True),
            pl.Series(self.row_numbers, dtype=pl.Int64),
            pl.Series(extras, dtype=pl.String),
        )
        records = pl.DataFrame(dict(zip(_WRITTEN, columns, strict=True))).hstack(self.values)
        for start in range(0, height, CSV_ROWS):
            yield records.slice(start, CSV_ROWS).write_csv(include_header=False).encode()


def canonical(data: Mapping[str, Any]) -> tuple[bytes, str]:
    """The data's JSON with sorted keys, and its MD5, the content hash: a record with other
    content has another."""
    blob = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    return blob, hashlib.md5(blob).hexdigest()


def content_hash(data: Mapping[str, Any]) -> str:
    return canonical(data)[1]


# Postgres text (and jsonb) cannot hold NUL: a record's data must not contain one.
NUL = b"\\u0000"


def nul_errors(data: Mapping[str, Any]) -> dict[str, list[str]]:
    """The fields whose value holds a NUL character (its JSON shows NUL in `blob`)."""
    return {
        field: [f"The {field} must not contain NUL characters."]
        for field, value in data.items()
        if NUL in orjson.dumps(value)
    }


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _text(value: Any) -> str:
    if type(value) is not str:
        raise TypeError("not text")
    return value


def _datetime(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _date(value: Any) -> date:
    if isinstance(value, datetime):
        raise TypeError("a time is not a date")
    return value if isinstance(value, date) else date.fromisoformat(value)


def _integer(value: Any) -> int:
    if type(value) is not int:
        raise TypeError("not an integer")
    return value


def _number(value: Any) -> float:
    if type(value) is not int and type(value) is not float:
        raise TypeError("not a number")
    return float(value)


def _boolean(value: Any) -> bool:
    if type(value) is not bool:
        raise TypeError("not a boolean")
    return value


def _list(value: Any) -> list[str]:
    # A list of other values (numbers, objects) keeps its types in `_extra`.
    if type(value) is not list or not all(type(element) is str for element in value):
        raise TypeError("not a list of text")
    return value


# Column type -> a value as asyncpg sends it to that column (TypeError/ValueError: it cannot).
_CONVERT: dict[str, Callable[[Any], Any]] = {
    "text": _text,
    "bigint": _integer,
    "double precision": _number,
    "boolean": _boolean,
    "date": _date,
    "timestamp with time zone": _datetime,
    "text[]": _list,
    "jsonb": _json_text,
}


def column_value(kind: str, value: Any) -> Any:
    """A validated value as a column of type `kind` holds it (TypeError or ValueError when
    it cannot)."""
    return _CONVERT[kind](value)


_EXACT: dict[str, type] = {"text": str, "bigint": int, "double precision": float, "boolean": bool}


def _array_text(values: list[str]) -> str:
    quoted = ('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    return "{" + ",".join(quoted) + "}"


# Column type -> a value as its column holds it (column_value) as Postgres reads it from text:
# what a COPY ... CSV of the records and the upsert send. A double's repr reads back as the
# same double.
_TEXT: dict[str, Callable[[Any], str]] = {
    "text": str,
    "bigint": str,
    "double precision": repr,
    "boolean": lambda value: "true" if value else "false",
    "date": date.isoformat,
    "timestamp with time zone": datetime.isoformat,
    "text[]": _array_text,
    "jsonb": str,  # JSON text already
}


def copy_text(kind: str, value: Any) -> str | None:
    """A value as a column of type `kind` holds it (column_value), as Postgres reads it."""
    return None if value is None else _TEXT[kind](value)


# An array element between double quotes: a backslash before each quote and backslash.
_ARRAY_ELEMENT = pl.lit('"') + pl.element().str.replace_all(r'(["\\])', r"\$1") + pl.lit('"')


# Column types whose values polars writes in CSV as Postgres reads them: a double's shortest
# text that reads back as it, true and false, ISO dates.
_AS_POLARS_WRITES = {
    "text": pl.String,
    "jsonb": pl.String,
    "bigint": pl.Int64,
    "double precision": pl.Float64,
    "boolean": pl.Boolean,
    "date": pl.Date,
}


def copy_column(values: pl.Series, kind: str) -> pl.Series:
    """A polars column of values as a column of type `kind` holds them (text, integers,
    doubles, booleans, dates, lists of text, or nulls) as one whose CSV text Postgres reads
    as them (`copy_text`'s): itself, or its text."""
    if values.dtype == _AS_POLARS_WRITES.get(kind):
        return values
    if kind == "text[]" and values.dtype != pl.Null:
        array = pl.lit("{") + pl.col("v").list.eval(_ARRAY_ELEMENT).list.join(",") + pl.lit("}")
        return values.to_frame("v").select(array).to_series()
    return values.cast(pl.String)


async def columns_of(conn: asyncpg.Connection, collection: str) -> dict[str, str] | None:
    """The collection table's field columns (name -> type, in table order), or None when the
    collection has no table."""
    rows = await conn.fetch(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY a.attnum",
        table_name(collection, get_settings().data_schema),
    )
    if not rows:
        return None
    return {name: kind for name, kind in rows if name not in SYSTEM}


def selected(columns: Mapping[str, str]) -> str:
    """The select list of a collection table's rows: its system columns and the field
    `columns`, each cast to its type. A connection keeps its prepared statements, and one
    whose row type changed since (a column added or widened by an importer) cannot run in a
    transaction: with the types in its text, a changed table makes another statement."""
    fields = (f"{quoted(name)}::{kind} AS {quoted(name)}" for name, kind in columns.items())
    return ", ".join([*SYSTEM, *fields])


class Table:
    """A collection's table as one transaction writes it: `fields` are the columns written
    (the importer's fields), `columns` every field column the table has (columns_of)."""

    def __init__(self, collection: str, columns: dict[str, str], fields: Iterable[str]) -> None:
        self.collection = collection
        self.name = table_name(collection, get_settings().data_schema)
        self.columns = columns
        self.fields = [field for field in fields if field in columns]
        self._written = frozenset(self.fields)
        # Per field: the type a value has that its column takes as it is, and the conversion
        # of any other (the common case costs one type check).
        self._plan = [
            (field, _EXACT.get(columns[field]), _CONVERT[columns[field]]) for field in self.fields
        ]

    @classmethod
    async def load(
        cls, conn: asyncpg.Connection, collection: str, fields: Iterable[str]
    ) -> "Table":
        columns = await columns_of(conn, collection)
        if columns is None:
            raise Conflict(
                f"The collection {collection} has no table: save an importer for it first."
            )
        return cls(collection, columns, fields)

    def value(self, field: str, value: Any) -> Any:
        """A value as its column holds it (None when it cannot)."""
        if value is None or field not in self.columns:
            return None
        try:
            return _CONVERT[self.columns[field]](value)
        except (TypeError, ValueError, OverflowError):
            return None

    def _row(self, data: Mapping[str, Any]) -> tuple[list[Any], str | None]:
        """The data's values for `fields`, and what none can hold (as JSON, or None)."""
        values: list[Any] = []
        extra: dict[str, Any] = {}
        for field, exact, convert in self._plan:
            value = data.get(field)
            if value is not None and type(value) is not exact:
                try:
                    value = convert(value)
                except (TypeError, ValueError, OverflowError):
                    extra[field] = value
                    value = None
            values.append(value)
        if not self._written.issuperset(data):
            extra.update((k, v) for k, v in data.items() if k not in self.columns)
        return values, (_json_text(extra) if extra else None)

    async def known(
        self, conn: asyncpg.Connection, keys: Sequence[str], compare: str | None = None
    ) -> dict[str, Known]:
        """The existing records of `keys`; `compare` names a field whose value they carry.
        A key holding NUL names no record: Postgres text cannot hold one (its row fails)."""
        keys = [key for key in keys if "\x00" not in key]
        if not keys:
            return {}
        column = "NULL"
        if compare is not None and compare in self.columns:  # typed: see selected()
            column = f"{quoted(compare)}::{self.columns[compare]}"
        rows = await conn.fetch(
            f"SELECT _key, _content_hash, _input_hash, _source_id, {column} FROM {self.name} "
            "WHERE _key = ANY($1::text[])",
            keys,
        )
        return {
            key: Known(digest, value, given, source) for key, digest, given, source, value in rows
        }

    async def write(
        self,
        conn: asyncpg.Connection,
        source_id: int | None,
        run_id: int | None,
        writes: Writes,
        new: Iterable[str] = (),
    ) -> None:
        """Write records: those of `new` keys (none had a record when the chunk looked) by
        COPY, which costs Postgres a third less than INSERT ... ON CONFLICT, then the rest by
        one upsert (`write_batch`)."""
        keys, hashes, input_hashes, row_numbers, extras = [], [], [], [], []
        texts: list[list[str | None]] = [[] for _ in self.fields]
        kinds = [self.columns[field] for field in self.fields]
        for key, write in writes.items():
            values, extra = self._row(write.data)
            keys.append(key)
            hashes.append(write.hash)
            input_hashes.append(write.input_hash)
            row_numbers.append(write.row_number)
            extras.append(extra)
            for column, kind, value in zip(texts, kinds, values, strict=True):
                column.append(copy_text(kind, value))
        frame = pl.DataFrame(texts, schema=dict.fromkeys(self.fields, pl.String), orient="col")
        batch = Batch(keys, hashes, input_hashes, row_numbers, frame, extras)
        fresh = set(new)
        created = [i for i, key in enumerate(batch.keys) if key in fresh]
        await self.write_batch(conn, source_id, run_id, batch, created)

    async def write_batch(
        self,
        conn: asyncpg.Connection,
        source_id: int | None,
        run_id: int | None,
        batch: "Batch",
        new: list[int],
    ) -> None:
        """Write a batch of records whose values are as their columns hold them: rows `new`
        (positions in the batch; no record had their keys when the chunk looked) by COPY,
        the rest by one upsert. If a concurrent chunk or run created one of the new keys
        meanwhile, the COPY fails whole (under a savepoint) and every record goes through the
        upsert."""
        rest = batch
        if new:
            # (A first upload's chunk: every record is new, none to take apart.)
            created = batch if len(new) == len(batch.keys) else batch.take(new)
            await conn.execute("SAVEPOINT new_records")
            try:
                await conn.copy_to_table(
                    self.collection,
                    schema_name=get_settings().data_schema,
                    columns=[*_WRITTEN, *self.fields],
                    source=created.csv(source_id, run_id),
                    format="csv",
                )
            except asyncpg.UniqueViolationError:
                await conn.execute("ROLLBACK TO SAVEPOINT new_records")
            else:
                await conn.execute("RELEASE SAVEPOINT new_records")
                done = set(new)
                rest = batch.take([i for i in range(len(batch.keys)) if i not in done])
        await self._upsert(conn, source_id, run_id, rest)

    async def _upsert(
        self, conn: asyncpg.Connection, source_id: int | None, run_id: int | None, batch: "Batch"
    ) -> None:
        if not batch.keys:
            return
        await conn.execute(
            self._upsert_sql(),
            source_id,
            run_id,
            batch.keys,
            batch.hashes,
            batch.input_hashes,
            batch.row_numbers,
            batch.extras if batch.extras is not None else [None] * len(batch.keys),
            *(values.cast(pl.String).to_list() for values in batch.values.get_columns()),
        )

    def _upsert_sql(self) -> str:
        fields = [quoted(field) for field in self.fields]
        kinds = [self.columns[field] for field in self.fields]
        # Every field travels as text, read as its column's type (copy_text).
        arrays = ", ".join(f"${position + 8}::text[]" for position in range(len(kinds)))
        selected = ", ".join(
            f"t.f{n}" if kind == "text" else f"t.f{n}::{kind}" for n, kind in enumerate(kinds)
        )
        aliases = "".join(f", f{n}" for n in range(len(kinds)))
        updates = "".join(f", {field} = EXCLUDED.{field}" for field in fields)
        return f"""
INSERT INTO {self.name} AS r ({", ".join([*_WRITTEN, *fields])})
SELECT t.key, t.hash, t.input_hash, $1::int, $2::bigint, t.row_number, t.extra
       {", " + selected if selected else ""}
FROM unnest($3::text[], $4::text[], $5::text[], $6::bigint[], $7::jsonb[]
            {", " + arrays if arrays else ""})
    AS t(key, hash, input_hash, row_number, extra{aliases})
ON CONFLICT (_key) DO UPDATE
SET _content_hash = EXCLUDED._content_hash, _input_hash = EXCLUDED._input_hash,
    _source_id = coalesce(EXCLUDED._source_id, r._source_id),
    _last_run_id = EXCLUDED._last_run_id, _last_row_number = EXCLUDED._last_row_number,
    _extra = EXCLUDED._extra{updates},
    _updated_at = CASE WHEN r._content_hash = EXCLUDED._content_hash THEN r._updated_at
                       ELSE now() END
-- Within one run a later row wins, whatever order concurrent chunks commit in.
WHERE (r._last_run_id IS DISTINCT FROM EXCLUDED._last_run_id
       OR r._last_row_number < EXCLUDED._last_row_number)
  -- A write for a source never changes another source's record (the plan fails such rows;
  -- this holds should one be created between the plan and the write).
  AND ($1::int IS NULL OR r._source_id = $1::int)
"""

    async def touch(
        self, conn: asyncpg.Connection, keys: list[str], source_id: int | None, run_id: int
    ) -> None:
        """Mark records as seen by the run (``replace`` keeps them)."""
        await conn.execute(
            f"UPDATE {self.name} SET _last_run_id = $1 WHERE _key = ANY($2::text[]) "
            "AND ($3::int IS NULL OR _source_id = $3::int)",
            run_id,
            keys,
            source_id,
        )


# The system columns a write sets (the rest have defaults), in the order the COPY rows and
# the upsert give them.
_WRITTEN = tuple(c for c in SYSTEM if c not in ("_id", "_created_at", "_updated_at"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):  # as validation writes an aware time, in UTC
        return value.astimezone(UTC).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return value


def _json_value(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def to_resource(
    collection: str, columns: Mapping[str, str], row: Mapping[str, Any]
) -> dict[str, Any]:
    """A table row (of a table whose field `columns` are given) as the records API shows it:
    the fields under `data` (with whatever `_extra` kept), the system columns beside."""
    data = {
        name: _json_value(value) if kind == "jsonb" and value is not None else _jsonable(value)
        for name, kind in columns.items()
        for value in (row[name],)
    }
    extra = row["_extra"]
    if extra:
        data.update(_json_value(extra))
    return {
        "id": row["_id"],
        "collection": collection,
        "key": row["_key"],
        "data": data,
        "content_hash": row["_content_hash"],
        "source_id": row["_source_id"],
        "last_run_id": row["_last_run_id"],
        "created_at": iso(row["_created_at"]),
        "updated_at": iso(row["_updated_at"]),
    }
