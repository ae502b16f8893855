"""Values travel to a collection table as text (app.records.store.copy_text): by COPY ... CSV
for new records and by the upsert for the rest. Every value a column holds, the awkward ones
included, reads back as it was written, either way."""

import math
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import asyncpg
import orjson
from sqlalchemy.engine import make_url

from app.core.config import Settings
from app.records.store import CSV_ROWS, Table, Write
from app.records.tables import SYSTEM_COLUMNS

AWKWARD_TEXT = [
    "",
    "a,b",
    'q"uote',
    "line\nbreak",
    "cr\rand\r\n",
    "\\.",
    "back\\slash",
    " spaced ",
    "tab\there",
    "NULL",
    "\\N",
    "é😀",
]
COLUMNS = {
    "t": "text",
    "i": "bigint",
    "d": "double precision",
    "b": "boolean",
    "day": "date",
    "at": "timestamp with time zone",
    "tags": "text[]",
    "doc": "jsonb",
}
VALUES: dict[str, list[Any]] = {
    "t": [*AWKWARD_TEXT, None],
    "i": [0, -(2**63), 2**63 - 1, None],
    "d": [0.1, 1e300, 5e-324, 1e-7, 123456789.12345679, -0.0, math.inf, None],
    "b": [True, False, None],
    "day": [date(1, 1, 1), date(9999, 12, 31), None],
    "at": [
        datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(1, 1, 1, tzinfo=UTC),
        None,
    ],
    "tags": [[], [""], ["a,b", 'q"u', "b\\s", "{x}", "NULL", " sp ", "é"], None],
    "doc": [{"a": [1, 'x"y'], "b": None}, "text", [], None],
}
ROWS = max(len(values) for values in VALUES.values())


def record(n: int) -> dict[str, Any]:
    return {name: values[n % len(values)] for name, values in VALUES.items()}


def read_back(row: asyncpg.Record) -> dict[str, Any]:
    data = {name: row[name] for name in COLUMNS}
    if data["doc"] is not None:
        data["doc"] = orjson.loads(data["doc"])
    return data


async def test_every_value_reads_back_as_written_by_copy_and_by_upsert(
    settings: Settings,
) -> None:
    url = make_url(settings.require_database_url()).set(drivername="postgresql")
    conn = await asyncpg.connect(url.render_as_string(hide_password=False))
    columns = "".join(f", {name} {kind}" for name, kind in COLUMNS.items())
    table = Table("awkward", dict(COLUMNS), list(COLUMNS))
    wanted = {f"k{n}": record(n) for n in range(ROWS)}
    try:
        await conn.execute(f"CREATE TABLE ingest_data.awkward ({SYSTEM_COLUMNS}{columns})")
        for run, new in ((1, list(wanted)), (2, [])):  # by COPY, then all by the upsert
            writes = {
                key: Write(data, f"h{run}", n, None)
                for n, (key, data) in enumerate(reversed(wanted.items()), 1)
            }
            async with conn.transaction():
                await table.write(conn, None, run, writes, new)
            rows = await conn.fetch("SELECT * FROM ingest_data.awkward")
            assert {row["_key"] for row in rows} == set(wanted)
            assert {row["_last_run_id"] for row in rows} == {run}
            for row in rows:
                expected = wanted[row["_key"]]
                assert read_back(row) == expected, row["_key"]
                if expected["d"] == 0.0:  # -0.0 keeps its sign
                    assert math.copysign(1, row["d"]) == math.copysign(1, expected["d"])
    finally:
        await conn.close()


async def test_a_batch_of_many_parts_copies_every_record(settings: Settings) -> None:
    """A batch longer than a part of the COPY's CSV (CSV_ROWS) goes in whole, in order."""
    url = make_url(settings.require_database_url()).set(drivername="postgresql")
    conn = await asyncpg.connect(url.render_as_string(hide_password=False))
    table = Table("many", {"t": "text"}, ["t"])
    count = 2 * CSV_ROWS + 1
    writes = {f"k{n}": Write({"t": f"line\n{n}"}, "h", n, None) for n in range(count)}
    try:
        await conn.execute(f"CREATE TABLE ingest_data.many ({SYSTEM_COLUMNS}, t text)")
        async with conn.transaction():
            await table.write(conn, None, 1, writes, list(writes))
        rows = await conn.fetch("SELECT _key, _last_row_number, t FROM ingest_data.many")
        assert sorted((r["_last_row_number"], r["_key"], r["t"]) for r in rows) == [
            (n, f"k{n}", f"line\n{n}") for n in range(count)
        ]
    finally:
        await conn.close()
