"""Columnar chunks: a CSV byte range parsed by polars into a frame of cells and validated a
column at a time, with no Python per row.

Each field is one polars expression over its column that gives the typed value of every cell
it can decide for sure (plain text of the common shape: digits for an integer, an ASCII
address for an email, ...) and marks the rest *odd*. Odd cells — a formula escape, text
outside printable ASCII where a transform or strip would see it, a shape the expression does
not know, a rule it fails — take the field's per-cell closure of app.pipeline.validation, so
every value and message is the one the per-row validator gives. Failed cells are odd cells
by construction: a row's messages always come from that closure.

Beside the typed values, each field gives its values' JSON (the same bytes orjson writes for
them), and the row's canonical JSON is one concatenation of those in field-name order: its MD5
is the row's content hash, exactly as `app.records.store.canonical` computes it from a dict.

`read` declines (None) what polars may read differently from the csv module — any parse
error, a ragged or blank row, a lone CR, a field past the reader's limits — and the chunk
is read the per-row way.
"""

import hashlib
import io
import re
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import orjson
import polars as pl

from app.importers.schemas import FieldSpec, ImporterDefinition
from app.pipeline.mapping import ColumnPlan
from app.pipeline.readers.base import MAX_LINE_CHARS
from app.pipeline.validation import (
    _ASCII_EMAIL,
    _BOOLEANS,
    _ISO_DATE,
    _URL,
    Failed,
    RowValidator,
    _key_text,
    _text,
)
from app.records.store import column_value, copy_column, copy_text
from app.records.tables import COLUMN_TYPES

# Below this many rows a chunk goes the per-row way: a frame's fixed cost (some tens of calls
# into polars, ~7 ms) outweighs what its columns save. Measured with bench.parts' users file
# (CPU per row, parse + validate + plan): 22 us columnar vs 18 per row in chunks of 1000,
# 15 vs 18 in chunks of 3000, 12-13 vs 18 in chunks of 10000 and more.
MIN_ROWS = 2500
# The csv reader's field limit (app.pipeline.readers.csv_reader).
MAX_FIELD_BYTES = 1_048_576

col, lit = pl.col, pl.lit

# Printable ASCII only: where Python's and Rust's notions of space, case and \s agree.
_NOT_PLAIN_ASCII = r"[^\x20-\x7e]"
# What JSON must escape in a string: orjson writes the rest of the text as it is.
_JSON_ESCAPED = r'["\\\x00-\x1f]'
_INTEGER = r"^[+-]?[0-9]{1,18}$"
_DECIMAL = r"^[+-]?[0-9]{1,18}\.[0-9]{1,18}$"
_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_EMAIL = f"^(?:{_ASCII_EMAIL.pattern})$"
_URL_WHOLE = f"^(?:{_URL.pattern})$"
# Transforms polars does as Python does on printable ASCII.
_TRANSFORMS: dict[str, Callable[[pl.Expr], pl.Expr]] = {
    "trim": lambda e: e.str.strip_chars(),
    "lower": lambda e: e.str.to_lowercase(),
    "upper": lambda e: e.str.to_uppercase(),
    "strip_non_digits": lambda e: e.str.replace_all(r"[^0-9]+", ""),
    "slug": lambda e: e.str.to_lowercase().str.replace_all(r"[^a-z0-9]+", "-").str.strip_chars("-"),
}
# The column type each field type writes: the frame path writes only into tables whose
# columns are these.
NATURAL = COLUMN_TYPES


