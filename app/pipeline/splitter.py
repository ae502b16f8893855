"""Split a run's input into chunks: check the header, count rows, store each chunk.

The splitter is the only sequential step of a run, so it does as little per row as it can.
A CSV chunk is a byte range of the file, parsed again by the chunk job: a block of about 2 MiB
cut after its last line break outside quotes and parsed by polars for its row count and
repeated keys, or, where polars may read rows differently, rows found with `csv.reader`.
Other inputs (XLSX, JSON, retries) are read into rows and stored as payload files.
It streams the input once, so memory stays flat; each chunk is committed (with the run's
progress) before its apply job is enqueued. If the worker dies, the job runs again and
resumes after the last committed chunk.
A cancel stops it storing chunks, not reading: the rest of the input is still counted, so
that the run's `total` is the input's row count.
A file that an earlier run of the importer split already (the same bytes, the same
definition) is not read here: that run's chunk ledger is copied.
"""

import asyncio
import logging
import re
import secrets
import time
from array import array
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import polars as pl
from arq import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.db import json_dumps, unit_of_work
from app.core.queue import enqueue_chunk, enqueue_quietly
from app.core.storage import Storage, storage_of
from app.importers.models import Importer
from app.importers.schemas import ImporterDefinition
from app.pipeline import chunks, frames, lifecycle
from app.pipeline.mapping import MissingColumns, plan_columns
from app.pipeline.prepare import definition_salt
from app.pipeline.readers import ReadError, open_table
from app.pipeline.readers.csv_reader import CsvTable
from app.pipeline.validation import RowValidator
from app.runs import events
from app.runs.models import FINISHED_STATUSES, Run

log = logging.getLogger(__name__)

InputRow = tuple[int, dict[str, Any], str | None]  # row number, original data, read error
# Rows counted, after a cancel, between two turns of the event loop.
_COUNT_BATCH = 10_000
# Chunk sizes where the importer leaves them to the service (no `chunk_size`): a CSV file's
# byte-range chunks hold about CHUNK_BYTES of rows, at most AUTO_ROWS (a chunk's memory, and
# how late a cancel is heard); payload chunks (XLSX, JSON, retries) PAYLOAD_ROWS rows.
# Measured with bench.run (1M rows, 2 workers): 4 MiB chunks ran ~8% faster than 2 MiB but
# took a worker to 372-382 MB at its peak, against 283-291 MB (4 chunk jobs at a time).
CHUNK_BYTES = 2 * 1024 * 1024
AUTO_ROWS = 50_000
PAYLOAD_ROWS = 1000
# Blocks in a row that `_Cuts` cannot take before the rest of the file is read row by row.
GIVE_UP_AFTER = 3


class _SeenExactly:
    """The keys met so far, as 64-bit hashes: what `skip` and `fail` act on."""

    def __init__(self, state: bytes = b"") -> None:
        self._seen: set[int] = set(array("Q", state))

    def add_all(self, digests: list[int]) -> list[bool]:
        """Remember the keys' `digests`; per key, whether it was met before."""
        seen, met = self._seen, []
        for digest in digests:
            met.append(digest in seen)
            seen.add(digest)
        return met

    def state(self) -> bytes:
        return array("Q", self._seen).tobytes()


class _SeenProbably:
    """The keys met so far, in a fixed 16 MiB bitset, whatever the file's size. It may take a
    new key for a repeated one (about 1% of keys at 1M keys), never the reverse: right for
    `update`, where a repeated key only costs its later row a write."""

    MASK = (1 << 27) - 1

    def __init__(self, state: bytes = b"") -> None:
        self._bits = bytearray(state or (self.MASK + 1) >> 3)

    def add_all(self, digests: list[int]) -> list[bool]:
        bits, mask, met = self._bits, self.MASK, []
        for slot in digests:
            slot &= mask
            byte, bit = slot >> 3, 1 << (slot & 7)
            met.append(bool(bits[byte] & bit))
            bits[byte] |= bit
        return met

    def state(self) -> bytes:
        return bytes(self._bits)


@dataclass(frozen=True)
class Position:
    """Where a split stands right after storing a chunk: what its successor goes on from."""

    index: int  # the chunks stored so far: the next chunk's index
    offset: int  # a CSV file: the byte offset where the next chunk starts; a retry: the last
    # row number read
    first: int  # a CSV file: the next row's number
    total: int  # the rows read so far
    lines: int  # a CSV file: its lines read so far (errors name lines of the whole file)


