"""JSON and NDJSON readers.

JSON: a top-level array of objects, or an object whose first array-valued key holds them
(`{"data": [...], "total": 2}`), streamed with ijson (yajl2 C backend). `use_float=True` is
not only about types: with Decimals, ijson 3.6's C backend crashes the process on an integer of
over 4,300 digits; with floats it reports "integer overflow" past 64 bits. A parse failure of any
kind (malformed text, NaN, a number out of range, nesting deeper than MAX_DEPTH) raises
ReadError, since the stream cannot resume after it.

NDJSON: one object per line with orjson; each line stands alone, so a bad line (including
NaN, an out-of-range number or deep nesting) is a per-row error and reading goes on.

Columns are object keys in order of first appearance; rows are read on opening up to the first
object, so that `columns` is filled from the start, and the list grows while rows are read. A
file that begins with row errors (a bad line, an item that is not an object) is read again from
the start after that object; one that holds no object at all cannot be read (ReadError).
"""

from __future__ import annotations

import codecs
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import accumulate, chain
from pathlib import Path
from typing import Any, BinaryIO

import ijson
import orjson

from app.pipeline.readers.base import MAX_LINE_CHARS, SNIFF_BYTES, ReadError, reject_binary

# Levels of nesting a row may hold, the row object itself being level 1.
MAX_DEPTH = 64
_NOT_ARRAY = "The JSON file must hold an array of objects."
_LINE_PREVIEW_CHARS = 200
_INFINITE = "number is infinity when parsed as double"
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'"[]{}')))
_BRACKET_STEP = [0] * 256
_BRACKET_STEP[ord("[")] = _BRACKET_STEP[ord("{")] = 1
_BRACKET_STEP[ord("]")] = _BRACKET_STEP[ord("}")] = -1


class _StreamTable(ABC):
    """Rows from `_read()`, read ahead to the first object so that `columns` is known on opening
    (the header the splitter checks must come from rows that could be read)."""

    def __init__(self) -> None:
        self.columns: list[str] = []
        self._seen: set[str] = set()
        self._rows = self._read()
        first = next(self._rows, None)
        self._ahead: list[tuple[dict[str, Any], str | None]] = [] if first is None else [first]
        if first is not None and first[1] is not None:
            # Scanned, not kept: a file may open with any number of bad rows.
            if all(error is not None for _, error in self._rows):
                raise ReadError(self._no_object(first[1]))
            self._rewind()
            self._rows, self._ahead = self._read(), []

    def rows(self) -> Iterator[tuple[dict[str, Any], str | None]]:
        return chain(self._ahead, self._rows)

    @abstractmethod
    def _read(self) -> Iterator[tuple[dict[str, Any], str | None]]: ...

    @abstractmethod
    def _rewind(self) -> None:
        """Makes the next `_read()` start again at the first row."""

    @abstractmethod
    def _no_object(self, first_error: str) -> str:
        """The ReadError message for a file whose every row is an error."""

    def _add_columns(self, item: dict[str, Any]) -> None:
        if not item.keys() <= self._seen:
            for key in item:
                if key not in self._seen:
                    self._seen.add(key)
                    self.columns.append(key)


class JsonTable(_StreamTable):
    def __init__(self, open_items: Callable[[], Iterator[Any]]) -> None:
        self._open_items = open_items
        self._items = open_items()
        super().__init__()

    def _rewind(self) -> None:
        self._items = self._open_items()

    def _no_object(self, first_error: str) -> str:
        return "No item of the JSON array is a JSON object."

    def _read(self) -> Iterator[tuple[dict[str, Any], str | None]]:
        count = 0
        try:
            for count, item in enumerate(self._items, 1):  # noqa: B007 (read in the except)
                if type(item) is dict:
                    self._add_columns(item)
                    yield item, None
                else:
                    yield {"_value": item}, "Item is not a JSON object."
        except ijson.JSONError as exc:
            raise _parse_error(exc, count) from exc


class NdjsonTable(_StreamTable):
    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._start = stream.tell()
        super().__init__()

    def _rewind(self) -> None:
        self._stream.seek(self._start)

    def _no_object(self, first_error: str) -> str:
        return f"No line of the NDJSON file is a JSON object; the first says: {first_error}"

    def _read(self) -> Iterator[tuple[dict[str, Any], str | None]]:
        readline = self._stream.readline
        loads = orjson.loads
        while line := readline(MAX_LINE_CHARS):
            if len(line) >= MAX_LINE_CHARS:
                raise ReadError(f"A line is longer than {MAX_LINE_CHARS:,} bytes.")
            if line.isspace():
                continue
            try:
                value = loads(line)
            except orjson.JSONDecodeError as exc:
                # A double is all orjson reads past 64 bits; a number beyond it is valid JSON.
                if exc.msg == _INFINITE:
                    yield _line_preview(line), "Line holds a number too large to read."
                else:
                    yield _line_preview(line), f"Line is not valid JSON: {exc}."
                continue
            if type(value) is not dict:
                yield {"_value": value}, "Line is not a JSON object."
            # Counting brackets is cheap and bounds the depth from above (strings may hold some).
            elif line.count(b"{") + line.count(b"[") > MAX_DEPTH and _deeper_than(value, MAX_DEPTH):
                yield _line_preview(line), f"Line is nested deeper than {MAX_DEPTH} levels."
            else:
                self._add_columns(value)
                yield value, None


