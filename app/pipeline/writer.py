"""Apply one chunk: decide each row's outcome, write its collection's records
(app.records.store) and the row log, count — in one transaction that also marks the chunk
done, so a chunk delivered twice is applied once. No per-row round trips.

The row log keeps a copy of a row's original data only when the row failed or the chunk is not
a byte range of the run's input file: other rows are read back from that file when shown
(``originals_of``), which stays as long as the row log does (``ingest prune`` removes both).
"""

import asyncio
import time
import weakref
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from typing import Any

import asyncpg
import polars as pl
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.db import json_dumps, raw_connection, unit_of_work
from app.core.storage import Storage
from app.importers.schemas import ImporterDefinition
from app.items.staging import foreign_open_keys, stage_rows
from app.pipeline import frames, lifecycle
from app.pipeline.chunks import (
    ChunkRow,
    Claim,
    RawRow,
    original_dict,
    payload_key,
    read_payload,
    remove_run_payloads,
)
from app.pipeline.prepare import INVALID, ChunkValidator, Unchanged
from app.pipeline.ranges import Fetched, fetch_range, parse_range, read_range
from app.pipeline.readers import ReadError
from app.records.store import NUL, Batch, Known, Table, Write, Writes, canonical, nul_errors
from app.runs import events
from app.runs.rowlog import CODES, OUTCOMES, OWN_ENTRY, encode

FOREIGN_RECORD = (
    "The record '{key}' belongs to another source: a run of source {source} cannot change it."
)
FOREIGN_ITEM = (
    "The open item of key '{key}' belongs to another source: a run of source {source} cannot "
    "change it."
)

ROW_LOG_COLUMNS = ("run_id", "row_number", "status", "outcome", "record_key", "data", "errors")


_json = json_dumps


@dataclass
class Plan:
    """What a chunk does: records to write, keys to mark seen, the row log and the counts."""

    writes: Writes = field(default_factory=dict)
    # Keys of `writes` that no record had when the chunk was planned.
    new: set[str] = field(default_factory=set)
    touched: list[str] = field(default_factory=list)
    staged: list[ChunkRow] = field(default_factory=list)
    log: list[tuple[Any, ...]] = field(default_factory=list)
    # With a compact row log: the outcome code of each row not in `log`, by row number.
    codes: dict[int, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lifecycle.empty_summary)
    # A columnar plan's: its records to write, with the positions of the new ones, and the
    # outcomes string of its rows (app.runs.rowlog).
    batch: tuple[Batch, list[int]] | None = None
    outcomes: str | None = None
    # Planned from columns (app.pipeline.frames): its chunk_applied event says so, and how
    # many rows its input hashes showed unchanged, which were not validated.
    columnar: bool = False
    unvalidated: int = 0
    successful: int = 0
    failed: int = 0
    skipped: int = 0


def _is_newer(new: Any, old: Any) -> bool:
    if old is None:
        return True
    if new is None:
        return False
    try:
        return bool(new > old)
    except TypeError:
        return str(new) > str(old)