@dataclass(frozen=True)
class Checkpoint:
    at: Position
    seed: int  # of the key hashes in `seen`
    seen: bytes  # the keys met so far (`Splitter.state`)


def checkpoint_key(run_id: int) -> str:
    return f"{chunks.run_prefix(run_id)}/split.state"


def _stamp(definition: ImporterDefinition) -> str:
    # A checkpoint holds for the definition it was taken under and the hash function of
    # the polars release that hashed its keys.
    return f"{definition_salt(definition).hex()}/{pl.__version__}"


async def load_checkpoint(
    storage: Storage, run_id: int, definition: ImporterDefinition, stored: int
) -> Checkpoint | None:
    """The checkpoint an earlier attempt of the split saved, unless it does not hold (another
    definition, another polars) or is past the `stored` chunks the ledger has."""
    try:
        head, _, seen = (await storage.read(checkpoint_key(run_id))).partition(b"\n")
    except FileNotFoundError:
        return None
    fields = orjson.loads(head)
    if fields.pop("stamp") != _stamp(definition):
        return None
    seed = fields.pop("seed")
    at = Position(**fields)
    return Checkpoint(at, seed, seen) if at.index <= stored else None


class _Checkpoints:
    """Saves where the split stands (`Position`, and the keys met so far) in the run's storage,
    every `every_s` seconds at most, right after a flush, so that the worker that takes over
    a killed split goes on from there rather than reading the input again."""

    def __init__(
        self,
        storage: Storage,
        run_id: int,
        definition: ImporterDefinition,
        splitter: "Splitter",
        every_s: float,
    ) -> None:
        self.storage, self.key, self.stamp = storage, checkpoint_key(run_id), _stamp(definition)
        self.splitter, self.every_s = splitter, every_s
        self.saved_at = time.monotonic()

    def due(self, store: "_Store") -> bool:
        caught_up = not store.pending and store.stored == store.index
        return caught_up and time.monotonic() - self.saved_at >= self.every_s

    async def save(self, at: Position) -> None:
        head = orjson.dumps({"stamp": self.stamp, "seed": self.splitter.seed, **asdict(at)})
        await self.storage.put(self.key, head + b"\n" + self.splitter.state())
        self.saved_at = time.monotonic()


class Splitter:
    """Checks the header and marks rows whose key an earlier row of the run already had.

    Validation itself happens when chunks are applied, in parallel. The splitter only
    computes keys (from the key fields alone): `skip` and `fail` act on the later rows of a
    key, and under `update` such a row must be written even when its record already holds
    it, so that an earlier row of the run, applied after it in another chunk, cannot win.
    """

    def __init__(
        self,
        definition: ImporterDefinition,
        columns: list[str],
        saved: "Checkpoint | None" = None,
    ):
        plan = plan_columns(definition, columns)  # a missing key column fails the run now
        self.columns = columns
        self.key_validator: RowValidator | None = None
        # The keys of a block of whole CSV rows parsed by polars (`keys_of_frame`); None when
        # the key's kinds need the per-row way.
        self.key_frames: frames.FrameValidator | None = None
        self.seen: _SeenExactly | _SeenProbably | None = None
        # Keys are remembered as seeded hashes, the same in every process (unlike `hash`),
        # so that a checkpoint of them holds in the worker that goes on from it.
        self.seed = secrets.randbits(63) if saved is None else saved.seed
        if definition.action != "append":
            key_fields = {name: definition.fields[name] for name in definition.key}
            keyed = definition.model_copy(update={"fields": key_fields})
            self.key_validator = RowValidator(keyed, plan)
            if frames.keys_supported(definition):
                self.key_frames = frames.FrameValidator(
                    keyed, plan, self.key_validator, None, shortcut=False
                )
            exact = definition.on_duplicate in ("skip", "fail")
            state = b"" if saved is None else saved.seen
            self.seen = _SeenExactly(state) if exact else _SeenProbably(state)

    def state(self) -> bytes:
        """The keys met so far, as a checkpoint keeps them."""
        return b"" if self.seen is None else self.seen.state()

    def duplicates(self, originals: list[chunks.Original | None]) -> list[bool]:
        """Per row (None for one that cannot be read), whether an earlier row had its key."""
        if self.key_validator is None:
            return [False] * len(originals)
        readable = [
            chunks.original_dict(original, self.columns)
            for original in originals
            if original is not None
        ]
        return self._mark(originals, self.key_validator.keys_many(readable))

    def duplicates_of(self, cells: list[list[str] | None]) -> list[bool]:
        """`duplicates` of CSV rows given as their cells (None for a ragged row)."""
        if self.key_validator is None:
            return [False] * len(cells)
        readable = [row for row in cells if row is not None]
        return self._mark(cells, self.key_validator.keys_of_lists(readable, self.columns))

    @property
    def reads_frames(self) -> bool:
        """Whether `duplicates_of_frame` can mark this run's rows."""
        return self.key_validator is None or self.key_frames is not None

    def duplicates_of_frame(self, frame: pl.DataFrame) -> list[bool]:
        """`duplicates` of the rows of a frame of CSV cells (`frames.read`)."""
        if self.key_validator is None:
            return [False] * frame.height
        assert self.key_frames is not None
        return self._mark([True] * frame.height, self.key_frames.keys(frame))

    def _mark(self, rows: list[Any], keys: list[str | None]) -> list[bool]:
        assert self.seen is not None
        present_keys = pl.Series([key for key in keys if key is not None], dtype=pl.String)
        met = iter(self.seen.add_all(present_keys.hash(self.seed).to_list()))
        present = iter(keys)
        return [row is not None and next(present) is not None and next(met) for row in rows]