def read(data: bytes, columns: list[str], delimiter: str, codec: str) -> pl.DataFrame | None:
    """The cells of a CSV byte range (whole rows, no header) as a frame of text columns, or
    None where the csv reader is the one to read it."""
    if codec != "utf-8" or len(delimiter) != 1 or not data or b"\x00" in data:
        return None  # NUL: no column holds it, and the per-row path names the fields
    crs = data.count(b"\r")
    if crs and crs != data.count(b"\r\n"):
        return None  # a lone CR ends a line for the csv reader
    if len(data) >= MAX_LINE_CHARS and max(map(len, data.splitlines())) >= MAX_LINE_CHARS:
        return None
    try:
        frame = pl.read_csv(
            io.BytesIO(data),
            has_header=False,
            new_columns=columns,
            separator=delimiter,
            infer_schema=False,
            empty_string_is_null=False,
            truncate_ragged_lines=False,
            raise_if_empty=True,
            quote_char='"',
        )
    except Exception:  # polars' errors for input it will not read: the csv reader decides
        return None
    if frame.width != len(columns) or not _whole_rows(data, delimiter, frame.height, len(columns)):
        return None
    checks = frame.select(
        pl.any_horizontal(pl.all().null_count() > 0).alias("ragged"),
        pl.max_horizontal(pl.all().str.len_bytes().max()).alias("widest"),
    ).row(0)
    if checks[0] or (checks[1] or 0) > MAX_FIELD_BYTES:
        return None
    if frame.width == 1 and (frame.get_column(columns[0]) == "").any():
        return None  # a blank line, or a row of one empty cell: only the csv reader knows
    return frame


# A quoted field, or two halves of one whose quote is doubled: what removing them leaves is
# the delimiters and line breaks that end fields.
_QUOTED = re.compile(rb'"[^"]*"')


def _whole_rows(data: bytes, delimiter: str, rows: int, width: int) -> bool:
    """Whether `rows` rows of the header's width hold every delimiter of `data`: polars
    refuses a row with a field too many, but fills a row short of fields (or a blank line)
    with empty text, which the csv reader tells apart."""
    return _QUOTED.sub(b"", data).count(delimiter.encode()) == rows * (width - 1)


@dataclass
class Column:
    """A validated field's values as its column (of type `kind`) holds them: polars' where it
    decided the cell, `patches` (row -> value) where Python did (None in failed rows); a
    constant field has one value for every row."""

    series: pl.Series | None
    kind: str = "text"
    patches: dict[int, Any] = field(default_factory=dict)
    constant: Any = None
    _whole: list[Any] | None = None  # every row's, once taken (not to be changed)

    def take(self, rows: Sequence[int]) -> list[Any]:
        """The values of rows at the given indexes, in ascending order (all of them as
        `range(height)`)."""
        if self.series is None:
            return [self.constant] * len(rows)
        whole = isinstance(rows, range) and rows == range(len(self.series))
        if whole and self._whole is not None:
            return self._whole
        values = (self.series if whole else self.series.gather(list(rows))).to_list()
        if whole:
            self._whole = values
        if self.patches:
            if whole:
                for i, value in self.patches.items():
                    values[i] = value
            else:
                for i, value in self.patches.items():
                    n = bisect_left(rows, i)
                    if n < len(rows) and rows[n] == i:
                        values[n] = value
        return values

    def copied(self, rows: Sequence[int]) -> pl.Series:
        """`take`, as a column whose CSV text Postgres reads as the values (app.records.store
        `copy_column`): the values polars decided, and Python's patches."""
        if self.series is None:
            value = copy_text(self.kind, self.constant)
            return pl.repeat(value, len(rows), dtype=pl.String, eager=True)
        values = copy_column(self.series, self.kind)
        if self.patches:
            patched = list(self.patches.values())
            if values.dtype == pl.String and self.series.dtype != pl.String:
                patched = [copy_text(self.kind, value) for value in patched]  # as text
            values = values.clone().scatter(list(self.patches), patched)
        whole = isinstance(rows, range) and rows == range(len(self.series))
        return values if whole else values.gather(list(rows))


class _Spread(Column):
    """The column of some rows of a frame (`at`: frame row -> row of `inner`) as a column of
    the whole frame: None in the other rows."""

    def __init__(self, inner: Column, at: dict[int, int]) -> None:
        super().__init__(None, inner.kind)
        self.inner, self.at = inner, at

    def _inner(self, rows: Sequence[int]) -> tuple[list[int | None], Sequence[int]]:
        """Per row, its row of `inner` (None: not there), and those rows as `inner` takes
        them (all of them as a range)."""
        mapped = [self.at.get(i) for i in rows]
        present = [n for n in mapped if n is not None]
        return mapped, range(len(present)) if len(present) == len(self.at) else present

    def take(self, rows: Sequence[int]) -> list[Any]:
        mapped, inner = self._inner(rows)
        values = iter(self.inner.take(inner))
        return [None if n is None else next(values) for n in mapped]

    def copied(self, rows: Sequence[int]) -> pl.Series:
        mapped, inner = self._inner(rows)
        values = self.inner.copied(inner)
        if len(inner) == len(rows):
            return values
        at = [position for position, n in enumerate(mapped) if n is not None]
        spread = pl.repeat(None, len(rows), dtype=values.dtype, eager=True)
        return spread.scatter(at, values)