def plan_chunk(
    rows: Sequence[ChunkRow],
    definition: ImporterDefinition,
    existing: dict[str, Known],
    *,
    run_id: int,
    stage: bool,
    log_all: bool,
    columns: Sequence[str],
    copy_originals: bool = True,
    unchanged: Sequence[Unchanged] = (),
    foreign: Mapping[str, str] | None = None,
    comparable: Callable[[Any], Any] = lambda value: value,
    compact: bool = False,
) -> Plan:
    """Decide every row's outcome, in row order, as if rows were applied one by one; rows
    known `unchanged` by their input hash (one row per key in the chunk) are counted apart.
    `copy_originals` False: only failed rows keep their original data in the row log.
    `columns` name the cells of originals given as lists: the row log and staged rows get
    dicts. Rows whose key is in `foreign` (another source's record or item) fail with its
    message. `comparable` makes the compare field's value what its column holds, as existing
    records give theirs. `compact` (with `log_all`): only failed rows get a row log entry,
    the others an outcome code (app.runs.rowlog)."""
    plan = Plan()
    foreign = foreign or {}
    strategy = definition.on_duplicate
    compare = definition.compare_field
    duplicate_message = f"Duplicate entry found for key '{', '.join(definition.key)}'."
    touch_unchanged = definition.action == "replace"
    hold_position = not stage and strategy in ("update", "update_if_newer")

    for row in rows:
        status, outcome, errors, key = "success", None, row.errors, row.key
        if row.data is None:
            status = "failed"
        else:
            blob, digest = canonical(row.data)
            if definition.action == "append":
                key = f"{run_id}:{row.row_number}"
            assert key is not None
            known = existing.get(key)
            # A repeated key decides the row under skip and fail; under update it only holds
            # the record's position (below): the splitter may also mistake a few new keys
            # for repeated ones.
            if NUL in blob:  # no column can hold it
                status = "failed"
                errors = {"message": INVALID, "validation": nul_errors(row.data)}
            elif key in foreign:
                status, errors = "failed", {"message": foreign[key]}
            elif known is None and not (row.duplicate and strategy in ("skip", "fail")):
                outcome = "created"
            elif strategy == "skip":
                status, outcome = "skipped", "skipped"
            elif strategy == "fail":
                status, errors = "failed", {"message": duplicate_message}
            elif known is not None and known.hash == digest:
                outcome = "unchanged"
            elif (
                strategy == "update_if_newer"
                and known is not None
                and not _is_newer(comparable(row.data.get(compare or "")), known.compare)
            ):
                status, outcome = "skipped", "skipped"
            else:
                outcome = "updated"

            if outcome == "unchanged" and row.duplicate and hold_position:
                # Written all the same: the write makes the record this row's, so that an
                # earlier row of the run, in a chunk applied later, cannot overwrite it; and
                # should such a row have changed it since this chunk looked, the data is
                # this row's again.
                plan.writes[key] = Write(row.data, digest, row.row_number, row.input_hash)
            if outcome in ("created", "updated"):
                if stage:
                    outcome = "staged"
                    plan.staged.append(replace(row, original=original_dict(row.original, columns)))
                else:
                    plan.writes[key] = Write(row.data, digest, row.row_number, row.input_hash)
                    if outcome == "created":
                        plan.new.add(key)
                existing[key] = Known(
                    digest, comparable(row.data.get(compare)) if compare else None, row.input_hash
                )
            elif touch_unchanged and status != "failed":
                plan.touched.append(key)

        if status == "failed":
            plan.failed += 1
        elif status == "skipped":
            plan.skipped += 1
            plan.counts["skipped"] += 1
        else:
            plan.successful += 1
            plan.counts[outcome or "created"] += 1
        if compact and status != "failed":
            plan.codes[row.row_number] = CODES[
                outcome or ("skipped" if status == "skipped" else "created")
            ]
        elif log_all or status == "failed":
            plan.log.append(
                (
                    run_id,
                    row.row_number,
                    status,
                    outcome,
                    key if key is None or "\x00" not in key else None,  # text holds no NUL
                    _json(original_dict(row.original, columns))
                    if copy_originals or status == "failed"
                    else None,
                    _json(errors) if errors else None,
                )
            )
    if unchanged:
        plan.unvalidated = len(unchanged)
        plan.successful += len(unchanged)
        plan.counts["unchanged"] += len(unchanged)
        if touch_unchanged:
            plan.touched.extend(key for _, key, _ in unchanged)
        if compact:
            plan.codes.update((number, CODES["unchanged"]) for number, _, _ in unchanged)
        elif log_all:
            plan.log.extend(
                (
                    run_id,
                    number,
                    "success",
                    "unchanged",
                    key,
                    _json(original_dict(original, columns)) if copy_originals else None,
                    None,
                )
                for number, key, original in unchanged
            )
    return plan


# What applying or failing a chunk needs of its ledger row (aliased `c`).
CHUNK_COLUMNS = "c.status, c.first_row, c.row_count, c.byte_start, c.byte_end, c.duplicate_rows"

RUN_CONTEXT = (
    "SELECT r.status, r.cancel_requested, r.dry_run, r.columns, r.file_key, r.file_size, "
    "coalesce(r.source_id, i.source_id) AS source_id, i.id AS importer_id, i.updated_at, "
    "i.definition, s.approval_mode FROM runs r JOIN importers i ON i.id = r.importer_id "
    "LEFT JOIN sources s ON s.id = coalesce(r.source_id, i.source_id) WHERE r.id = $1"
)


