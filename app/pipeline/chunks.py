"""A chunk's payload: the parsed, validated rows of one slice of a run, stored in Postgres.

Rows travel as compact JSON arrays so that splitting and applying can run in different
workers (and survive a lost Redis): ``[row_number, original, data, key, errors, duplicate]``.
"""

from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(slots=True)
class ChunkRow:
    row_number: int
    original: dict[str, Any]
    data: dict[str, Any] | None  # typed fields; None when the row failed validation
    key: str | None
    errors: dict[str, Any] | None  # {"message": ..., "validation": {...}}
    # An earlier row of the same run had this key (on_duplicate decides what happens).
    duplicate: bool = False


def encode(rows: list[ChunkRow]) -> bytes:
    return orjson.dumps(
        [[r.row_number, r.original, r.data, r.key, r.errors, r.duplicate] for r in rows],
        default=str,
    )


def decode(payload: bytes) -> list[ChunkRow]:
    return [ChunkRow(*item) for item in orjson.loads(payload)]
