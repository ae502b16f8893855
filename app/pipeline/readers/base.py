"""Shared pieces of the file readers: the Table protocol, ReadError, format detection, dispatch.

Every reader streams: memory stays bounded by the longest row (or, for XLSX, by the sheet
caps in `xlsx.py`), never by the file size.
"""

from __future__ import annotations

import codecs
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path, PurePath
from typing import Any, Protocol

import orjson

SNIFF_BYTES = 8192
# Bounds memory for a file with no line breaks: a physical line is read whole before it is
# parsed. Quoted CSV fields may span many lines, each checked on its own.
MAX_LINE_CHARS = 16 * 1024 * 1024
# Excel's own column limit; also bounds the `_extra_N` keys a ragged CSV row can create.
MAX_COLUMNS = 16_384

ZIP_MAGIC = b"PK\x03\x04"
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".xlsx": "xlsx",
    ".json": "json",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
}
# C0 controls that never occur in text files; \t \n \v \f \r, ESC and the DOS EOF mark (\x1a) do.
_BINARY_CONTROLS = {c: None for c in (*range(0x09), *range(0x0E, 0x1A), *range(0x1C, 0x20))}
_BINARY_CONTROL_SHARE = 0.01
_ANY_FORMAT = "CSV, XLSX, JSON or NDJSON"
FORMAT_NAMES = {"csv": "CSV", "xlsx": "XLSX", "json": "JSON", "ndjson": "NDJSON"}
# Binary containers people send by mistake (an export zipped, a legacy .xls renamed), by the
# magic number they start with, so that a refusal can say what the file is.
_CONTAINERS = (
    (ZIP_MAGIC, "a ZIP archive (perhaps XLSX)"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an OLE2 compound file (perhaps a legacy XLS)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\xfd7zXZ\x00", "an XZ archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"%PDF-", "a PDF document"),
)


class ReadError(Exception):
    """The input cannot be read at all; str(exc) is a clear, user-facing message."""


class Table(Protocol):
    """A header plus a single-pass stream of data rows."""

    columns: list[str]

    def rows(self) -> Iterator[tuple[dict[str, Any], str | None]]:
        """Yields (data, error) per data row, in file order; iterate once."""
        ...


def open_table(
    path: Path,
    fmt: str,
    *,
    filename: str = "",
    sheet: str | None = None,
    max_field_bytes: int = 1_048_576,
) -> AbstractContextManager[Table]:
    """Opens `path` as a table of `fmt` ('csv' | 'xlsx' | 'json' | 'ndjson' | 'auto')."""
    # Imported here because the reader modules import ReadError and helpers from this one.
    from app.pipeline.readers import csv_reader, json_reader, xlsx

    if fmt == "auto":
        fmt = detect_format(path, filename)
    if path.stat().st_size == 0:
        raise ReadError("The file is empty.")
    if fmt == "csv":
        return csv_reader.open_csv(path, max_field_bytes=max_field_bytes)
    if fmt == "xlsx":
        return xlsx.open_xlsx(path, sheet=sheet)
    if fmt == "json":
        return json_reader.open_json(path)
    if fmt == "ndjson":
        return json_reader.open_ndjson(path)
    raise ValueError(f"Unknown format: {fmt!r}")


def detect_format(path: Path, filename: str = "") -> str:
    """'csv' | 'xlsx' | 'json' | 'ndjson', by extension first, then by sniffing the first bytes."""
    with path.open("rb") as f:
        head = f.read(SNIFF_BYTES)
    return _detect(head, filename or path.name, lambda: _is_xlsx(path))


def _detect(head: bytes, filename: str, is_xlsx: Callable[[], bool]) -> str:
    fmt = _EXTENSIONS.get(PurePath(filename).suffix.lower())
    if fmt:
        return fmt
    if not head:
        raise ReadError("The file is empty.")
    if head.startswith(ZIP_MAGIC):
        if is_xlsx():
            return "xlsx"
        raise ReadError("Unsupported file type: a ZIP archive that is not an XLSX workbook.")
    reject_binary(head, _ANY_FORMAT)
    decoded = _decode(head, complete=len(head) < SNIFF_BYTES)
    if decoded is None or _looks_binary(decoded[1]):
        raise ReadError(f"Unsupported file type: the file holds binary data, not {_ANY_FORMAT}.")
    text = decoded[1].lstrip()
    if text.startswith("["):
        return "json"
    if text.startswith("{"):
        # One complete object on the first line is NDJSON; an object spread over lines is a
        # pretty-printed JSON document such as {"data": [...]}.
        try:
            orjson.loads(text.partition("\n")[0])
        except orjson.JSONDecodeError:
            return "json"
        return "ndjson"
    return "csv"