_COUNT = """
UPDATE runs SET processed = processed + $2, successful = successful + $3,
    failed = failed + $4, skipped = skipped + $5, chunks_done = chunks_done + 1,
    summary = (SELECT jsonb_object_agg(k, coalesce((summary ->> k)::int, 0)
                                        + coalesce(($6::jsonb ->> k)::int, 0))
               FROM jsonb_object_keys($6::jsonb) AS k),
    updated_at = now()
WHERE id = $1
"""
# The chunk's `chunk_applied` event rides in the same statement: no round trip of its own.
_COUNT_AND_LOG = events.with_event(_COUNT, "chunk_applied", run="$1", data="$7")


@dataclass
class Applying:
    """Who applies a chunk and since when: what its `chunk_applied` event says of it."""

    index: int
    claim: Claim | None
    started: float = field(default_factory=time.monotonic)

    def event(self, status: str, plan: Plan) -> str:
        return _json(
            {
                "index": self.index,
                "status": status,
                "rows": {**plan.counts, "failed": plan.failed},
                "duration_ms": round((time.monotonic() - self.started) * 1000, 1),
                "attempt": self.claim and self.claim.attempt,
                "worker": self.claim and self.claim.worker_id,
                "columnar": plan.columnar,
                "unvalidated": plan.unvalidated,
            }
        )


class LeaseLost(Exception):
    """The chunk's claim was taken over by another worker: this one must commit nothing."""


async def apply_chunk(
    factory: async_sessionmaker[AsyncSession],
    storage: Storage,
    run_id: int,
    index: int,
    claim: Claim | None = None,
    *,
    hold_s: float = 0,
) -> None:
    """Apply a chunk once. With a ``claim``, only while that claim still holds the chunk
    (else LeaseLost, nothing committed). ``hold_s`` is a test hook: a sleep once the ledger
    row is locked."""
    applying = Applying(index, claim)
    async with unit_of_work(factory) as session:
        conn = await raw_connection(session)
        chunk = await conn.fetchrow(
            f"SELECT {CHUNK_COLUMNS}, c.claimed_by, c.attempts FROM run_chunks c "
            "WHERE c.run_id = $1 AND c.index = $2 FOR UPDATE",
            run_id,
            index,
        )
        if hold_s:
            await asyncio.sleep(hold_s)
        # Already applied (or dropped): a re-delivery changes nothing.
        pending = chunk is not None and chunk["status"] == "pending"
        if pending and claim is not None and not _holds(chunk, claim):
            raise LeaseLost(f"chunk {index} of run {run_id} was taken over by another worker")
        finished = pending and await _apply_pending(session, conn, storage, chunk, run_id, applying)
    # Committed: the payload is no longer needed.
    await _drop_payloads(storage, chunk, run_id, index, finished)


def _holds(chunk: asyncpg.Record, claim: Claim) -> bool:
    return bool(chunk["claimed_by"] == claim.worker_id and chunk["attempts"] == claim.attempt)


async def _apply_pending(
    session: AsyncSession,
    conn: asyncpg.Connection,
    storage: Storage,
    chunk: asyncpg.Record,
    run_id: int,
    applying: Applying,
) -> bool:
    """Apply a locked, pending chunk; True when this finished the run."""
    index = applying.index
    run = await conn.fetchrow(RUN_CONTEXT, run_id)  # the run's state as of the lock
    definition = _definition(run)
    if run["status"] != "processing" or run["cancel_requested"]:
        await _close_chunk(conn, run_id, index, "cancelled")
        await _count(conn, run_id, Plan())
        return await lifecycle.maybe_finalize(session, run_id, definition)
    return await _apply(session, conn, storage, definition, run_id, chunk, applying, run)


async def _drop_payloads(
    storage: Storage, chunk: asyncpg.Record | None, run_id: int, index: int, finished: bool
) -> None:
    """After a chunk's commit: its payload (if it has one), and the run's with its end."""
    if finished:
        await remove_run_payloads(storage, run_id)
    elif chunk is not None and chunk["byte_start"] is None:
        await storage.delete(payload_key(run_id, index))