@contextmanager
def open_json(path: Path) -> Iterator[JsonTable]:
    with path.open("rb") as stream:
        start = _skip_bom(stream, "JSON")
        head = stream.read(SNIFF_BYTES).lstrip()[:1]
        if head == b"[":
            prefix, max_depth = "item", MAX_DEPTH + 1
        elif head == b"{":
            stream.seek(start)
            prefix, max_depth = f"{_array_key(stream)}.item", MAX_DEPTH + 2
        else:
            raise ReadError(_NOT_ARRAY)

        def open_items() -> Iterator[Any]:
            stream.seek(start)
            items: Iterator[Any] = ijson.items(
                _DepthGuard(stream, max_depth), prefix, use_float=True
            )
            return items

        yield JsonTable(open_items)


@contextmanager
def open_ndjson(path: Path) -> Iterator[NdjsonTable]:
    with path.open("rb") as stream:
        _skip_bom(stream, "NDJSON")
        yield NdjsonTable(stream)


def _skip_bom(stream: BinaryIO, expected: str) -> int:
    """Checks the head of the file and leaves `stream` after a UTF-8 BOM; returns that offset."""
    head = stream.read(SNIFF_BYTES)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ReadError(f"The {expected} file must be UTF-8 text, not UTF-16.")
    reject_binary(head, expected)
    start = len(codecs.BOM_UTF8) if head.startswith(codecs.BOM_UTF8) else 0
    stream.seek(start)
    return start


def _array_key(stream: BinaryIO) -> str:
    """The first top-level key of the object in `stream` whose value is an array."""
    key = None
    try:
        for prefix, event, value in ijson.parse(_DepthGuard(stream, MAX_DEPTH + 2), use_float=True):
            if prefix == "" and event == "map_key":
                key = value
            elif event == "start_array" and prefix == key:
                return str(key)
            elif prefix == "" and event == "end_map":
                break
    except ijson.JSONError as exc:
        raise _parse_error(exc, 0) from exc
    raise ReadError(_NOT_ARRAY)


def _parse_error(exc: ijson.JSONError, items_read: int) -> ReadError:
    # yajl's message is "<error>\n<text around it>\n<pointer>".
    reason, _, context = str(exc).partition("\n")
    if "integer overflow" in reason:
        reason = "an integer is outside the 64-bit range"
    elif "floating point) overflow" in reason:
        reason = "a number is too large"
    elif context.strip():
        reason = f"{reason.rstrip('.')} near {context.strip().splitlines()[0]!r}"
    return ReadError(f"The JSON file is not valid after item {items_read:,}: {reason}.")


def _line_preview(line: bytes) -> dict[str, Any]:
    return {"_line": line.decode("utf-8", "replace").rstrip("\r\n")[:_LINE_PREVIEW_CHARS]}


def _deeper_than(value: Any, limit: int) -> bool:
    level = [value]
    for _ in range(limit):
        level = [
            child
            for container in level
            for child in (container.values() if type(container) is dict else container)
            if type(child) is dict or type(child) is list
        ]
        if not level:
            return False
    return True


class _DepthGuard:
    """A read-only file wrapper that raises ReadError once the JSON nests deeper than
    `max_depth`, before ijson sees the bytes: ijson keeps a path string per open level, so its
    memory grows with the square of the depth (a 400 KB file of '[' exhausts gigabytes)."""

    def __init__(self, stream: BinaryIO, max_depth: int) -> None:
        self._stream = stream
        self._max_depth = max_depth
        self._depth = 0
        self._in_string = False
        self._escaped = False  # the previous chunk ended on a backslash inside a string

    def read(self, size: int = -1) -> bytes:
        chunk = self._stream.read(size)
        if chunk:
            self._scan(chunk)
        return chunk

    def _scan(self, chunk: bytes) -> None:
        if self._escaped:
            chunk = chunk[1:]
            self._escaped = False
        if b"\\" in chunk:
            # Escapes occur only inside strings; without them every quote opens or closes one.
            chunk = _ESCAPE.sub(b"", chunk)
            if chunk.endswith(b"\\"):
                self._escaped = True
                chunk = chunk[:-1]
        # Adjacent quotes toggle the in-string state twice, so dropping them changes nothing; it
        # leaves only quotes around strings that hold brackets, which keeps the split small.
        structure = chunk.translate(None, _NOT_STRUCTURE).replace(b'""', b"")
        if b'"' in structure:
            pieces = structure.split(b'"')
            brackets = b"".join(pieces[1::2] if self._in_string else pieces[0::2])
            if len(pieces) % 2 == 0:
                self._in_string = not self._in_string
        elif self._in_string:
            return
        else:
            brackets = structure
        opened = brackets.count(b"[") + brackets.count(b"{")
        if self._depth + opened > self._max_depth:
            steps = map(_BRACKET_STEP.__getitem__, brackets)
            if max(accumulate(steps, initial=self._depth)) > self._max_depth:
                raise ReadError(f"The JSON file is nested deeper than {MAX_DEPTH} levels.")
        self._depth += 2 * opened - len(brackets)
