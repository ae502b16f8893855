"""A chunk's payload: the raw rows of one slice of a run, and the validated form they take
when the chunk is applied.

Payloads are objects in the storage (``chunks/<run>/<index>.json``, app.core.storage), written
before the chunk's ledger row is committed and removed after the chunk is applied: bulk rows
stay out of Postgres' WAL, while the ledger row in Postgres stays the truth. Rows are compact
JSON arrays: ``[row_number, original, read_error, duplicate]``. Validation happens when the
chunk is applied, so that it runs in parallel on every worker rather than in the splitter.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from app.core.storage import Storage


@dataclass(frozen=True)
class Claim:
    """A worker's claim on a split or chunk (app.worker.leases): its id, and which claim of
    that work it is (the ledger's attempt count)."""

    worker_id: str
    attempt: int


# A row's original data: a dict, or for a well-formed row of a CSV byte range its cells in
# the header's order, made a dict only where one is needed (`original_dict`).
Original = dict[str, Any] | list[str]

# row number, original data, read error (e.g. a ragged CSV row), duplicate of an earlier key
RawRow = tuple[int, Original, str | None, bool]


def original_dict(original: Original, columns: Sequence[str]) -> dict[str, Any]:
    if isinstance(original, dict):
        return original
    return dict(zip(columns, original, strict=True))


@dataclass(slots=True)
class ChunkRow:
    row_number: int
    original: Original
    data: dict[str, Any] | None  # typed fields; None when the row failed validation
    key: str | None
    errors: dict[str, Any] | None  # {"message": ..., "validation": {...}}
    # An earlier row of the same run had this key (on_duplicate decides what happens).
    duplicate: bool = False
    # The hash of the row's mapped cells under its importer definition (see prepare.py).
    input_hash: str | None = None


def encode(rows: list[RawRow]) -> bytes:
    # default=str: XLSX cells may be dates; they travel as ISO text, as in a CSV.
    return orjson.dumps(rows, default=str)


def decode(payload: bytes) -> list[RawRow]:
    rows: list[RawRow] = orjson.loads(payload)
    return rows


def run_prefix(run_id: int) -> str:
    """Where a run's chunk payloads (and its split's checkpoint) are stored."""
    return f"chunks/{run_id}"


def payload_key(run_id: int, index: int) -> str:
    return f"{run_prefix(run_id)}/{index}.json"


async def write_payload(storage: Storage, run_id: int, index: int, rows: list[RawRow]) -> None:
    await storage.put(payload_key(run_id, index), encode(rows))


async def read_payload(storage: Storage, run_id: int, index: int) -> list[RawRow]:
    return decode(await storage.read(payload_key(run_id, index)))


async def remove_run_payloads(storage: Storage, run_id: int) -> None:
    await storage.delete_prefix(run_prefix(run_id))