async def read_chunk(
    storage: Storage,
    chunk: asyncpg.Record,
    run_id: int,
    index: int,
    run: asyncpg.Record,
    fetched: Fetched | None = None,
) -> list[RawRow]:
    """A chunk's raw rows (`chunk` has CHUNK_COLUMNS, `run` the run's file_key, file_size and
    columns): its byte range of the run's CSV input, parsed here (from `fetched` when its
    bytes are read already), or its payload."""
    if chunk["byte_start"] is None:
        return await read_payload(storage, run_id, index)
    file_key, columns = run["file_key"], run["columns"]
    assert file_key is not None  # byte ranges are cut from an input file
    if fetched is not None:
        rows = await parse_range(storage, file_key, fetched, columns)
    else:
        size = await _input_size(storage, run)
        start, end = chunk["byte_start"], chunk["byte_end"]
        rows = await read_range(storage, file_key, columns, start, end, size=size)
    if len(rows) != chunk["row_count"]:
        raise ReadError(f"The input file changed: chunk {index} no longer has its rows.")
    numbers = range(chunk["first_row"], chunk["first_row"] + len(rows))
    repeated = frozenset(chunk["duplicate_rows"] or ())
    return [
        (number, data, error, number in repeated)
        for number, (data, error) in zip(numbers, rows, strict=True)
    ]


async def _input_size(storage: Storage, run: asyncpg.Record) -> int:
    # The size the input was stored with (a changed file is caught by its row count).
    size = run["file_size"]
    if size is None:
        size = await storage.size(run["file_key"])
        if size is None:
            raise FileNotFoundError(run["file_key"])
    return int(size)


async def originals_of(
    storage: Storage,
    file_key: str,
    file_size: int | None,
    columns: list[str],
    spans: Sequence[tuple[int, int, int, int]],
    numbers: set[int],
) -> dict[int, dict[str, Any]]:
    """The original data of rows `numbers` of a run, read back from its input file: `spans`
    are the (first_row, row_count, byte_start, byte_end) of the byte-range chunks that hold
    them. None are read from a file whose size is not the upload's (it changed); raises
    OSError when the file is gone."""
    size = await storage.size(file_key)
    if size is None:
        raise FileNotFoundError(file_key)
    if file_size is not None and size != file_size:
        return {}
    found: dict[int, dict[str, Any]] = {}
    for first, count, start, end in spans:
        wanted = {number for number in numbers if first <= number < first + count}
        if not wanted:
            continue
        # Parsed up to the last row wanted: the first rows of a run are shown most.
        limit = max(wanted) - first + 1
        rows = await read_range(
            storage, file_key, columns, start, end, size=size, limit=limit, offload=True
        )
        if len(rows) == limit:  # else the range no longer holds its rows
            found.update(
                (number, original_dict(rows[number - first][0], columns)) for number in wanted
            )
    return found


# Parsed definitions and compiled validators, reused across a run's chunks: both are
# per-chunk fixed costs otherwise. Keys change when the importer is edited.
_definitions: dict[tuple[int, datetime], ImporterDefinition] = {}
_validators: dict[tuple[int, tuple[str, ...]], tuple[ImporterDefinition, ChunkValidator]] = {}
_CACHE_SIZE = 64


def _definition(context: asyncpg.Record) -> ImporterDefinition:
    key = (context["importer_id"], context["updated_at"])
    definition = _definitions.get(key)
    if definition is None:
        if len(_definitions) >= _CACHE_SIZE:
            _definitions.clear()
        definition = _definitions[key] = ImporterDefinition.model_validate(context["definition"])
    return definition


def _validator(
    definition: ImporterDefinition, run_id: int, columns: list[str] | None
) -> ChunkValidator:
    # JSON headers grow during a run: the header is part of the key.
    key = (run_id, tuple(columns or ()))
    cached = _validators.get(key)
    if cached is not None and cached[0] is definition:
        return cached[1]
    if len(_validators) >= _CACHE_SIZE:
        _validators.clear()
    validator = ChunkValidator(definition, list(columns or ()))
    _validators[key] = (definition, validator)
    return validator