def _numbered(rows: Iterator[tuple[dict[str, Any], str | None]]) -> Iterator[InputRow]:
    for number, (data, error) in enumerate(rows, start=1):
        yield number, data, error


async def _parent_failed_rows(
    factory: async_sessionmaker[AsyncSession], parent_id: int, after: int = 0
) -> AsyncIterator[InputRow]:
    """The failed rows of the parent run after row `after`, in row order, in keyset pages."""
    while True:
        async with factory() as session:
            page = (
                await session.execute(
                    text(
                        "SELECT row_number, data FROM run_rows WHERE run_id = :id AND "
                        "status = 'failed' AND row_number > :after ORDER BY row_number LIMIT 5000"
                    ),
                    {"id": parent_id, "after": after},
                )
            ).all()
        if not page:
            return
        for number, data in page:
            yield number, data, None
        after = page[-1][0]


class LeaseLost(Exception):
    """The split's claim was taken over by another worker: this one stops storing chunks."""


async def _check_claim(session: AsyncSession, run_id: int, claim: chunks.Claim | None) -> None:
    """Inside a transaction that stores chunks: raise LeaseLost unless ``claim`` (when there
    is one) still holds the split. The runs row stays locked until the transaction ends."""
    if claim is None:
        return
    held = await session.scalar(
        text(
            "SELECT 1 FROM runs WHERE id = :run AND split_claimed_by = :me "
            "AND split_attempt = :attempt FOR NO KEY UPDATE"
        ),
        {"run": run_id, "me": claim.worker_id, "attempt": claim.attempt},
    )
    if held is None:
        raise LeaseLost(f"the split of run {run_id} was taken over by another worker")