@dataclass
class Validated:
    """A validated frame: per field (in definition order) its column of values, and per row
    its key, content hash and input hash (None in failed rows), and the messages of the
    failed ones (by row index). Values and input hashes are taken when asked, as only the
    rows a chunk writes need them (an unchanged re-upload writes none)."""

    columns: list[Column]
    keys: list[str | None]
    hashes: list[str | None]
    # The input hashes of the rows at the given indexes.
    input_hashes_of: Callable[[Sequence[int]], list[str | None]]
    errors: dict[int, dict[str, list[str]]] = field(default_factory=dict)
    # Rows known unchanged by their input hash, which were not validated (`validate_except`).
    unvalidated: int = 0

    def copied(self, rows: Sequence[int], names: Sequence[str]) -> pl.DataFrame:
        """The values of rows at the given indexes (in ascending order; None in failed rows)
        as COPY ... CSV writes them: a column per field (`Column.copied`), named by `names`."""
        pairs = zip(self.columns, names, strict=True)
        return pl.DataFrame([column.copied(rows).alias(name) for column, name in pairs])


def _as_column(kind: str, value: Any) -> Any:
    """A validated value (as the per-row validator gives it) as its natural column takes it."""
    if value is None:
        return None
    return column_value(NATURAL[kind], value)


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