async def _apply(
    session: AsyncSession,
    conn: asyncpg.Connection,
    storage: Storage,
    definition: ImporterDefinition,
    run_id: int,
    chunk: asyncpg.Record,
    applying: Applying,
    run: asyncpg.Record,
) -> bool:
    index = applying.index
    in_file = chunk["byte_start"] is not None
    table = await Table.load(conn, definition.collection, definition.fields)
    plan, fetched = None, None
    if in_file and _columnar(definition, run, chunk, table):
        async with _frame_slot():
            fetched = await fetch_range(
                storage,
                run["file_key"],
                chunk["byte_start"],
                chunk["byte_end"],
                size=await _input_size(storage, run),
            )
            if fetched is not None:
                plan = await _plan_frame(conn, table, fetched, definition, run_id, run, chunk)
    if plan is None:
        raws = await read_chunk(storage, chunk, run_id, index, run, fetched)
        plan = await _plan(conn, table, raws, definition, run_id, run, in_file)
    outcomes = plan.outcomes
    if plan.codes:  # a CSV chunk's rows, read back from the input file when shown
        outcomes = encode(chunk["first_row"], chunk["row_count"], plan.codes)
    if not run["dry_run"]:
        if plan.batch is not None:
            await table.write_batch(conn, run["source_id"], run_id, *plan.batch)
        else:
            await table.write(conn, run["source_id"], run_id, plan.writes, plan.new)
        if plan.touched:
            await table.touch(conn, plan.touched, run["source_id"], run_id)
        if plan.staged:
            await stage_rows(
                conn,
                run_id=run_id,
                definition=definition,
                source_id=run["source_id"],
                rows=plan.staged,
            )
    if plan.log:
        await conn.copy_records_to_table("run_rows", records=plan.log, columns=ROW_LOG_COLUMNS)
    await _close_chunk(conn, run_id, index, "done", outcomes)
    await _count(conn, run_id, plan, applying.event("done", plan))
    return await lifecycle.maybe_finalize(session, run_id, definition)


def _columnar(
    definition: ImporterDefinition, run: asyncpg.Record, chunk: asyncpg.Record, table: Table
) -> bool:
    """Whether the chunk goes the columnar way (app.pipeline.frames): a byte range of a CSV
    input of `frames.MIN_ROWS` rows or more, not staged, into a table whose columns are the
    fields' own."""
    return (
        chunk["row_count"] >= frames.MIN_ROWS
        and definition.approval != "manual"
        and run["approval_mode"] != "manual"
        and frames.supports(definition, table.columns)
    )


# A chunk's work on columns runs in a thread, so that the event loop goes on meanwhile: the
# split and the other chunks' statements no longer wait on it (polars runs without the GIL).
# Measured with bench.run (100k and 200k rows, 2 workers): 100k first uploads ran at
# 182-265k rows/s against 99-126k on the event loop. One chunk per worker (per event loop)
# reads and plans a frame at a time, the others waiting before they fetch their bytes: with
# the loop free, more chunks held their frames at once, and a 1M-row run's worker peak RSS
# went to 288-302 MB; with the slot, 259-275 MB.
_frame_slots: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]" = (
    weakref.WeakKeyDictionary()
)


def _frame_slot() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    slot = _frame_slots.get(loop)
    if slot is None:
        slot = _frame_slots[loop] = asyncio.Semaphore(1)
    return slot


async def _plan_frame(
    conn: asyncpg.Connection,
    table: Table,
    fetched: Fetched,
    definition: ImporterDefinition,
    run_id: int,
    run: asyncpg.Record,
    chunk: asyncpg.Record,
) -> Plan | None:
    """The plan of a chunk read and validated as columns; None when its rows must go the
    per-row way (polars declines the bytes). Its work on columns runs in a thread, one
    chunk of a worker at a time (`_frame_slot`)."""
    columns = run["columns"]
    part = fetched.part
    frame = await asyncio.to_thread(frames.read, fetched.data, columns, part.delimiter, part.codec)
    if frame is None or frame.height != chunk["row_count"]:
        return None
    validator = _validator(definition, run_id, columns).frames
    if validator is None:
        return None
    first, compare, source_id = chunk["first_row"], definition.compare_field, run["source_id"]
    duplicates = frozenset(chunk["duplicate_rows"] or ())
    foreign: dict[str, str] = {}
    existing: dict[str, Known] = {}
    cells = validator.key_cells(frame)
    if definition.action == "append":
        validated = await asyncio.to_thread(validator.validate, frame)
        keys: Sequence[str | None] = [
            None if i in validated.errors else f"{run_id}:{first + i}" for i in range(frame.height)
        ]
    elif cells is None:
        validated = await asyncio.to_thread(validator.validate, frame)
        keys = validated.keys
        wanted = list({key for key in keys if key is not None})
        existing = await table.known(conn, wanted, compare)
    else:
        # Records first by the rows' key cells: rows whose input wrote their record are
        # unchanged without being validated (prepare.py); then by the other rows' keys.
        looked_up = set(cells)
        existing = await table.known(conn, list(looked_up), compare)
        own = existing
        if source_id is not None:  # another source's records are never taken as unchanged
            own = {key: known for key, known in existing.items() if known.source_id == source_id}

        validated = await asyncio.to_thread(
            validate_frame, validator, frame, cells, own, duplicates, first
        )
        keys = validated.keys
        rest = {key for key in keys if key is not None} - looked_up
        existing.update(await table.known(conn, list(rest), compare))
    # A run for a source changes only that source's records.
    if source_id is not None:
        foreign = {
            key: FOREIGN_RECORD.format(key=key, source=source_id)
            for key, known in existing.items()
            if known.source_id != source_id
        }
    dry_run = run["dry_run"]
    plan = await asyncio.to_thread(
        partial(
            plan_frame,
            validated,
            keys,
            frame,
            definition,
            existing,
            run_id=run_id,
            first_row=first,
            log_all=definition.log_rows == "all" or dry_run,
            columns=columns,
            duplicates=duplicates,
            foreign=foreign,
            report=dry_run,
        )
    )
    plan.unvalidated = validated.unvalidated
    return plan


