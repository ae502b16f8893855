"""CSV reader: `csv.reader` over decoded lines, one dict per row.

Encoding: UTF-8 (BOM optional), UTF-16 LE/BE with BOM, else Windows-1252 when the first 64 KB
are not UTF-8. Delimiter: the most frequent of `, ; \\t |` outside quotes on the header line.

UTF-8 and Windows-1252 files are read as bytes and decoded line by line, so the reader knows
the byte offset where each row ends: a run's chunks are then byte ranges of the file
(`CsvSlice`), which chunk jobs parse in parallel, rather than rows copied into payloads. A
chunk job reads its range whole and splits it where the splitter split its lines.

A quote opened and never closed takes the rest of the file into its field. That row fails
(`Unterminated quoted field starting on line N`), in the split and in the chunk job alike;
a quote closed many lines later is a legal field holding line breaks.
"""

from __future__ import annotations

import csv
import itertools
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, TextIO, overload

from app.pipeline.readers.base import (
    MAX_COLUMNS,
    MAX_LINE_CHARS,
    ReadError,
    plural,
    sniff_text,
    unique_headers,
)

if TYPE_CHECKING:
    from _csv import Reader

SAMPLE_BYTES = 64 * 1024
_DELIMITERS = ",;\t|"
_CODEC_NAMES = {
    "utf-8-sig": "UTF-8",
    "utf-8": "UTF-8",
    "utf-16": "UTF-16",
    "cp1252": "Windows-1252",
}
_UTF8_BOM = b"\xef\xbb\xbf"
# A byte range up to this size is read at once, rather than a line at a time.
WHOLE_RANGE_BYTES = 32 * 1024 * 1024
# A lone CR ends a line too, as in text mode with newline='' (old Mac files).
_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_COUNT_BLOCK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class CsvSlice:
    """How to parse a byte range of a CSV file on its own: a chunk of a run."""

    codec: str  # "utf-8" | "cp1252"
    delimiter: str
    start: int
    end: int


class _ByteLines:
    """The lines of a byte stream, decoded, split where text mode with newline='' splits them
    (LF, CRLF, lone CR); `position` is the byte offset after the last line given out."""

    def __init__(self, raw: BinaryIO, codec: str, end: int | None = None) -> None:
        self.position = raw.tell()
        self.raw = raw
        self._codec = codec
        self._end = end

    def __iter__(self) -> Iterator[str]:
        readline, codec, end = self.raw.readline, self._codec, self._end
        while end is None or self.position < end:
            # Bounded by the range's end: a lone CR may end a row inside a line.
            line = readline(
                MAX_LINE_CHARS if end is None else min(MAX_LINE_CHARS, end - self.position)
            )
            if not line:
                return
            if len(line) >= MAX_LINE_CHARS:
                raise ReadError(f"A line is longer than {MAX_LINE_CHARS:,} characters.")
            if b"\r" in line[:-2]:
                for piece in _LONE_CR.split(line):
                    self.position += len(piece)
                    yield piece.decode(codec)
                continue
            self.position += len(line)
            yield line.decode(codec)


class _Ends:
    """Tells, for the lines given to a csv.reader, whether its last row is a quoted field
    never closed.

    Out of strict mode (which would also refuse a stray quote inside a field), csv.reader
    gives out the open field, with the rest of the input in it, as a last row when its lines
    run out; every other row ends with a line. So a row read after the lines ran out is that
    field's. Watching costs nothing per line: the mark is a generator chained after them."""

    def __init__(self, lines: Iterable[str]) -> None:
        self.lines = itertools.chain(lines, self._mark())
        self.ran_out = False  # read after each row: a row read now is an open quote's
        self.open_row: list[str] | None = None
        self.open_line = 0  # the line the open quote is on, counted from the first line given

    def _mark(self) -> Iterator[str]:
        self.ran_out = True
        yield from ()

    def closed(self, reader: Reader) -> Iterator[list[str]]:
        """The rows of `reader` but an unterminated last one, which is kept in `open_row`."""
        for row in reader:
            if self.ran_out:
                self.keep(reader, row)
                return
            yield row

    def keep(self, reader: Reader, row: list[str]) -> None:
        """Keep `row`, read after the lines ran out, as the open quote's."""
        # The open field is the row's last; the line breaks in it are those after its quote.
        field = row[-1]
        breaks = len(_LINE_BREAK.findall(field))
        ends_a_line = field.endswith(("\n", "\r"))
        self.open_row = row
        self.open_line = reader.line_num - breaks + ends_a_line


def _unterminated(line: int) -> str:
    return f"Unterminated quoted field starting on line {line:,}"