async def split_run(
    factory: async_sessionmaker[AsyncSession],
    queue: ArqRedis,
    settings: Settings,
    run_id: int,
    claim: chunks.Claim | None = None,
) -> None:
    """Split the run; with a ``claim``, only while it holds the split (else LeaseLost)."""
    async with unit_of_work(factory) as session:
        run = await session.get(Run, run_id, with_for_update={"key_share": True})
        if run is None or run.status in FINISHED_STATUSES or run.chunks_total is not None:
            return
        importer = await session.get(Importer, run.importer_id)
        assert importer is not None  # runs cascade with their importer
        definition = ImporterDefinition.model_validate(importer.definition)
        if run.status == "pending":
            await session.execute(
                text(
                    "UPDATE runs SET status = 'processing', started_at = coalesce(started_at, "
                    "now()), updated_at = now() WHERE id = :id"
                ),
                {"id": run_id},
            )
        resume_from = run.chunks_written
        parent_id, kind, file_key = run.parent_run_id, run.kind, run.file_key
        filename, parent_columns = run.original_filename or "", None
        if parent_id is not None:
            parent = await session.get(Run, parent_id)
            parent_columns = list(parent.columns or []) if parent else []
        await _check_claim(session, run_id, claim)
        await events.add(
            session,
            run_id,
            "split_started",
            attempt=claim and claim.attempt,
            worker=claim and claim.worker_id,
            resumed_from=resume_from,
        )
        reused = await _reuse_ledger(session, run, importer) if resume_from == 0 else None

    if reused is not None:
        await asyncio.gather(
            *(enqueue_quietly(enqueue_chunk, queue, run_id, index) for index in range(reused))
        )
        async with unit_of_work(factory) as session:
            await lifecycle.maybe_finalize(session, run_id, definition)
        return
    storage = storage_of(settings)
    saved = await load_checkpoint(storage, run_id, definition, resume_from) if resume_from else None

    def store_and_checkpoints(splitter: Splitter) -> tuple[_Store, _Checkpoints]:
        start = 0 if saved is None else saved.at.index
        store = _Store(factory, queue, settings, run_id, resume_from, claim, start)
        every_s = settings.split_checkpoint_seconds
        return store, _Checkpoints(storage, run_id, definition, splitter, every_s)

    try:
        if kind == "retry":
            assert parent_id is not None and parent_columns is not None
            splitter = Splitter(definition, parent_columns, saved)
            store, checkpoints = store_and_checkpoints(splitter)
            _log_resume(run_id, resume_from, saved)
            after = 0 if saved is None else saved.at.offset
            rows = _parent_failed_rows(factory, parent_id, after)
            await _split(store, definition, splitter, parent_columns, rows, checkpoints, saved)
        else:
            if file_key is None:
                raise ReadError("The run has no input file.")
            fmt, sheet = definition.format, definition.source.sheet
            async with storage.local_file(file_key) as path:
                with open_table(path, fmt, filename=filename, sheet=sheet) as table:
                    if isinstance(table, CsvTable) and table.position is not None:
                        splitter = Splitter(definition, table.columns, saved)
                        store, checkpoints = store_and_checkpoints(splitter)
                        _log_resume(run_id, resume_from, saved)
                        if saved is not None:
                            table.seek(saved.at.offset, saved.at.lines)
                        await _split_ranges(
                            store, definition, splitter, table, path, checkpoints, saved
                        )
                    else:
                        # Rows parsed from the start (XLSX, JSON): chunks stored are passed over.
                        splitter = Splitter(definition, table.columns)
                        store = _Store(factory, queue, settings, run_id, resume_from, claim)
                        _log_resume(run_id, resume_from, None)
                        rows = _aiter(_numbered(table.rows()))
                        await _split(store, definition, splitter, table.columns, rows)
    except (ReadError, MissingColumns) as exc:
        async with unit_of_work(factory) as session:
            await lifecycle.fail_run(session, run_id, str(exc))
    except FileNotFoundError:
        async with unit_of_work(factory) as session:
            await lifecycle.fail_run(session, run_id, "The run's input file is missing.")


def _log_resume(run_id: int, stored: int, saved: Checkpoint | None) -> None:
    if not stored:
        return
    if saved is None:
        log.info("run %s: the split reads its input again, passing over %s chunks", run_id, stored)
        return
    at = saved.at
    log.info(
        "run %s: the split goes on from chunk %s (%s rows read, offset %s), %s chunks stored",
        run_id,
        at.index,
        at.total,
        at.offset,
        stored,
    )


# An earlier run of the importer whose input was the same file, split under the importer's
# current definition into byte ranges, all of which it stored.
_SAME_INPUT = """
SELECT d.id, d.chunks_total FROM runs d
WHERE d.importer_id = :importer AND d.id <> :id AND d.kind <> 'retry'
  AND d.file_sha256 = :sha AND d.file_size = :size AND d.created_at >= :defined_at
  AND d.chunks_total IS NOT NULL AND NOT d.cancel_requested
  AND d.status IN ('processing', 'completed', 'completed_with_errors')
  AND d.chunks_total = (SELECT count(*) FROM run_chunks c
                        WHERE c.run_id = d.id AND c.byte_start IS NOT NULL)
ORDER BY d.id DESC LIMIT 1
"""


