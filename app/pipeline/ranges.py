"""Byte ranges of a run's CSV input, read from the storage: a chunk's rows, or rows shown back
from the input (the row log keeps no copy of a successful row of a byte-range chunk).

A range is one ranged read (an S3 GET with a Range header, or a seek), parsed here; how the
file is encoded and delimited is found once per input and process from its first bytes.
"""

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.core.storage import Storage
from app.pipeline.readers.csv_reader import (
    SAMPLE_BYTES,
    WHOLE_RANGE_BYTES,
    CsvSlice,
    count_line_breaks,
    layout_of,
    parse_slice,
    read_slice,
)

Rows = list[tuple[dict[str, Any] | list[str], str | None]]

# Inputs are never changed in place (a new upload gets a new key): their layout is cached,
# by storage, key and size.
_layouts: dict[tuple[int, str, int], tuple[str, str]] = {}
_LAYOUTS = 256
# The line breaks before a range are counted in blocks of this size.
_COUNT_BLOCK_BYTES = 4 * 1024 * 1024


class _CountBreaks(Exception):
    """The range ends the file with a quote left open: its line must be counted."""


def _ask() -> int:
    raise _CountBreaks


async def _layout(storage: Storage, key: str, size: int) -> tuple[str, str]:
    cached = (id(storage), key, size)
    layout = _layouts.get(cached)
    if layout is None:
        head = await storage.read_range(key, 0, SAMPLE_BYTES)
        if len(_layouts) >= _LAYOUTS:
            _layouts.clear()
        layout = _layouts[cached] = layout_of(head, complete=len(head) < SAMPLE_BYTES)
    return layout


async def _breaks_before(storage: Storage, key: str, end: int) -> int:
    blocks = [
        await storage.read_range(key, start, min(end, start + _COUNT_BLOCK_BYTES))
        for start in range(0, end, _COUNT_BLOCK_BYTES)
    ]
    return count_line_breaks(blocks)


@dataclass(frozen=True)
class Fetched:
    """The bytes of a byte range, read, and how to parse them."""

    data: bytes
    part: CsvSlice
    at_end: bool


async def fetch_range(
    storage: Storage, key: str, start: int, end: int, *, size: int
) -> Fetched | None:
    """Bytes [start, end) of the CSV input `key` (`size` bytes long), with its layout; None
    for a range too large to hold in memory (`read_range` reads it a line at a time)."""
    if end - start > WHOLE_RANGE_BYTES:
        return None
    codec, delimiter = await _layout(storage, key, size)
    data = await storage.read_range(key, start, end)
    return Fetched(data, CsvSlice(codec, delimiter, start, end), end >= size)


async def read_range(
    storage: Storage,
    key: str,
    columns: list[str],
    start: int,
    end: int,
    *,
    size: int,
    limit: int | None = None,
    offload: bool = False,
) -> Rows:
    """The rows of bytes [start, end) of the CSV input `key` (`size` bytes long), as
    `read_slice` gives them with `cells`: the first `limit` of them, if given. `offload`
    parses in a thread, off an event loop that serves requests; a worker's chunk parses in
    line (the thread hop cost its throughput 2 to 4 %)."""
    fetched = await fetch_range(storage, key, start, end, size=size)
    if fetched is None:  # read a line at a time from a local copy
        codec, delimiter = await _layout(storage, key, size)
        async with storage.local_file(key) as path:
            part = CsvSlice(codec, delimiter, start, end)
            return read_slice(path, columns, part, limit=limit, cells=True)
    return await parse_range(storage, key, fetched, columns, limit=limit, offload=offload)


async def parse_range(
    storage: Storage,
    key: str,
    fetched: Fetched,
    columns: list[str],
    *,
    limit: int | None = None,
    offload: bool = False,
) -> Rows:
    """`read_range` of bytes already fetched from `key`."""
    parse = functools.partial(
        parse_slice, fetched.data, columns, fetched.part, at_end=fetched.at_end, limit=limit
    )

    async def rows(breaks_before: Callable[[], int]) -> Rows:
        if offload:
            return await asyncio.to_thread(parse, breaks_before=breaks_before)
        return parse(breaks_before=breaks_before)

    try:
        return await rows(_ask)
    except _CountBreaks:
        breaks = await _breaks_before(storage, key, fetched.part.start)
        return await rows(lambda: breaks)