def _open_quote_row(columns: list[str], row: list[str], line: int) -> tuple[dict[str, Any], str]:
    return _ragged(columns, row), _unterminated(line)


class CsvTable:
    def __init__(
        self,
        columns: list[str],
        reader: Reader,
        codec: str,
        max_field_bytes: int,
        ends: _Ends,
        lines: _ByteLines | None = None,
        delimiter: str = ",",
    ) -> None:
        self.columns = columns
        self._reader = reader
        self._ends = ends
        self._codec = codec
        self._max_field_bytes = max_field_bytes
        self._lines = lines
        self.delimiter = delimiter
        self._line_base = 0  # lines before the first one read (see `seek`)

    @property
    def codec(self) -> str:
        return self._codec

    @property
    def position(self) -> int | None:
        """The byte offset where the last row read ends; None when the file is not read as
        bytes (UTF-16)."""
        return None if self._lines is None else self._lines.position

    @property
    def lines_read(self) -> int:
        """The file's lines up to where the last row read ends."""
        return self._line_base + self._reader.line_num

    def seek(self, position: int, lines_read: int) -> None:
        """Go on reading at the byte offset `position`, where a row ended, with `lines_read`
        lines before it (as `lines_read` told then): how a split goes on where an earlier
        split of the file stopped, without reading what is before."""
        assert self._lines is not None
        raw = self._lines.raw
        raw.seek(position)
        self._lines = _ByteLines(raw, self._codec)
        self._ends = _Ends(self._lines)
        self._reader = csv.reader(self._ends.lines, delimiter=self.delimiter)
        self._line_base = lines_read

    def rows(self) -> Iterator[tuple[dict[str, Any], str | None]]:
        reader, ends = self._reader, self._ends
        try:
            yield from _shaped(self.columns, ends.closed(reader))
            if ends.open_row is not None:
                yield _open_quote_row(self.columns, ends.open_row, ends.open_line)
        except csv.Error as exc:
            raise _csv_error(exc, reader.line_num, self._max_field_bytes) from exc
        except UnicodeDecodeError as exc:
            raise _decode_error(self._codec, reader.line_num) from exc

    def row_ends(self) -> Iterator[tuple[int, list[str] | None]]:
        """Each data row (as `rows()` counts them) as its cells and the byte offset where it
        ends, for a table read as bytes: the split of a file into byte ranges. An
        unterminated quoted field, which fails its row, comes as None."""
        assert self._lines is not None
        lines, reader, width, ends = self._lines, self._reader, len(self.columns), self._ends
        try:
            for row in reader:
                if ends.ran_out:
                    _ragged(self.columns, row)  # a row too wide fails the run here too
                    yield lines.position, None
                    return
                if len(row) != width:
                    if not any(cell.strip() for cell in row):
                        continue  # blank line
                    _ragged(self.columns, row)  # a row too wide fails the run here too
                yield lines.position, row
        except csv.Error as exc:
            raise _csv_error(exc, self.lines_read, self._max_field_bytes) from exc
        except UnicodeDecodeError as exc:
            raise _decode_error(self._codec, self.lines_read) from exc


@contextmanager
def open_csv(path: Path, *, max_field_bytes: int = 1_048_576) -> Iterator[CsvTable]:
    with path.open("rb") as raw:
        head = raw.read(SAMPLE_BYTES)
        codec, sample = sniff_text(head, complete=len(head) < SAMPLE_BYTES)
        delimiter = sniff_delimiter(sample)
        # The limit is process-wide in the csv module; every reader sets the value it needs.
        csv.field_size_limit(max_field_bytes)
        if codec == "utf-16":
            with path.open(encoding=codec, newline="") as stream:
                ends = _Ends(_bounded_lines(stream))
                reader = csv.reader(ends.lines, delimiter=delimiter)
                table = CsvTable([], reader, codec, max_field_bytes, ends)
                yield _with_header(table, max_field_bytes)
            return
        raw.seek(len(_UTF8_BOM) if head.startswith(_UTF8_BOM) else 0)
        codec = "utf-8" if codec == "utf-8-sig" else codec
        lines = _ByteLines(raw, codec)
        ends = _Ends(lines)
        reader = csv.reader(ends.lines, delimiter=delimiter)
        table = CsvTable([], reader, codec, max_field_bytes, ends, lines, delimiter)
        yield _with_header(table, max_field_bytes)


@overload
def read_slice(
    path: Path,
    columns: list[str],
    part: CsvSlice,
    *,
    limit: int | None = None,
    cells: Literal[False] = False,
    max_field_bytes: int = 1_048_576,
) -> list[tuple[dict[str, Any], str | None]]: ...


