"""XLSX reader over python-calamine.

Calamine parses with Rust's quick-xml, which never expands DTD entities ("billion laughs") and
is fast. It does load a whole sheet into a dense rows x columns grid before Python sees a cell,
and aborts the process (not an exception) when that grid cannot be allocated. So the file is
vetted first, without extracting anything to disk:

- from the zip central directory: entry count, total uncompressed size and per-entry
  compression ratio (zip bombs);
- by streaming the chosen sheet's XML: the grid calamine would build, i.e. the row span times
  the column span of the cells that hold a value. The sheet's `<dimension>` tag is not used:
  it is optional, may lie, and calamine ignores it.
"""

from __future__ import annotations

import datetime
import posixpath
import re
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from python_calamine import CalamineError, CalamineWorkbook

from app.pipeline.readers.base import (
    SNIFF_BYTES,
    ReadError,
    not_a_workbook,
    plural,
    unique_headers,
)

MAX_ENTRIES = 10_000
MAX_UNCOMPRESSED_BYTES = 200 * 1024 * 1024
MAX_COMPRESSION_RATIO = 200
MAX_CELLS = 5_000_000
MAX_ROWS = 1_048_576
MAX_COLUMNS = 16_384
# Small parts (styles, a tiny sheet) often compress beyond the ratio and are harmless.
_RATIO_MIN_BYTES = 1024 * 1024
_SCAN_CHUNK = 1024 * 1024
# Integral floats beyond this are not exact integers, so they stay floats.
_EXACT_INT = 2.0**53

_WORKBOOK = "xl/workbook.xml"
_WORKBOOK_RELS = "xl/_rels/workbook.xml.rels"
_DTD_MESSAGE = "The XLSX file contains an XML document type declaration, which is not allowed."
_ROOT = re.compile(rb"<([\w.-]+:)?worksheet[\s>]")

Cell = str | int | float | bool | datetime.date | datetime.time | datetime.timedelta | None


class XlsxTable:
    def __init__(self, columns: list[str], rows: Iterator[list[Any]]) -> None:
        self.columns = columns
        self._rows = rows

    def rows(self) -> Iterator[tuple[dict[str, Any], str | None]]:
        columns = self.columns
        width = len(columns)
        for row in self._rows:
            values = [
                None
                if cell == ""
                else int(cell)
                if type(cell) is float and cell.is_integer() and -_EXACT_INT < cell < _EXACT_INT
                else cell
                for cell in row
            ]
            if values.count(None) == len(values):
                continue  # blank row
            data: dict[str, Any] = dict(zip(columns, values, strict=False))
            extra = _trim(values[width:])
            if not extra:
                yield data, None
                continue
            for position, cell in enumerate(extra, 1):
                data[f"_extra_{position}"] = cell
            yield data, f"Row has {plural(width + len(extra), 'column')}, expected {width}."


@contextmanager
def open_xlsx(
    path: Path,
    *,
    sheet: str | None = None,
    max_entries: int = MAX_ENTRIES,
    max_uncompressed_bytes: int = MAX_UNCOMPRESSED_BYTES,
    max_compression_ratio: float = MAX_COMPRESSION_RATIO,
    max_cells: int = MAX_CELLS,
    max_rows: int = MAX_ROWS,
    max_columns: int = MAX_COLUMNS,
) -> Iterator[XlsxTable]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        with path.open("rb") as f:
            raise ReadError(not_a_workbook(f.read(SNIFF_BYTES))) from exc
    with archive:
        _check_archive(archive, max_entries, max_uncompressed_bytes, max_compression_ratio)
        name, part = _find_sheet(archive, sheet)
        rows, columns = _sheet_span(archive, part)
        _check_span(name, rows, columns, max_cells, max_rows, max_columns)
    try:
        workbook = CalamineWorkbook.from_path(str(path))
    except CalamineError as exc:
        raise ReadError(f"The XLSX file cannot be read: {exc}") from exc
    with workbook:
        try:
            grid = workbook.get_sheet_by_name(name)
        except CalamineError as exc:
            raise ReadError(f"The sheet '{name}' cannot be read: {exc}") from exc
        rows_iter = grid.iter_rows()
        header = next((row for row in rows_iter if any(cell != "" for cell in row)), None)
        if header is None:
            raise ReadError(f"The sheet '{name}' is empty.")
        yield XlsxTable(unique_headers(_header_name(cell) for cell in _trim(header)), rows_iter)