class _Field:
    """One field's columnar form: an expression giving each cell's value, its JSON and
    whether the cell is odd, and the per-cell closure for the odd ones."""

    def __init__(
        self, name: str, spec: FieldSpec, source: str | None, convert: Any, required: bool
    ) -> None:
        self.name, self.spec, self.source, self.convert = name, spec, source, convert
        # A key field is required whatever the definition says.
        self.required = required
        self.kind = spec.type
        # The value of a cell that is null (empty, or in null_if): None, a typed default, or
        # the required failure — the closure decides all but None.
        self.null_value = convert(None)
        self.constant = source is None
        if self.constant and type(self.null_value) is not Failed:
            self.constant_value = _as_column(self.kind, self.null_value)
            self.constant_json = _json(self.null_value)

    def exprs(self) -> list[pl.Expr]:
        """value, json and odd of the field's column (prefixed with its position)."""
        assert self.source is not None
        spec, kind, raw = self.spec, self.kind, col(self.source)
        text = raw
        for transform in spec.transform:
            text = _TRANSFORMS[transform](text)
        is_string = kind == "string"
        strip = not is_string and not {"trim", "slug", "strip_non_digits"} & set(spec.transform)
        if strip:
            text = text.str.strip_chars()
        # A formula escape is stripped by the closure.
        odd = raw.str.starts_with("'")
        if not is_string or spec.transform:
            odd = odd | raw.str.contains(_NOT_PLAIN_ASCII)
        nulls = [value for value in spec.null_if if value != ""]
        empty_is_null = not is_string or "" in spec.null_if
        null = lit(False)
        if empty_is_null:
            null = text == ""
        if nulls:
            null = null | text.is_in(nulls)
        if self.null_value is not None:
            odd = odd | null  # a default or a required failure: the closure's
        value, valid, json = self._typed(text)
        valid = valid & self._rules(value, text)
        odd = odd | (~null & ~valid)
        if self.kind == "string" and (self.required or self._has_rules()):
            odd = odd | text.str.contains(r"^[\s\x1c-\x1f]*$")  # blank: required or no rules
        value = pl.when(null).then(None).otherwise(value)
        json = pl.when(null).then(lit("null")).otherwise(json)
        return [value.alias("v"), json.alias("j"), odd.fill_null(True).alias("o")]

    def _has_rules(self) -> bool:
        spec = self.spec
        return any(
            x is not None
            for x in (spec.min, spec.max, spec.min_length, spec.max_length, spec.pattern, spec.in_)
        )

    def _typed(self, text: pl.Expr) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
        """The typed value, whether the text is of the plain shape, and the value's JSON
        (None where Python must write it)."""
        kind, spec = self.kind, self.spec
        quoted = lit('"') + text + lit('"')
        escaped = text.str.contains(_JSON_ESCAPED)
        string_json = pl.when(escaped).then(None).otherwise(quoted)
        if kind == "string":
            return text, lit(True), string_json
        if kind == "email":
            return text, text.str.contains(_EMAIL), string_json
        if kind == "url":
            return text, text.str.contains(_URL_WHOLE), string_json
        if kind == "integer":
            number = text.cast(pl.Int64, strict=False)
            valid = text.str.contains(_INTEGER) & number.is_not_null()
            return number, valid, number.cast(pl.String)
        if kind == "number":
            whole = text.str.contains(_INTEGER)
            as_int = text.cast(pl.Int64, strict=False)
            # An integer's text is an int to the per-row validator: '-0' is 0, not -0.0.
            number = pl.when(whole).then(as_int.cast(pl.Float64))
            number = number.otherwise(text.cast(pl.Float64, strict=False))
            integer = as_int.cast(pl.String)
            # A decimal's JSON is orjson's shortest form: written in Python (`_floats`).
            json = pl.when(whole).then(integer).otherwise(None)
            valid = (whole | text.str.contains(_DECIMAL)) & number.is_not_null()
            return number, valid, json
        if kind == "boolean":
            lowered = text.str.to_lowercase()
            value = lowered.replace_strict(_BOOLEANS, default=None, return_dtype=pl.Boolean)
            json = pl.when(value).then(lit("true")).otherwise(lit("false"))
            return value, lowered.is_in(list(_BOOLEANS)), json
        if kind == "date" and spec.format == _ISO_DATE:
            day = text.str.to_date("%Y-%m-%d", strict=False)
            return day, text.str.contains(_DATE) & day.is_not_null(), quoted
        if kind == "list" and "\x00" not in spec.separator:
            items = (
                text.str.split(spec.separator)
                .list.eval(pl.element().str.strip_chars())
                .list.eval(pl.element().filter(pl.element() != ""))
            )
            clean = ~items.list.eval(pl.element().str.contains(_JSON_ESCAPED)).list.any()
            json = lit("[") + items.list.eval(lit('"') + pl.element() + lit('"')).list.join(",")
            json = pl.when(clean).then(json + lit("]")).otherwise(None)
            valid = ~(items.list.len() == 0) if self.required else lit(True)
            return items, valid, json
        # datetime, dates of other formats, json: the closure types every cell.
        return lit(None), lit(False), lit(None, dtype=pl.String)

    def _rules(self, value: pl.Expr, text: pl.Expr) -> pl.Expr:
        """Whether the plain value passes every rule (False: the closure decides)."""
        spec, kind = self.spec, self.kind
        ok = lit(True)
        if spec.pattern is not None and kind not in ("list", "json"):
            return lit(False)  # Python's regular expressions, not Rust's
        if kind in ("integer", "number"):
            if spec.min is not None:
                ok = ok & (value >= spec.min)
            if spec.max is not None:
                ok = ok & (value <= spec.max)
            if spec.in_ is not None:
                return lit(False)
        elif kind in ("string", "email", "url"):
            size = value.str.len_chars()
            for low in (spec.min, spec.min_length):
                if low is not None:
                    ok = ok & (size >= low)
            for high in (spec.max, spec.max_length):
                if high is not None:
                    ok = ok & (size <= high)
            if spec.in_ is not None:
                ok = ok & value.is_in([_text(entry) for entry in spec.in_])
        elif kind == "list":
            size = value.list.len()
            if spec.min is not None:
                ok = ok & (size >= spec.min)
            if spec.max is not None:
                ok = ok & (size <= spec.max)
            if spec.in_ is not None:
                allowed = [_text(entry) for entry in spec.in_]
                ok = ok & value.list.eval(pl.element().is_in(allowed)).list.all()
        elif spec.in_ is not None and kind != "json":
            return lit(False)
        return ok