@overload
def read_slice(
    path: Path,
    columns: list[str],
    part: CsvSlice,
    *,
    limit: int | None = None,
    cells: Literal[True],
    max_field_bytes: int = 1_048_576,
) -> list[tuple[dict[str, Any] | list[str], str | None]]: ...


def read_slice(
    path: Path,
    columns: list[str],
    part: CsvSlice,
    *,
    limit: int | None = None,
    cells: bool = False,
    max_field_bytes: int = 1_048_576,
) -> list[tuple[Any, str | None]]:
    """The rows of one byte range of a file whose header was read before, as `rows()` gave
    them then (the first `limit` of them, if given); with `cells`, a row of the header's
    width comes as its list of cells rather than a dict. A range is one chunk, so it is read
    whole: when every row has the header's width (the common case), rows are built without
    a Python step per row. Only the range that ends the file can hold an unterminated quoted
    field; its rows are watched for one."""
    with path.open("rb") as raw:
        at_end = part.end >= os.fstat(raw.fileno()).st_size
        raw.seek(part.start)
        lines: Iterable[str]
        if part.end - part.start <= WHOLE_RANGE_BYTES:
            lines = _range_lines(raw.read(part.end - part.start), part.codec)
        else:
            lines = _ByteLines(raw, part.codec, part.end)
        return _range_rows(
            lines,
            columns,
            part,
            at_end=at_end,
            breaks_before=lambda: _line_breaks(raw, part.start),
            limit=limit,
            cells=cells,
            max_field_bytes=max_field_bytes,
        )


def parse_slice(
    data: bytes,
    columns: list[str],
    part: CsvSlice,
    *,
    at_end: bool,
    breaks_before: Callable[[], int],
    limit: int | None = None,
    max_field_bytes: int = 1_048_576,
) -> list[tuple[dict[str, Any] | list[str], str | None]]:
    """`read_slice` (with `cells`) of a byte range already read: `data`, the bytes of `part`;
    `at_end` when it ends the file; `breaks_before` counts the file's line breaks before it
    (asked only to name the line of a quote left open at the end of the file)."""
    return _range_rows(
        _range_lines(data, part.codec),
        columns,
        part,
        at_end=at_end,
        breaks_before=breaks_before,
        limit=limit,
        cells=True,
        max_field_bytes=max_field_bytes,
    )


def _range_lines(data: bytes, codec: str) -> Iterable[str]:
    # Split where _ByteLines splits (bytes.splitlines breaks at LF, CRLF and CR only).
    pieces = data.splitlines(keepends=True)
    if pieces and max(map(len, pieces)) >= MAX_LINE_CHARS:
        raise ReadError(f"A line is longer than {MAX_LINE_CHARS:,} characters.")
    return map(bytes.decode, pieces, itertools.repeat(codec))


def _range_rows(
    lines: Iterable[str],
    columns: list[str],
    part: CsvSlice,
    *,
    at_end: bool,
    breaks_before: Callable[[], int],
    limit: int | None,
    cells: bool,
    max_field_bytes: int,
) -> list[tuple[Any, str | None]]:
    csv.field_size_limit(max_field_bytes)
    ends = _Ends(lines) if at_end else None
    reader = csv.reader(lines if ends is None else ends.lines, delimiter=part.delimiter)
    source: Iterator[list[str]] = reader if ends is None else ends.closed(reader)
    result: list[tuple[Any, str | None]]
    try:
        rows = list(itertools.islice(source, limit))
        if rows and set(map(len, rows)) != {len(columns)}:
            # Ragged or blank rows among them; a blank line is no row, so read on.
            shaped = _shaped(columns, itertools.chain(rows, source), cells=cells)
            result = list(itertools.islice(shaped, limit))
        elif cells:
            result = list(zip(rows, itertools.repeat(None)))
        else:
            dicts = map(dict, map(zip, itertools.repeat(columns), rows))
            result = list(zip(dicts, itertools.repeat(None)))
    except csv.Error as exc:
        raise _csv_error(exc, reader.line_num, max_field_bytes) from exc
    except UnicodeDecodeError as exc:
        raise _decode_error(part.codec, reader.line_num) from exc
    if ends is not None and ends.open_row is not None and len(result) != limit:
        # Named by its line in the whole file, as the split of the file names it.
        line = breaks_before() + ends.open_line
        result.append(_open_quote_row(columns, ends.open_row, line))
    return result


def layout_of(head: bytes, *, complete: bool) -> tuple[str, str]:
    """The codec and delimiter of a CSV file (UTF-8 or Windows-1252), from its first
    `SAMPLE_BYTES` (`complete`: the whole file), as `open_csv` finds them."""
    codec, sample = sniff_text(head, complete=complete)
    return ("utf-8" if codec == "utf-8-sig" else codec), sniff_delimiter(sample)


