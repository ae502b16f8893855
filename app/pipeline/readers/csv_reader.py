"""CSV reader: `csv.reader` over a decoded text stream, one dict per row.

Encoding: UTF-8 (BOM optional), UTF-16 LE/BE with BOM, else Windows-1252 when the first 64 KB
are not UTF-8. Delimiter: the most frequent of `, ; \\t |` outside quotes on the header line.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

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

_SAMPLE_BYTES = 64 * 1024
_DELIMITERS = ",;\t|"
_CODEC_NAMES = {"utf-8-sig": "UTF-8", "utf-16": "UTF-16", "cp1252": "Windows-1252"}


class CsvTable:
    def __init__(
        self, columns: list[str], reader: Reader, codec: str, max_field_bytes: int
    ) -> None:
        self.columns = columns
        self._reader = reader
        self._codec = codec
        self._max_field_bytes = max_field_bytes

    def rows(self) -> Iterator[tuple[dict[str, Any], str | None]]:
        columns = self.columns
        width = len(columns)
        reader = self._reader
        try:
            for row in reader:
                if len(row) == width:
                    yield dict(zip(columns, row, strict=True)), None
                    continue
                if not any(cell.strip() for cell in row):
                    continue  # blank line
                yield (
                    _ragged(columns, row),
                    f"Row has {plural(len(row), 'column')}, expected {width}.",
                )
        except csv.Error as exc:
            raise _csv_error(exc, reader.line_num, self._max_field_bytes) from exc
        except UnicodeDecodeError as exc:
            raise _decode_error(self._codec, reader.line_num) from exc


@contextmanager
def open_csv(path: Path, *, max_field_bytes: int = 1_048_576) -> Iterator[CsvTable]:
    with path.open("rb") as raw:
        head = raw.read(_SAMPLE_BYTES)
    codec, sample = sniff_text(head, complete=len(head) < _SAMPLE_BYTES)
    # The limit is process-wide in the csv module; every reader sets the value it needs.
    csv.field_size_limit(max_field_bytes)
    with path.open(encoding=codec, newline="") as stream:
        reader = csv.reader(_bounded_lines(stream), delimiter=sniff_delimiter(sample))
        try:
            header = next((row for row in reader if any(cell.strip() for cell in row)), None)
        except csv.Error as exc:
            raise _csv_error(exc, reader.line_num, max_field_bytes) from exc
        except UnicodeDecodeError as exc:
            raise _decode_error(codec, reader.line_num) from exc
        if header is None:
            raise ReadError("The file is empty.")
        if len(header) > MAX_COLUMNS:
            raise ReadError(
                f"The header has {len(header):,} columns, over the {MAX_COLUMNS:,} limit."
            )
        yield CsvTable(unique_headers(header), reader, codec, max_field_bytes)


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
