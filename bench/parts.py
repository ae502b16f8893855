"""Where a row's time goes: the pipeline's steps run in this process, one at a time, and
Postgres' work per statement, as the backend's CPU time per row.

`make bench` measures the whole path; this splits it, to see what a change could gain.
The steps are the pipeline's own functions, applied chunk by chunk to the users CSV of
`make bench`; each figure is the best of a few passes. Postgres CPU is read from the
backend process, so it needs a server on this machine (else only wall time is shown).

    python -m bench.parts [--rows 100000]
"""

import argparse
import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from bench.data import users_csv
from bench.run import definition, fresh_database, postgres_server

DB_NAME = "ingest_parts"
PASSES = 5


def best_of(step: Callable[[], object], rows: int) -> float:
    """CPU microseconds per row of `step`, best of PASSES."""
    best = float("inf")
    for _ in range(PASSES):
        start = time.process_time()
        step()
        best = min(best, time.process_time() - start)
    return best / rows * 1e6


def python_steps(path: Path) -> tuple[list[tuple[str, float]], list[Any], list[Any]]:
    """Per-row CPU of each step, and the first upload's and the re-upload's plans."""
    from app.importers.schemas import ImporterDefinition
    from app.pipeline import frames
    from app.pipeline.prepare import ChunkValidator
    from app.pipeline.readers.csv_reader import CsvSlice, open_csv, parse_slice
    from app.pipeline.splitter import Splitter
    from app.pipeline.writer import plan_chunk, plan_frame, validate_frame
    from app.records.store import Known, canonical

    importer = ImporterDefinition.model_validate(definition("parts", "all", 1000))
    with open_csv(path) as table:
        columns, start, layout = table.columns, table.position, (table.codec, table.delimiter)
        assert start is not None
        every = [end for end, _ in table.row_ends()]
    ends = every[999::1000]
    spans = list(zip([start, *ends[:-1]], ends, strict=True))
    rows = len(spans) * 1000

    def split() -> None:
        with open_csv(path) as table:
            splitter, batch = Splitter(importer, table.columns), []
            for _, cells in table.row_ends():
                batch.append(cells if cells is not None and len(cells) == len(columns) else None)
                if len(batch) == 1000:
                    splitter.duplicates_of(batch)
                    batch = []

    content = path.read_bytes()

    def read() -> list[list[Any]]:
        """As a chunk job parses the byte range it read (app.pipeline.ranges)."""
        chunks = []
        for first, (begin, end) in zip(range(1, rows, 1000), spans, strict=True):
            part = CsvSlice(*layout, begin, end)
            cells = parse_slice(
                content[begin:end], columns, part, at_end=False, breaks_before=lambda: 0
            )
            chunks.append(
                [(first + i, data, error, False) for i, (data, error) in enumerate(cells)]
            )
        return chunks

    chunks = read()
    validator = ChunkValidator(importer, columns)
    keyed = [validator.keys(raws) for raws in chunks]
    checked = [validator.validate(raws, k, {}) for raws, k in zip(chunks, keyed, strict=True)]

    def plans(known: list[dict[str, Any]]) -> list[Any]:
        made = []
        for raws, keys, existing in zip(chunks, keyed, known, strict=True):
            valid, unchanged = validator.validate(raws, keys, existing)
            made.append(
                plan_chunk(
                    valid,
                    importer,
                    {},
                    run_id=1,
                    stage=False,
                    log_all=True,
                    copy_originals=False,
                    unchanged=unchanged,
                    columns=columns,
                )
            )
        return made

    stored = [
        {r.key: Known(canonical(r.data)[1], None, r.input_hash) for r in valid if r.data}
        for valid, _ in checked
    ]
    nothing: list[dict[str, Any]] = [{} for _ in chunks]

    def validate() -> None:
        for raws, keys in zip(chunks, keyed, strict=True):
            validator.validate(raws, keys, {})

    def columnar(size: int, *, again: bool = False) -> Callable[[], None]:
        """A chunk job's columnar path (app.pipeline.frames): parse, validate, plan; `again`:
        as an unchanged re-upload, every record there as the rows would write it."""
        cuts = every[size - 1 : rows : size]
        ranges = list(zip([start, *cuts[:-1]], cuts, strict=True))
        checker = validator.frames
        assert checker is not None
        parsed = [frames.read(content[b:e], columns, layout[1], layout[0]) for b, e in ranges]
        known: list[dict[str, Known]] = [{} for _ in ranges]
        if again:  # the records as the first upload wrote them, with its input hashes
            for there, frame in zip(known, parsed, strict=True):
                assert frame is not None
                done = checker.validate(frame)
                inputs = done.input_hashes_of(range(frame.height))
                for key, digest, hashed in zip(done.keys, done.hashes, inputs, strict=True):
                    if key is not None and digest is not None:
                        there[key] = Known(digest, None, hashed)

        def run() -> None:
            for n, ((begin, end), existing) in enumerate(zip(ranges, known, strict=True)):
                frame = frames.read(content[begin:end], columns, layout[1], layout[0])
                assert frame is not None
                first = 1 + n * size
                # As app.pipeline.writer: rows whose input hash their record holds are not
                # validated.
                cells = checker.key_cells(frame)
                assert cells is not None
                validated = validate_frame(checker, frame, cells, existing, frozenset(), first)
                plan_frame(
                    validated,
                    validated.keys,
                    frame,
                    importer,
                    existing,
                    run_id=1,
                    first_row=first,
                    log_all=True,
                    columns=columns,
                )

        return run

    figures = [
        ("split: row ends and repeated keys", best_of(split, rows)),
        ("read a chunk's byte range", best_of(read, rows)),
        ("keys and input hashes", best_of(lambda: [validator.keys(c) for c in chunks], rows)),
        ("validate", best_of(validate, rows)),
        ("validate + plan, first upload", best_of(lambda: plans(nothing), rows)),
        ("validate + plan, unchanged re-upload", best_of(lambda: plans(stored), rows)),
        ("columnar read + validate + plan, chunks of 1000", best_of(columnar(1000), rows)),
        ("columnar read + validate + plan, chunks of 10000", best_of(columnar(10000), rows)),
        ("columnar, chunks of 25000, first upload", best_of(columnar(25000), rows)),
        (
            "columnar, chunks of 25000, unchanged re-upload",
            best_of(columnar(25000, again=True), rows),
        ),
    ]
    return figures, plans(nothing), plans(stored)