async def _reuse_ledger(session: AsyncSession, run: Run, importer: Importer) -> int | None:
    """Split a file that an earlier run of the importer split already by copying that run's
    chunk ledger: its byte ranges and repeated-key rows are a function of the file's bytes
    and the definition alone (should the way files are split change, ledgers split the old
    way must stop qualifying). Every row is still read and applied by its chunk job. Returns
    the number of chunks, or None when there is no such run."""
    if run.kind == "retry" or run.file_sha256 is None:
        return None
    found = await session.execute(
        text(_SAME_INPUT),
        {
            "importer": importer.id,
            "id": run.id,
            "sha": run.file_sha256,
            "size": run.file_size,
            "defined_at": importer.updated_at,
        },
    )
    row = found.first()
    if row is None:
        return None
    donor, chunks = row
    copied = await session.execute(
        text(
            "INSERT INTO run_chunks (run_id, index, status, first_row, row_count, attempts, "
            "byte_start, byte_end, duplicate_rows) SELECT :id, index, 'pending', first_row, "
            "row_count, 0, byte_start, byte_end, duplicate_rows FROM run_chunks "
            "WHERE run_id = :donor ON CONFLICT DO NOTHING"
        ),
        {"id": run.id, "donor": donor},
    )
    if copied.rowcount != chunks:  # type: ignore[attr-defined]
        # The earlier run was pruned meanwhile: split the file after all.
        await session.execute(text("DELETE FROM run_chunks WHERE run_id = :id"), {"id": run.id})
        return None
    total = await session.scalar(
        text(
            "UPDATE runs r SET total = d.total, columns = d.columns, chunks_written = :chunks, "
            "chunks_total = :chunks, updated_at = now() FROM runs d "
            "WHERE r.id = :id AND d.id = :donor RETURNING r.total"
        ),
        {"id": run.id, "donor": donor, "chunks": chunks},
    )
    await events.add(
        session,
        run.id,
        "split_finished",
        rows=total,
        chunks=chunks,
        bytes=run.file_size,
        reused_from=donor,
        blocks=None,
    )
    log.info("run %s: input identical to run %s's, its %s chunks reused", run.id, donor, chunks)
    return int(chunks)


async def _aiter(rows: Iterator[Any]) -> AsyncIterator[InputRow]:
    for item in rows:
        yield item