def validate_frame(
    validator: frames.FrameValidator,
    frame: pl.DataFrame,
    cells: Sequence[str],
    own: Mapping[str, Known],
    duplicates: frozenset[int],
    first_row: int,
) -> frames.Validated:
    """The frame validated but for its rows known unchanged by their input hash
    (`unchanged_rows`; `cells` are its key cells, `own` the run's records they name)."""
    inputs = validator.input_hashes(frame)
    unchanged = unchanged_rows(cells, inputs, own, duplicates, first_row)
    return validator.validate_except(frame, unchanged, inputs)


def unchanged_rows(
    cells: Sequence[str],
    input_hashes: Sequence[str | None],
    own: Mapping[str, Known],
    duplicates: frozenset[int],
    first_row: int,
) -> dict[int, tuple[str, str]]:
    """The rows of a frame whose key cells name one of the run's `own` records that holds
    the row's input hash (row index -> the record's key and content hash): unchanged without
    validation, where their key is theirs alone in the chunk and no earlier chunk's row had
    it (prepare.py)."""
    once = Counter(cells)
    found: dict[int, tuple[str, str]] = {}
    for i, (key, digest) in enumerate(zip(cells, input_hashes, strict=True)):
        record = own.get(key)
        if (
            record is not None
            and digest is not None
            and record.input_hash == digest
            and once[key] == 1
            and first_row + i not in duplicates
        ):
            found[i] = (key, record.hash)
    return found