async def postgres_steps(url: str, first: list[Any], again: list[Any]) -> list[tuple[str, Any]]:
    """Per row: (wall us, backend CPU us or None) of each statement a chunk sends."""
    from app.importers.schemas import ImporterDefinition
    from app.pipeline.writer import ROW_LOG_COLUMNS
    from app.records.store import Table
    from app.records.tables import COLUMN_TYPES, SYSTEM_COLUMNS, quoted

    importer = ImporterDefinition.model_validate(definition("parts", "all", 1000))
    fields = {name: COLUMN_TYPES[spec.type] for name, spec in importer.fields.items()}

    conn = await asyncpg.connect(url)
    backend = None
    with contextlib.suppress(psutil.Error):
        backend = psutil.Process(await conn.fetchval("SELECT pg_backend_pid()"))
    totals: dict[str, list[float]] = {}

    async def timed(name: str, rows: int, statement: Any, *, alone: bool = False) -> None:
        """Run `statement` in a transaction of its own (committed), or `alone`."""
        cpu = sum(backend.cpu_times()[:2]) if backend else 0.0
        start = time.perf_counter()
        if alone:
            await statement
        else:
            async with conn.transaction():
                await statement
        wall = time.perf_counter() - start
        spent = sum(backend.cpu_times()[:2]) - cpu if backend else float("nan")
        total = totals.setdefault(name, [0.0, 0.0, 0])
        total[0], total[1], total[2] = total[0] + wall, total[1] + spent, total[2] + rows

    columns = "".join(f", {quoted(name)} {kind}" for name, kind in fields.items())
    table = Table("parts", fields, fields)
    try:
        await conn.execute(
            f"DROP TABLE IF EXISTS ingest_data.parts; "
            f"CREATE TABLE ingest_data.parts ({SYSTEM_COLUMNS}{columns})"
        )
        await conn.execute("TRUNCATE run_rows")
        await conn.execute("CHECKPOINT")
        for plan in first:
            keys = list(plan.writes)
            await timed("look up keys, none there", len(keys), table.known(conn, keys))
            await timed(
                "COPY new records", len(keys), table.write(conn, None, 1, plan.writes, keys)
            )
            await timed(
                "COPY the row log (log_rows: all)",
                len(plan.log),
                conn.copy_records_to_table("run_rows", records=plan.log, columns=ROW_LOG_COLUMNS),
            )
        await conn.execute("VACUUM ANALYZE ingest_data.parts")
        for plan in again:
            keys = [entry[4] for entry in plan.log if entry[4] is not None]
            await timed("look up keys, all there", len(keys), table.known(conn, keys))
        client = time.process_time()
        for _ in range(1000):
            trip = conn.execute("SELECT 1")
            await timed("one round trip (SELECT 1), per trip", 1, trip, alone=True)
        client_cpu = (time.process_time() - client) / 1000 * 1e6
    finally:
        await conn.close()
    figures = [
        (name, (wall / rows * 1e6, cpu / rows * 1e6)) for name, (wall, cpu, rows) in totals.items()
    ]
    return [*figures, ("  the same, this process's CPU per trip", (float("nan"), client_cpu))]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.parts", description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    path = users_csv(args.rows, 42)
    server = postgres_server()
    print(f"{path.name}, chunks of 1000 rows; CPU per row, best of {PASSES} passes\n")
    from app.worker.settings import tune_gc

    tune_gc()  # as in a worker process
    figures, first, again = python_steps(path)
    print(f"{'worker step (in process)':45} {'CPU us/row':>10}")
    for name, value in figures:
        print(f"{name:45} {value:10.2f}")
    url, _, _ = asyncio.run(fresh_database(server, DB_NAME))
    print(f"\n{'Postgres statement':45} {'wall us':>10} {'backend CPU us':>15}")
    for name, (wall, cpu) in asyncio.run(postgres_steps(url, first, again)):
        print(f"{name:45} {wall:10.2f} {cpu:15.2f}")


if __name__ == "__main__":
    main()