class _Store:
    """Stores a run's chunks in order: their ledger rows and the run's progress in one
    transaction, then their apply jobs. Chunks are stored in batches, so that the splitter,
    which shares its worker with chunk jobs, yields to them rarely: the first chunk at once
    (work starts early), then every FLUSH_CHUNKS chunks or FLUSH_SECONDS. Chunks an earlier
    attempt stored are passed over; a split that goes on from a checkpoint starts at its
    chunk (`start`)."""

    FLUSH_CHUNKS = 16
    FLUSH_SECONDS = 0.05

    def __init__(
        self,
        factory: async_sessionmaker[AsyncSession],
        queue: ArqRedis,
        settings: Settings,
        run_id: int,
        resume_from: int,
        claim: chunks.Claim | None = None,
        start: int = 0,
    ) -> None:
        self.factory, self.queue, self.storage = factory, queue, storage_of(settings)
        self.run_id, self.resume_from, self.claim = run_id, resume_from, claim
        self.hold_s = settings.test_split_hold_seconds
        self.index = self.stored = start  # the next chunk's index; the chunks stored
        self.pending: list[dict[str, Any]] = []
        self.flushed_at = 0.0
        self.blocks = 0  # chunks this attempt cut from blocks (`_Cuts`), not row by row

    async def chunk(
        self,
        first_row: int,
        count: int,
        total: int,
        columns: list[str],
        *,
        rows: list[chunks.RawRow] | None = None,
        span: tuple[int, int] | None = None,
        repeated: list[int] | None = None,
    ) -> bool:
        """Add the next chunk: its rows, or its byte range. True when the run was cancelled."""
        index, self.index = self.index, self.index + 1
        if index < self.resume_from:
            return False
        if rows is not None:
            await chunks.write_payload(self.storage, self.run_id, index, rows)
        start, end = span or (None, None)
        self.pending.append(
            {
                "run": self.run_id,
                "index": index,
                "first": first_row,
                "count": count,
                "start": start,
                "end": end,
                "repeated": repeated or None,
            }
        )
        due = time.monotonic() - self.flushed_at >= self.FLUSH_SECONDS
        if len(self.pending) >= self.FLUSH_CHUNKS or due:
            return await self.flush(total, columns)
        return False

    async def flush(self, total: int, columns: list[str]) -> bool:
        """Store the pending chunks; True when the run was cancelled."""
        if not self.pending:
            return False
        if self.hold_s:
            await asyncio.sleep(self.hold_s)
        pending, self.pending = self.pending, []
        async with unit_of_work(self.factory) as session:
            await _check_claim(session, self.run_id, self.claim)
            await session.execute(
                text(
                    "INSERT INTO run_chunks (run_id, index, status, first_row, row_count, "
                    "attempts, byte_start, byte_end, duplicate_rows) VALUES (:run, :index, "
                    "'pending', :first, :count, 0, :start, :end, :repeated) "
                    "ON CONFLICT DO NOTHING"
                ),
                pending,
            )
            flag = await session.scalar(
                text(
                    "UPDATE runs SET chunks_written = :written, total = :total, "
                    "columns = CAST(:columns AS jsonb), updated_at = now() "
                    "WHERE id = :id RETURNING cancel_requested"
                ),
                {
                    "id": self.run_id,
                    "written": pending[-1]["index"] + 1,
                    "total": total,
                    "columns": json_dumps(columns),
                },
            )
        self.stored = pending[-1]["index"] + 1
        await asyncio.gather(
            *(enqueue_quietly(enqueue_chunk, self.queue, self.run_id, c["index"]) for c in pending)
        )
        self.flushed_at = time.monotonic()
        return bool(flag)

    async def finish(
        self, definition: ImporterDefinition, total: int, columns: list[str], *, cancelled: bool
    ) -> None:
        if not cancelled:
            await self.flush(total, columns)
        async with unit_of_work(self.factory) as session:
            await _check_claim(session, self.run_id, self.claim)
            split = (
                await session.execute(
                    text(
                        "UPDATE runs SET chunks_total = chunks_written, total = :total, "
                        "columns = CAST(:columns AS jsonb), updated_at = now() "
                        "WHERE id = :id AND chunks_total IS NULL "
                        "RETURNING chunks_total, file_size"
                    ),
                    {"id": self.run_id, "total": total, "columns": json_dumps(columns)},
                )
            ).first()
            if split is not None:
                await events.add(
                    session,
                    self.run_id,
                    "split_finished",
                    rows=total,
                    chunks=split.chunks_total,
                    bytes=split.file_size,
                    reused_from=None,
                    blocks=self.blocks,
                )
            await lifecycle.maybe_finalize(session, self.run_id, definition)


async def _split(
    store: _Store,
    definition: ImporterDefinition,
    splitter: Splitter,
    columns: list[str],
    rows: AsyncIterator[InputRow],
    checkpoints: _Checkpoints | None = None,
    saved: Checkpoint | None = None,
) -> None:
    """Rows into payload chunks. `columns` may grow while rows are read (JSON objects). With
    `checkpoints`, rows come in row-number order, which is what a checkpoint goes on from."""
    size = definition.chunk_size or PAYLOAD_ROWS
    batch: list[chunks.RawRow] = []
    total = 0 if saved is None else saved.at.total
    cancelled = False

    def marked(batch: list[chunks.RawRow]) -> list[chunks.RawRow]:
        flags = splitter.duplicates(
            [data if error is None else None for _, data, error, _ in batch]
        )
        return [
            (n, data, error, flag) for (n, data, error, _), flag in zip(batch, flags, strict=True)
        ]

    async for number, data, error in rows:
        batch.append((number, data, error, False))
        total += 1
        if len(batch) >= size:
            batch = marked(batch)
            cancelled = await store.chunk(batch[0][0], len(batch), total, columns, rows=batch)
            if checkpoints is not None and checkpoints.due(store):
                await checkpoints.save(Position(store.index, batch[-1][0], 0, total, 0))
            batch = []
            if cancelled:
                break
    if cancelled:
        columns = list(columns)  # those of the rows stored: JSON's grow while rows are read
        total += await _count_rest(rows)
    elif batch:
        batch = marked(batch)
        await store.chunk(batch[0][0], len(batch), total, columns, rows=batch)
    await store.finish(definition, total, columns, cancelled=cancelled)