def plan_frame(
    validated: frames.Validated,
    keys: Sequence[str | None],
    frame: pl.DataFrame,
    definition: ImporterDefinition,
    existing: Mapping[str, Known],
    *,
    run_id: int,
    first_row: int,
    log_all: bool,
    columns: Sequence[str],
    duplicates: frozenset[int] = frozenset(),
    foreign: Mapping[str, str] | None = None,
    report: bool = False,
) -> Plan:
    """`plan_chunk` of a validated frame, not staged: rows in row order, `duplicates` the row
    numbers whose key an earlier chunk's row had, rows whose key is in `foreign` failed with
    its message. `report` (a dry run's): every row gets a row log entry of its own."""
    plan = Plan(columnar=True)
    foreign = foreign or {}
    strategy = definition.on_duplicate
    duplicate_message = _json(
        {"message": f"Duplicate entry found for key '{', '.join(definition.key)}'."}
    )
    touch = definition.action == "replace"
    errors, hashes = validated.errors, validated.hashes
    # Under update_if_newer: each row's compare value, as its column holds it.
    newer = None
    if strategy == "update_if_newer" and definition.compare_field:
        position = list(definition.fields).index(definition.compare_field)
        newer = validated.columns[position].take(range(len(keys)))
    codes: list[str] = []
    failed: dict[int, str] = {}  # row -> its errors (JSON)
    # The content hash and compare value each key has as the rows before have left it (None:
    # no record), and the last row that writes each key: rows apply one by one, as in
    # `plan_chunk`.
    current: dict[str, tuple[str, Any] | None] = {}
    writer: dict[str, int] = {}
    created: set[str] = set()
    counts = plan.counts
    for i, key in enumerate(keys):
        if key is None:
            failed[i] = _json({"message": INVALID, "validation": errors[i]})
            codes.append(OWN_ENTRY)
            continue
        if key in foreign:
            failed[i] = _json({"message": foreign[key]})
            codes.append(OWN_ENTRY)
            continue
        if key in current:
            known = current[key]
        else:
            record = existing.get(key)
            known = current[key] = None if record is None else (record.hash, record.compare)
        # An earlier chunk's row had the key: skip and fail decide on that alone.
        repeated = first_row + i in duplicates
        if known is None and not (repeated and strategy in ("skip", "fail")):
            outcome = "created"
            created.add(key)
        elif strategy == "skip":
            outcome = "skipped"
        elif strategy == "fail":
            failed[i] = duplicate_message
            codes.append(OWN_ENTRY)
            continue
        elif known is not None and known[0] == hashes[i]:
            outcome = "unchanged"
            if repeated:
                # Written all the same, so that the record is this row's: an earlier row,
                # in a chunk applied later, cannot overwrite it (plan_chunk says more).
                writer[key] = i
        elif newer is not None and known is not None and not _is_newer(newer[i], known[1]):
            outcome = "skipped"
        else:
            outcome = "updated"
        if outcome in ("created", "updated"):
            writer[key] = i
            current[key] = (hashes[i], None if newer is None else newer[i])  # type: ignore[assignment]
        counts[outcome] += 1
        codes.append(CODES[outcome])
        if touch and outcome in ("unchanged", "skipped"):
            plan.touched.append(key)
    plan.skipped = counts["skipped"]
    plan.failed = len(failed)
    plan.successful = len(keys) - plan.failed - plan.skipped
    if log_all and not report and plan.failed < len(keys):
        plan.outcomes = "".join(codes)  # rows that all failed have entries, no codes
    originals = dict(zip(failed, frame[list(failed)].rows(), strict=True)) if failed else {}
    for i in range(len(keys)) if report else failed:
        key = keys[i]
        status: str
        logged: str | None
        data: str | None = None
        if i in failed:
            status, logged = "failed", None
            data = _json(dict(zip(columns, originals[i], strict=True)))
        else:
            logged = OUTCOMES[codes[i]]
            status = "skipped" if logged == "skipped" else "success"
        plan.log.append((run_id, first_row + i, status, logged, key, data, failed.get(i)))
    written: Sequence[int] = sorted(writer.values())
    if len(written) == len(keys):
        written = range(len(keys))  # every row: the columns whole
    if written:
        new = [n for n, i in enumerate(written) if keys[i] in created]
        batch = Batch(
            [keys[i] for i in written],  # type: ignore[misc]
            [hashes[i] for i in written],  # type: ignore[misc]
            validated.input_hashes_of(written),
            [first_row + i for i in written],
            validated.copied(written, list(definition.fields)),
        )
        plan.batch = (batch, new)
    return plan