# Key fields whose text (app.pipeline.validation `_key_text`) is the same from the value as
# its column holds it as from the value as validation gives it (a number's column is a
# double: 2**63 - 1 would become 2**63).
_KEY_KINDS = frozenset(("string", "email", "url", "integer", "boolean", "date"))


def supports(definition: ImporterDefinition, columns: dict[str, str]) -> bool:
    """Whether the frame path can apply this definition's chunks to a table of field
    `columns`: each field in a column of its own type, and keys of plain kinds."""
    return all(
        columns.get(name) == NATURAL[spec.type] for name, spec in definition.fields.items()
    ) and keys_supported(definition)


def keys_supported(definition: ImporterDefinition) -> bool:
    """Whether a frame gives this definition's keys (`FrameValidator.keys`)."""
    return all(definition.fields[name].type in _KEY_KINDS for name in definition.key)


# Key fields whose valid key text is their cell as it stands, when no transform applies.
# (Email and url values lose outer spaces: a cell that has some finds no record by its
# cells, and gets its key computed.)
_CELL_KEY_KINDS = ("string", "email", "url")


def key_sources(definition: ImporterDefinition, sources: dict[str, str | None]) -> list[str] | None:
    """The columns whose cells, joined as a record key is, are a valid key's text (key fields
    of text kinds without transforms, each with its column); None where they need not be."""
    if definition.action == "append":
        return None
    specs = [definition.fields[name] for name in definition.key]
    if any(spec.type not in _CELL_KEY_KINDS or spec.transform for spec in specs):
        return None
    columns = [sources.get(name) for name in definition.key]
    present = [column for column in columns if column is not None]
    return present if len(present) == len(columns) else None