class _Cuts:
    """Where a CSV file's byte-range chunks end, found without parsing rows in Python: a block
    of about CHUNK_BYTES is cut after its last line break outside quotes (by the parity of the
    quotes before it), and polars parses the block (`frames.read`) for its row count and, with
    `Splitter.duplicates_of_frame`, its repeated keys. The parity tells quotes apart only where
    every quote belongs to a quoted field as the csv reader sees one (opening a field, closing
    it, or doubled inside it); a block with any other quote, or one that `frames.read`
    declines, is read the per-row way instead. A block of more than `cap` rows is cut after
    its `cap`th, and later blocks are sized to hold about `cap` rows."""

    def __init__(self, raw: BinaryIO, delimiter: str, cap: int) -> None:
        self.raw, self.cap = raw, cap
        self.target = CHUNK_BYTES
        d = re.escape(delimiter.encode())
        # A quoted field: opened after a delimiter or a line break, closed before one, its
        # quotes doubled inside. The pattern starts with its quote, which re finds fast.
        self._quoted = re.compile(
            b'"(?<=[' + d + b'\\n]")[^"]*(?:""[^"]*)*"(?=[' + d + b"\\r\\n]|$)"
        )

    def block(self, at: int) -> bytes:
        """The whole rows from byte `at` on, about `target` bytes of them (b"" at the end)."""
        self.raw.seek(at)
        data = self.raw.read(self.target)
        while len(data) >= self.target:  # not the file's end: cut after a whole row
            cut = _last_row_end(data)
            if cut is not None:
                return data[:cut]
            more = self.raw.read(self.target)  # a row longer than the block
            if not more:
                break
            data += more
        return _without_blank_tail(data)  # the file's end

    def well_quoted(self, data: bytes) -> bool:
        return b'"' not in data or b'"' not in self._quoted.sub(b"", b"\n" + data)

    def fit(self, data: bytes, rows: int) -> None:
        """Size later blocks, by this block's row length, to hold a few more than `cap` rows
        (a block is cut after its `cap`th row), or CHUNK_BYTES."""
        if rows:
            fitting = len(data) * self.cap * 21 // (rows * 20)
            self.target = max(64 * 1024, min(CHUNK_BYTES, fitting))


def _without_blank_tail(data: bytes) -> bytes:
    """The end of a file without the blank lines after its last row (files often end so):
    they are no rows, and `frames.read` would decline the block for them. They are left to
    the csv reader, as a block of their own."""
    body = data.rstrip(b"\r\n")
    if not body or len(body) == len(data):
        return data
    tail = data[len(body) :]
    return body + (b"\r\n" if tail.startswith(b"\r\n") else tail[:1])


def _last_row_end(data: bytes) -> int | None:
    """The offset after the last line break of `data` with an even count of quotes before it
    (`data` starts where a row does)."""
    end, odd = len(data), data.count(b'"') & 1
    while (brk := data.rfind(b"\n", 0, end)) >= 0:
        odd ^= data.count(b'"', brk, end) & 1
        if not odd:
            return brk + 1
        end = brk
    return None


def _row_end(data: bytes, rows: int) -> int:
    """The offset after the `rows`th row of `data` (whole rows, quotes as `_Cuts` takes them)."""
    at = odd = 0
    for _ in range(rows):
        while True:
            brk = data.index(b"\n", at)
            odd ^= data.count(b'"', at, brk) & 1
            at = brk + 1
            if not odd:
                break
    return at


@dataclass
class _At:
    """Where the split of a CSV file stands: the next row's byte offset and number, the rows
    read, the file's lines before `offset`."""

    offset: int
    first: int
    total: int
    lines: int