def _check_archive(
    archive: zipfile.ZipFile, max_entries: int, max_bytes: int, max_ratio: float
) -> None:
    entries = archive.infolist()
    if len(entries) > max_entries:
        raise ReadError(
            f"The XLSX file holds {len(entries):,} files, over the {max_entries:,} limit."
        )
    total = sum(entry.file_size for entry in entries)
    if total > max_bytes:
        raise ReadError(
            f"The XLSX file expands to {_size(total)}, over the {_size(max_bytes)} limit."
        )
    for entry in entries:
        ratio = entry.file_size / max(entry.compress_size, 1)
        if entry.file_size > _RATIO_MIN_BYTES and ratio > max_ratio:
            raise ReadError(
                f"The XLSX file looks like a zip bomb: {entry.filename} expands {ratio:,.0f} "
                f"times, over the {max_ratio:,.0f} limit."
            )
    if _WORKBOOK not in archive.NameToInfo:
        raise ReadError("The file is a ZIP archive but not an XLSX workbook.")


def _find_sheet(archive: zipfile.ZipFile, sheet: str | None) -> tuple[str, str]:
    """(sheet name, path of its XML part): the named sheet, else the first worksheet."""
    targets = {
        rel.get("Id"): (rel.get("Type", ""), rel.get("Target", ""))
        for rel in _read_xml(archive, _WORKBOOK_RELS).iter()
        if _local_name(rel.tag) == "Relationship"
    }
    sheets: list[tuple[str, str, str]] = []
    for element in _read_xml(archive, _WORKBOOK).iter():
        if _local_name(element.tag) != "sheet":
            continue
        rel_id = next((v for k, v in element.attrib.items() if _local_name(k) == "id"), None)
        kind, target = targets.get(rel_id, ("", ""))
        sheets.append((element.get("name", ""), kind, target))
    if sheet is None:
        found = next((s for s in sheets if s[1].endswith("/worksheet")), None)
        if found is None:
            raise ReadError("The workbook has no worksheet.")
    else:
        found = next((s for s in sheets if s[0] == sheet), None)
        if found is None:
            available = ", ".join(f"'{s[0]}'" for s in sheets)
            raise ReadError(
                f"The workbook has no sheet named '{sheet}'; its sheets are {available}."
            )
    name, _, target = found
    if not target:
        raise ReadError(f"The XLSX file is damaged: the sheet '{name}' has no data.")
    part = target[1:] if target.startswith("/") else posixpath.normpath(f"xl/{target}")
    return name, part


def _read_xml(archive: zipfile.ZipFile, part: str) -> ElementTree.Element:
    try:
        data = archive.read(part)
    except KeyError as exc:
        raise ReadError(f"The XLSX file is damaged: {part} is missing.") from exc
    except (zipfile.BadZipFile, zlib.error) as exc:
        raise ReadError(f"The XLSX file is damaged: {part}: {exc}") from exc
    # Without a DTD no entity can be declared, so ElementTree cannot be made to expand one.
    if b"<!DOCTYPE" in data:
        raise ReadError(_DTD_MESSAGE)
    try:
        return ElementTree.fromstring(data)
    except ElementTree.ParseError as exc:
        raise ReadError(f"The XLSX file is damaged: {part}: {exc}") from exc


def _local_name(tag: str) -> str:
    """`{namespace}name` -> `name`: transitional and strict OOXML use different namespaces."""
    return tag.rpartition("}")[2]


def _sheet_span(archive: zipfile.ZipFile, part: str) -> tuple[int, int]:
    """Upper bounds of the rows and columns of the grid calamine will build for the sheet."""
    scan: _SpanScan | None = None
    try:
        with archive.open(part) as stream:
            pending = b""
            while chunk := stream.read(_SCAN_CHUNK):
                if scan is None:
                    if b"<!DOCTYPE" in chunk:
                        raise ReadError(_DTD_MESSAGE)
                    root = _ROOT.search(chunk)
                    scan = _SpanScan(root[1] if root and root[1] else b"")
                data = pending + chunk
                # Scan whole tags only: keep the last, possibly cut, tag for the next chunk.
                cut = data.rfind(b"<")
                scan.feed(data[:cut] if cut > 0 else b"")
                pending = data[cut:] if cut > 0 else data
            if scan is None:
                return 0, 0
            scan.feed(pending)
    except KeyError as exc:
        raise ReadError(f"The XLSX file is damaged: {part} is missing.") from exc
    except (zipfile.BadZipFile, zlib.error) as exc:
        raise ReadError(f"The XLSX file is damaged: {part}: {exc}") from exc
    return scan.span()