def count_line_breaks(blocks: Iterable[bytes]) -> int:
    """The line breaks (LF, CRLF, lone CR) in the bytes of `blocks`, as `_ByteLines` splits
    lines."""
    count, after_cr = 0, False
    for block in blocks:
        count += block.count(b"\n") + block.count(b"\r") - block.count(b"\r\n")
        if after_cr and block.startswith(b"\n"):
            count -= 1  # a CRLF cut between two blocks
        after_cr = block.endswith(b"\r")
    return count


def _line_breaks(raw: BinaryIO, end: int) -> int:
    """The line breaks in the first `end` bytes of a UTF-8 or Windows-1252 file."""
    raw.seek(0)

    def blocks() -> Iterator[bytes]:
        left = end
        while left > 0 and (block := raw.read(min(left, _COUNT_BLOCK_BYTES))):
            left -= len(block)
            yield block

    return count_line_breaks(blocks())


@overload
def _shaped(
    columns: list[str], rows: Iterable[list[str]], *, cells: Literal[False] = False
) -> Iterator[tuple[dict[str, Any], str | None]]: ...


@overload
def _shaped(
    columns: list[str], rows: Iterable[list[str]], *, cells: bool
) -> Iterator[tuple[dict[str, Any] | list[str], str | None]]: ...


def _shaped(
    columns: list[str], rows: Iterable[list[str]], *, cells: bool = False
) -> Iterator[tuple[dict[str, Any] | list[str], str | None]]:
    """Parsed rows as (data, read error): a row of another width than the header's is an
    error row (its data a dict), and a blank line is no row."""
    width = len(columns)
    for row in rows:
        if len(row) == width:
            yield (row if cells else dict(zip(columns, row, strict=True))), None
            continue
        if not any(cell.strip() for cell in row):
            continue  # blank line
        yield _ragged(columns, row), f"Row has {plural(len(row), 'column')}, expected {width}."


def _with_header(table: CsvTable, max_field_bytes: int) -> CsvTable:
    """The table with its columns, read from the first non-blank row."""
    reader, ends = table._reader, table._ends
    try:
        header = next((row for row in reader if any(cell.strip() for cell in row)), None)
    except csv.Error as exc:
        raise _csv_error(exc, reader.line_num, max_field_bytes) from exc
    except UnicodeDecodeError as exc:
        raise _decode_error(table.codec, reader.line_num) from exc
    if header is None:
        raise ReadError("The file is empty.")
    if ends.ran_out:
        ends.keep(reader, header)
        raise ReadError(_unterminated(ends.open_line))
    if len(header) > MAX_COLUMNS:
        raise ReadError(f"The header has {len(header):,} columns, over the {MAX_COLUMNS:,} limit.")
    table.columns = unique_headers(header)
    return table


def sniff_delimiter(sample: str) -> str:
    """The candidate occurring most often outside quotes on the header line (earlier ones win
    ties); ',' when none occurs."""
    counts = dict.fromkeys(_DELIMITERS, 0)
    quoted = False
    for char in sample.lstrip("\r\n"):
        if char == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif char in "\r\n":
            break
        elif char in counts:
            counts[char] += 1
    best = max(_DELIMITERS, key=counts.__getitem__)
    return best if counts[best] else ","


def _bounded_lines(stream: TextIO) -> Iterator[str]:
    readline = stream.readline
    while line := readline(MAX_LINE_CHARS):
        if len(line) >= MAX_LINE_CHARS:
            raise ReadError(f"A line is longer than {MAX_LINE_CHARS:,} characters.")
        yield line


def _ragged(columns: list[str], row: list[str]) -> dict[str, Any]:
    if len(row) > MAX_COLUMNS:
        raise ReadError(f"A row has {len(row):,} columns, over the {MAX_COLUMNS:,} limit.")
    data: dict[str, Any] = dict(zip(columns, row, strict=False))
    for position, cell in enumerate(row[len(columns) :], 1):
        data[f"_extra_{position}"] = cell
    return data


def _csv_error(exc: csv.Error, line: int, max_field_bytes: int) -> ReadError:
    if "field larger than field limit" in str(exc):
        return ReadError(
            f"Line {line:,} has a field longer than {max_field_bytes:,} characters, "
            "the most a field may hold."
        )
    return ReadError(f"The CSV file cannot be read at line {line:,}: {exc}.")


def _decode_error(codec: str, line: int) -> ReadError:
    return ReadError(
        f"The file is not valid {_CODEC_NAMES[codec]} text (undecodable bytes near line {line:,})."
    )