async def _split_ranges(
    store: _Store,
    definition: ImporterDefinition,
    splitter: Splitter,
    table: CsvTable,
    path: Path,
    checkpoints: _Checkpoints,
    saved: Checkpoint | None = None,
) -> None:
    """A CSV file into byte-range chunks, with the rows of each that repeat a key; from the
    checkpoint `saved`, where the table was moved to, when there is one. Blocks that `_Cuts`
    can take are chunks of their own; the rest are read by the csv reader (`_read_rows`)."""
    columns = table.columns
    assert table.position is not None
    if saved is None:
        at = _At(table.position, 1, 0, table.lines_read)
    else:
        at = _At(table.position, saved.at.first, saved.at.total, saved.at.lines)
    cap = definition.chunk_size or AUTO_ROWS
    fast = (
        cap >= frames.MIN_ROWS
        and splitter.reads_frames
        and table.codec == "utf-8"
        and len(table.delimiter) == 1
    )
    cancelled, declined = False, 0  # declined: blocks in a row read the per-row way
    with path.open("rb") as raw:
        cuts = _Cuts(raw, table.delimiter, cap)
        while True:
            until = None  # the per-row way to the end of the file
            if fast:
                data = cuts.block(at.offset)
                if not data:
                    break
                frame = None
                if cuts.well_quoted(data):
                    frame = frames.read(data, columns, table.delimiter, table.codec)
                if frame is not None:
                    cuts.fit(data, frame.height)
                    if frame.height > cap:  # the rest is the next block's
                        data, frame = data[: _row_end(data, cap)], frame.head(cap)
                    span = (at.offset, at.offset + len(data))
                    rows = frame.height
                    lines = at.lines + data.count(b"\n")
                    at = _At(span[1], at.first + rows, at.total + rows, lines)
                    if cancelled:
                        continue  # counted, not stored
                    flags = splitter.duplicates_of_frame(frame)
                    first = at.first - rows
                    repeated = [first + i for i, flag in enumerate(flags) if flag]
                    cancelled = await store.chunk(
                        first, rows, at.total, columns, span=span, repeated=repeated
                    )
                    store.blocks, declined = store.blocks + 1, 0
                    if checkpoints.due(store):
                        await checkpoints.save(
                            Position(store.index, at.offset, at.first, at.total, at.lines)
                        )
                    continue
                until = at.offset + len(data)
                declined += 1
                # A file whose blocks polars keeps declining (a column of 5'10"): row by row.
                fast = declined < GIVE_UP_AFTER
            table.seek(at.offset, at.lines)
            at, cancelled, ended = await _read_rows(
                store, splitter, table, at, cap, until, checkpoints, cancelled
            )
            if ended:
                break
    await store.finish(definition, at.total, columns, cancelled=cancelled)


async def _read_rows(
    store: _Store,
    splitter: Splitter,
    table: CsvTable,
    at: _At,
    cap: int,
    until: int | None,
    checkpoints: _Checkpoints,
    cancelled: bool,
) -> tuple[_At, bool, bool]:
    """The csv reader's rows from `at` (where the table stands) into chunks of `cap` rows,
    up to the first row that ends at `until` or after it (None: the file's end). Once the run
    is `cancelled`, rows are only counted, and a part that cannot be read ends the count, not
    the run. Returns where it stopped, whether the run was cancelled, and whether the file
    ended."""
    columns, width = table.columns, len(table.columns)
    start, first, total, end = at.offset, at.first, at.total, at.offset
    keyed: list[list[str] | None] = []  # the chunk's rows (None for a ragged one)

    async def store_chunk() -> bool:
        flags = splitter.duplicates_of(keyed)
        repeated = [first + i for i, flag in enumerate(flags) if flag]
        span = (start, end)
        return await store.chunk(first, len(keyed), total, columns, span=span, repeated=repeated)

    ended = True
    try:
        for end, cells in table.row_ends():
            total += 1
            if cancelled:
                if total % _COUNT_BATCH == 0:
                    await asyncio.sleep(0)  # chunk jobs share the worker
            else:
                # A ragged row, or a quote never closed, is an error row when the chunk is
                # applied: it has no key.
                keyed.append(cells if cells is not None and len(cells) == width else None)
                if len(keyed) >= cap:
                    cancelled = await store_chunk()
                    first, start, keyed = first + len(keyed), end, []
                    if checkpoints.due(store):
                        position = Position(store.index, end, first, total, table.lines_read)
                        await checkpoints.save(position)
            if until is not None and end >= until:
                ended = False
                break
    except ReadError:
        if not cancelled:
            raise
    if keyed and not cancelled:
        cancelled = await store_chunk()
        first += len(keyed)
    return _At(end, first, total, table.lines_read), cancelled, ended


async def _count_rest(rows: AsyncIterator[Any]) -> int:
    """The rows left after a cancel, read as the chunks' rows are (a CSV file's with the csv
    reader) but neither keyed nor stored. The event loop gets a turn now and then: chunk jobs
    share the worker. A part that cannot be read ends the count, not the run: the run was
    cancelled before it would have failed on it."""
    count = 0
    try:
        async for _ in rows:
            count += 1
            if count % _COUNT_BATCH == 0:
                await asyncio.sleep(0)
    except ReadError:
        pass
    return count