class _SpanScan:
    """Accumulates, over chunks of sheet XML, the extent of the cells that hold a value.

    Cells and rows are located by their `r` reference, written first and double-quoted by
    every common writer, with the root element's namespace prefix: regular expressions with
    one group each keep this fast. Every other valued cell or row (no `r`, or written
    otherwise) is counted without being located, and widens the bounds by that count: calamine
    places such a cell right of the previous one, such a row below the previous row."""

    def __init__(self, prefix: bytes) -> None:
        tag = re.escape(prefix)
        self._cell_columns = re.compile(
            rb"<" + tag + rb'c\s[^>]*?\br="([A-Za-z]+)[0-9]+"[^>]*(?<!/)>'
        )
        self._cell_rows = re.compile(rb"<" + tag + rb'c\s[^>]*?\br="[A-Za-z]+([0-9]+)"[^>]*(?<!/)>')
        self._rows = re.compile(rb"<" + tag + rb'row\s[^>]*?\br="([0-9]+)"[^>]*?(/?)>')
        self.first_row = self.first_column = MAX_ROWS * MAX_COLUMNS
        self.last_row = self.last_column = 0
        self.cells = self.located_cells = self.rows = self.located_rows = 0

    def feed(self, data: bytes) -> None:
        # Generic counts: `:c>` and `:row` catch prefixed tags (and, harmlessly, end tags).
        self.cells += data.count(b"</c>") + data.count(b":c>")
        self.rows += data.count(b"<row") + data.count(b":row")
        columns = self._cell_columns.findall(data)
        rows = self._rows.findall(data)
        self.located_cells += len(columns)
        self.located_rows += len(rows)
        numbers = {digits for digits, closed in rows if not closed}
        if columns:
            numbers.update(self._cell_rows.findall(data))
            found = [_column_number(letters) for letters in set(columns)]
            self.first_column = min(self.first_column, *found)
            self.last_column = max(self.last_column, *found)
        if numbers:
            # int() of bytes is quick; past 9 digits a number is beyond every limit anyway.
            if max(map(len, numbers)) <= 9:
                found = list(map(int, numbers))
            else:
                found = [_number(digits) for digits in numbers]
            self.first_row = min(self.first_row, *found)
            self.last_row = max(self.last_row, *found)

    def span(self) -> tuple[int, int]:
        unlocated_rows = max(self.rows - self.located_rows, 0)
        unlocated_cells = max(self.cells - self.located_cells, 0)
        first_row = 1 if unlocated_rows else self.first_row
        first_column = 1 if unlocated_cells else self.first_column
        last_row = self.last_row + unlocated_rows
        last_column = self.last_column + unlocated_cells
        return max(last_row - first_row + 1, 0), max(last_column - first_column + 1, 0)


def _check_span(
    name: str, rows: int, columns: int, max_cells: int, max_rows: int, max_columns: int
) -> None:
    if rows > max_rows:
        raise ReadError(f"The sheet '{name}' spans {rows:,} rows, over the {max_rows:,} limit.")
    if columns > max_columns:
        raise ReadError(
            f"The sheet '{name}' spans {columns:,} columns, over the {max_columns:,} limit."
        )
    if rows * columns > max_cells:
        raise ReadError(
            f"The sheet '{name}' spans {rows:,} rows by {columns:,} columns "
            f"({rows * columns:,} cells), over the {max_cells:,}-cell limit."
        )


def _number(digits: bytes) -> int:
    digits = digits.lstrip(b"0") or b"0"
    # Anything longer is past every limit, and int() of thousands of digits is slow.
    return int(digits) if len(digits) <= 9 else 10**9


def _column_number(letters: bytes) -> int:
    if len(letters) > 4:
        return 10**9
    number = 0
    for letter in letters.upper():
        number = number * 26 + letter - 64
    return number


def _trim(cells: list[Any]) -> list[Any]:
    """Drops trailing empty cells (calamine pads every row to the grid width)."""
    end = len(cells)
    while end and cells[end - 1] in ("", None):
        end -= 1
    return cells[:end]


def _header_name(cell: Cell) -> str:
    if isinstance(cell, float) and cell.is_integer():
        return str(int(cell))
    if isinstance(cell, datetime.date | datetime.time):
        return cell.isoformat()
    return str(cell)


def _size(count: int) -> str:
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}".replace(".0 ", " ")
    return plural(count, "byte")