async def _plan(
    conn: asyncpg.Connection,
    table: Table,
    raws: list[RawRow],
    definition: ImporterDefinition,
    run_id: int,
    run: asyncpg.Record,
    in_file: bool,
) -> Plan:
    validator = _validator(definition, run_id, run["columns"])
    # Existing records first, by the rows' key cells, then by the keys computed from key
    # fields alone for the rows not found so: rows whose input is the one that wrote their
    # record need no validation (prepare.py).
    hashed = validator.hashes(raws)
    looked_up = {h[0] for h in hashed if h is not None and h[0] is not None}
    compare = definition.compare_field
    existing = await table.known(conn, list(looked_up), compare)
    keyed = validator.keys(raws, hashed, existing)
    computed = {k[0] for k in keyed if k is not None} - looked_up
    existing.update(await table.known(conn, list(computed), compare))
    looked_up |= computed
    # A run for a source changes only that source's records: the others' rows are validated
    # (never taken as unchanged) and then fail.
    source_id = run["source_id"]
    own = existing
    if source_id is not None:
        own = {key: known for key, known in existing.items() if known.source_id == source_id}
    rows, unchanged = validator.validate(raws, keyed, own)
    if definition.action != "append":
        rest = {r.key for r in rows if r.key is not None and r.key not in looked_up}
        existing.update(await table.known(conn, list(rest), compare))
    stage = definition.approval == "manual" or run["approval_mode"] == "manual"
    foreign: dict[str, str] = {}
    if source_id is not None:
        for key, known in existing.items():
            if known.source_id != source_id:
                foreign[key] = FOREIGN_RECORD.format(key=key, source=source_id)
        if stage:
            keys = [r.key for r in rows if r.key is not None and r.key not in foreign]
            for key in await foreign_open_keys(conn, definition.slug, keys, source_id):
                foreign[key] = FOREIGN_ITEM.format(key=key, source=source_id)
    # A dry run logs every row: its row log *is* the report of what would happen.
    log_all = definition.log_rows == "all" or run["dry_run"]
    return plan_chunk(
        rows,
        definition,
        existing,
        run_id=run_id,
        stage=stage,
        log_all=log_all,
        copy_originals=not in_file,
        unchanged=unchanged,
        columns=run["columns"] or (),
        foreign=foreign,
        comparable=partial(table.value, compare) if compare else lambda value: value,
        # Rows of a byte range are read back from the input file: they need no entry.
        compact=in_file and log_all and not run["dry_run"],
    )


async def _close_chunk(
    conn: asyncpg.Connection, run_id: int, index: int, status: str, outcomes: str | None = None
) -> None:
    await conn.execute(
        "UPDATE run_chunks SET status = $3, applied_at = now(), outcomes = $4 "
        "WHERE run_id = $1 AND index = $2",
        run_id,
        index,
        status,
        outcomes,
    )


async def _count(
    conn: asyncpg.Connection, run_id: int, plan: Plan, event: str | None = None
) -> None:
    """Count the chunk's rows on its run, with its event (JSON) when it has one. Last
    statement of the transaction: the run row lock is held as briefly as possible."""
    processed = plan.successful + plan.failed + plan.skipped
    args = (run_id, processed, plan.successful, plan.failed, plan.skipped, _json(plan.counts))
    if event is None:
        await conn.execute(_COUNT, *args)
    else:
        await conn.execute(_COUNT_AND_LOG, *args, event)


async def fail_chunk(
    factory: async_sessionmaker[AsyncSession],
    storage: Storage,
    run_id: int,
    index: int,
    reason: str,
    claim: Claim | None = None,
) -> None:
    """Give up on a chunk that keeps failing: its rows are failed with the reason, so the run
    can finish and the rows can be retried. With a ``claim``, only while it holds the chunk."""
    applying = Applying(index, claim)
    async with unit_of_work(factory) as session:
        conn = await raw_connection(session)
        chunk = await conn.fetchrow(
            f"SELECT {CHUNK_COLUMNS}, c.claimed_by, c.attempts, r.columns, r.file_key, "
            "r.file_size, i.definition FROM run_chunks c "
            "JOIN runs r ON r.id = c.run_id JOIN importers i ON i.id = r.importer_id "
            "WHERE c.run_id = $1 AND c.index = $2 FOR UPDATE OF c",
            run_id,
            index,
        )
        if chunk is None or chunk["status"] != "pending":
            return
        if claim is not None and not _holds(chunk, claim):
            return
        definition = ImporterDefinition.model_validate(chunk["definition"])
        plan = Plan()
        errors = _json({"message": f"The row could not be written: {reason}"[:1000]})
        try:
            rows = await read_chunk(storage, chunk, run_id, index, chunk)
        except (OSError, ValueError, ReadError):
            rows = []  # the rows themselves are lost: count them failed, log none
            plan.failed = chunk["row_count"]
        for number, original, _, _ in rows:
            plan.failed += 1
            data = _json(original_dict(original, chunk["columns"] or ()))
            plan.log.append((run_id, number, "failed", None, None, data, errors))
        if plan.log:
            await conn.copy_records_to_table("run_rows", records=plan.log, columns=ROW_LOG_COLUMNS)
        await _close_chunk(conn, run_id, index, "failed")
        await _count(conn, run_id, plan, applying.event("failed", plan))
        finished = await lifecycle.maybe_finalize(session, run_id, definition)
    await _drop_payloads(storage, chunk, run_id, index, finished)