class FrameValidator:
    """Validates frames of one run (one definition and header): build once, call per frame."""

    def __init__(
        self,
        definition: ImporterDefinition,
        plan: ColumnPlan,
        validator: RowValidator,
        salted: Any,
        shortcut: bool,
    ) -> None:
        converts = dict(validator.converters)
        self.fields = [
            _Field(
                name,
                spec,
                plan.sources.get(name),
                converts[name],
                spec.required or (definition.action != "append" and name in definition.key),
            )
            for name, spec in definition.fields.items()
        ]
        self.key = list(definition.key) if definition.action != "append" else []
        # Every row fails a required field that has no column: the per-row path says how.
        self.usable = all(
            f.source is not None or type(f.null_value) is not Failed for f in self.fields
        )
        self._sources = [source for source in plan.sources.values() if source is not None]
        self._salted = salted if shortcut else None
        self._key_sources = key_sources(definition, plan.sources) if shortcut else None
        self._exprs = [
            expr.alias(f"{position}{expr.meta.output_name()}")
            for position, f in enumerate(self.fields)
            if not f.constant
            for expr in f.exprs()
        ]
        self._value_exprs = [
            expr for expr in self._exprs if expr.meta.output_name().endswith(("v", "o"))
        ]

    def keys(self, frame: pl.DataFrame) -> list[str | None]:
        """Each row's key (None where a key field fails), as `validate` gives it, without the
        rest: what the splitter marks repeated keys by, for a validator of the key fields."""
        height = frame.height
        computed = frame.select(self._value_exprs) if self._value_exprs else pl.DataFrame()
        odd = computed.select(
            col(f"{position}o").arg_true().implode().alias(str(position))
            for position, f in enumerate(self.fields)
            if not f.constant
        )
        odd_rows = odd.row(0) if odd.width else ()
        values: list[list[Any]] = []
        failed: set[int] = set()
        found = iter(odd_rows)
        for position, f in enumerate(self.fields):
            if f.constant:
                values.append([f.constant_value] * height)
                continue
            column = computed.get_column(f"{position}v").to_list()
            rows = next(found)
            if rows:
                cells = frame.get_column(f.source).gather(rows).to_list()  # type: ignore[arg-type]
                for i, cell in zip(rows, cells, strict=True):
                    result = f.convert(cell)
                    if type(result) is Failed:
                        failed.add(i)
                        column[i] = None
                    else:
                        column[i] = _as_column(f.kind, result)
            values.append(column)
        keys = self._keys(values.__getitem__, height)
        for i in failed:
            keys[i] = None
        return keys

    def key_cells(self, frame: pl.DataFrame) -> list[str] | None:
        """Each row's key cells joined as a record key is, where a record found by them that
        has the row's input hash is the row's own (app.pipeline.prepare); None where the
        shortcut does not apply to this run."""
        sources = self._key_sources
        if sources is None:
            return None
        if len(sources) == 1:
            return frame.get_column(sources[0]).to_list()
        return frame.select(pl.concat_str(sources, separator="|")).to_series().to_list()

    def input_hashes(self, frame: pl.DataFrame) -> list[str | None]:
        """Every row's input hash (app.pipeline.prepare)."""
        return self._input_hashes(frame, range(frame.height))

    def validate_except(
        self,
        frame: pl.DataFrame,
        unchanged: Mapping[int, tuple[str, str]],
        input_hashes: list[str | None],
    ) -> Validated:
        """`validate`, but for the rows known `unchanged` by their input hash (row index ->
        its record's key and content hash), which are not validated: they have no values.
        Such a row must be its key's only one: where a validated row has the key of one, every
        row is validated."""

        def inputs_of(rows: Sequence[int]) -> list[str | None]:
            return [input_hashes[i] for i in rows]

        if not unchanged:
            return replace(self.validate(frame), input_hashes_of=inputs_of)
        rest = [i for i in range(frame.height) if i not in unchanged]
        part = self.validate(frame[rest]) if rest else None
        keys: list[str | None] = [None] * frame.height
        hashes: list[str | None] = [None] * frame.height
        for i, (key, digest) in unchanged.items():
            keys[i], hashes[i] = key, digest
        errors: dict[int, dict[str, list[str]]] = {}
        columns = [Column(None, NATURAL[f.kind]) for f in self.fields]
        if part is not None:
            taken = {key for key, _ in unchanged.values()}
            if not taken.isdisjoint(part.keys):
                return self.validate_except(frame, {}, input_hashes)
            for n, i in enumerate(rest):
                keys[i], hashes[i] = part.keys[n], part.hashes[n]
            errors = {rest[n]: messages for n, messages in part.errors.items()}
            at = {i: n for n, i in enumerate(rest)}
            columns = [_Spread(column, at) for column in part.columns]
        return Validated(columns, keys, hashes, inputs_of, errors, len(unchanged))

    def validate(self, frame: pl.DataFrame) -> Validated:
        height = frame.height
        computed = frame.select(self._exprs) if self._exprs else pl.DataFrame()
        # The rows each field leaves to Python, for every field in one pass: its odd cells,
        # and the cells whose JSON polars does not write. (Each call on a frame costs tens
        # of microseconds whatever its length: a chunk makes few.)
        looked = [
            f"{position}{x}"
            for position, f in enumerate(self.fields)
            if not f.constant
            for x in "oj"
        ]
        rows_of = dict(
            zip(
                looked,
                computed.select(
                    (col(name).arg_true() if name.endswith("o") else col(name).is_null().arg_true())
                    .implode()
                    .alias(name)
                    for name in looked
                ).row(0)
                if looked
                else (),
                strict=True,
            )
        )
        columns: list[Column] = []
        jsons: list[pl.Series] = []
        failed: dict[int, dict[str, list[str]]] = {}
        for position, f in enumerate(self.fields):
            if f.constant:
                columns.append(Column(None, NATURAL[f.kind], constant=f.constant_value))
                jsons.append(pl.repeat(f.constant_json, height, eager=True, dtype=pl.String))
                continue
            series = computed.get_column(f"{position}v")
            column = Column(series, NATURAL[f.kind])
            json = computed.get_column(f"{position}j")
            patched: dict[int, str] = {}  # row -> its value's JSON, where polars has none
            odd_rows = rows_of[f"{position}o"]
            if odd_rows:
                source = frame.get_column(f.source)  # type: ignore[arg-type]
                cells = source.gather(odd_rows).to_list()
                for i, cell in zip(odd_rows, cells, strict=True):
                    result = f.convert(cell)
                    if type(result) is Failed:
                        failed.setdefault(i, {})[f.name] = list(result.messages)
                        column.patches[i] = None
                    else:
                        column.patches[i] = _as_column(f.kind, result)
                        patched[i] = _json(result)
            unwritten = [i for i in rows_of[f"{position}j"] if i not in patched and i not in failed]
            # (Polars decided their values: no patch of Python's is among them.)
            plain = series.gather(unwritten).to_list() if unwritten else []
            if unwritten and f.kind == "number":
                # orjson's shortest text of the decimals, in one call for the column.
                text = orjson.dumps(plain).decode()[1:-1]
                patched.update(zip(unwritten, text.split(","), strict=True))
            elif unwritten:  # text that JSON escapes
                patched.update(
                    (i, _json(self._data_value(f, value)))
                    for i, value in zip(unwritten, plain, strict=True)
                )
            if patched:
                json = json.scatter(list(patched), list(patched.values()))
            columns.append(column)
            jsons.append(json)
        return self._finish(frame, columns, jsons, failed)

    @staticmethod
    def _data_value(f: _Field, value: Any) -> Any:
        """A plain cell's value as the per-row validator gives it (for its JSON)."""
        if f.kind == "date" and value is not None:
            return value.isoformat()
        return value

    def _finish(
        self,
        frame: pl.DataFrame,
        columns: list[Column],
        jsons: list[pl.Series],
        failed: dict[int, dict[str, list[str]]],
    ) -> Validated:
        height = frame.height
        # The errors of a row in field order, as a dict of the row's data lists them.
        order = {f.name: n for n, f in enumerate(self.fields)}
        errors = {
            i: dict(sorted(messages.items(), key=lambda item: order[item[0]]))
            for i, messages in failed.items()
        }
        named = sorted(
            zip((f.name for f in self.fields), jsons, strict=True), key=lambda pair: pair[0]
        )
        parts: list[pl.Expr | pl.Series] = []
        for n, (name, json) in enumerate(named):
            parts.append(lit(("{" if n == 0 else ",") + orjson.dumps(name).decode() + ":"))
            parts.append(json)
        parts.append(lit("}"))
        rows = pl.select(pl.concat_str(parts)).to_series().to_list()
        md5 = hashlib.md5
        hashes: list[str | None] = [
            None if text is None else md5(text.encode()).hexdigest() for text in rows
        ]
        every = range(height)
        keys = self._keys(lambda position: columns[position].take(every), height)
        for i in errors:
            hashes[i] = keys[i] = None
        if hashes.count(None) != len(errors):
            raise RuntimeError("A valid row of a frame has no JSON: a field's expression is wrong.")
        return Validated(columns, keys, hashes, partial(self._input_hashes, frame), errors)

    def _keys(self, values: Callable[[int], list[Any]], height: int) -> list[str | None]:
        """Each row's key, from the values of the fields at the given positions."""
        if not self.key:
            return [None] * height
        order = {f.name: n for n, f in enumerate(self.fields)}
        positions = [order[name] for name in self.key]
        if len(positions) == 1:
            return [None if v is None else _key_text(v) for v in values(positions[0])]
        return [
            "|".join(map(_key_text, cells))
            for cells in zip(*(values(p) for p in positions), strict=True)
        ]

    def _input_hashes(self, frame: pl.DataFrame, rows: Sequence[int]) -> list[str | None]:
        """The input hashes (app.pipeline.prepare) of the frame's `rows`: MD5 of the salt and
        the mapped cells joined; None without the shortcut, or for a row with a cell holding
        the separator."""
        if self._salted is None or not rows:
            return [None] * len(rows)
        if not self._sources:
            texts: list[str | None] = [""] * len(rows)
        else:
            joined = frame.select(
                pl.when(pl.any_horizontal(col(self._sources).str.contains("\x1f", literal=True)))
                .then(None)
                .otherwise(pl.concat_str(self._sources, separator="\x1f"))
            ).to_series()
            if len(rows) != frame.height:
                joined = joined.gather(list(rows))
            texts = joined.to_list()
        salted = self._salted
        hashes: list[str | None] = []
        for text in texts:
            if text is None:
                hashes.append(None)
            else:
                digest = salted.copy()
                digest.update(text.encode())
                hashes.append(digest.hexdigest())
        return hashes