def _is_xlsx(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return "xl/workbook.xml" in zf.NameToInfo
    except (zipfile.BadZipFile, OSError):
        return False


def container_of(head: bytes) -> str | None:
    """Names the binary container whose magic number `head` starts with, if it is one."""
    return next((name for magic, name in _CONTAINERS if head.startswith(magic)), None)


def not_a_workbook(head: bytes) -> str:
    """The message for a file expected to be XLSX whose first bytes are not a ZIP archive."""
    container = container_of(head)
    if container is not None and not head.startswith(ZIP_MAGIC):
        return f"The file is {container}, not XLSX."
    return "The file is not an XLSX workbook (it is not a ZIP archive)."


def check_format(path: Path, filename: str, expected: str) -> None:
    """Refuses, from its first bytes, a file that is obviously not `expected` (for 'auto', the
    format its name or content says), naming the binary container it is when it is one."""
    with path.open("rb") as f:
        head = f.read(SNIFF_BYTES)
    check_head(head, filename or path.name, expected, lambda: _is_xlsx(path))


def check_head(head: bytes, filename: str, expected: str, is_xlsx: Callable[[], bool]) -> None:
    """`check_format` of a file from its first `SNIFF_BYTES`; `is_xlsx` looks into the whole
    file, asked only for a ZIP archive that its name does not tell the kind of."""
    detected = _detect(head, filename, is_xlsx)
    fmt = detected if expected == "auto" else expected
    if fmt == "xlsx":
        if not head.startswith(ZIP_MAGIC):
            raise ReadError(not_a_workbook(head))
    else:
        reject_binary(head, FORMAT_NAMES[fmt])


def reject_binary(head: bytes, expected: str) -> None:
    """Refuses a file whose first bytes are a binary container or binary data, before parsing
    it."""
    container = container_of(head)
    if container is not None:
        raise ReadError(f"The file is {container}, not {expected}.")
    if b"\x00" in head[:SNIFF_BYTES] and not head.startswith(_UTF16_BOMS):
        raise ReadError(f"Unsupported file type: the file holds binary data, not {expected}.")


def sniff_text(head: bytes, *, complete: bool) -> tuple[str, str]:
    """Returns (codec, decoded head) for CSV text in UTF-8 (BOM optional), UTF-16 with BOM or
    Windows-1252. `complete` says `head` is the whole file, so that a multibyte character cut
    at the end is an error rather than the sample boundary."""
    reject_binary(head, "CSV")
    decoded = _decode(head, complete=complete)
    if decoded is None:
        raise ReadError("The file is not valid UTF-8, UTF-16 or Windows-1252 text.")
    if _looks_binary(decoded[1]):
        raise ReadError("Unsupported file type: the file holds binary data, not CSV text.")
    return decoded


def _decode(head: bytes, *, complete: bool) -> tuple[str, str] | None:
    # utf-8-sig strips a BOM when present and is plain UTF-8 otherwise; Windows-1252 is the
    # fallback for legacy exports, as almost any byte string decodes under it.
    codecs_to_try = ("utf-16",) if head.startswith(_UTF16_BOMS) else ("utf-8-sig", "cp1252")
    for codec in codecs_to_try:
        try:
            return codec, codecs.getincrementaldecoder(codec)().decode(head, final=complete)
        except UnicodeDecodeError:
            continue
    return None


def _looks_binary(text: str) -> bool:
    sample = text[:SNIFF_BYTES]
    controls = len(sample) - len(sample.translate(_BINARY_CONTROLS))
    return controls > len(sample) * _BINARY_CONTROL_SHARE


def unique_headers(cells: Iterable[str]) -> list[str]:
    """Trims header names, names empty ones `column_N` (1-based) and suffixes duplicates
    `_2`, `_3`, ... so every column has a distinct key."""
    columns: list[str] = []
    seen: set[str] = set()
    for position, cell in enumerate(cells, 1):
        name = cell.strip() or f"column_{position}"
        if name in seen:
            suffix = 2
            while f"{name}_{suffix}" in seen:
                suffix += 1
            name = f"{name}_{suffix}"
        seen.add(name)
        columns.append(name)
    return columns


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"
