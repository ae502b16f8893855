"""Row transforms, type coercion and validation (SPEC §3), with Laravel's messages.

This is the hot path of every row, so each field is compiled once into a closure that turns a
raw cell into a typed, JSON-ready value or a `Failed` carrying the field's messages, and
`RowValidator.validate` only runs those closures.

A chunk of rows is validated a column at a time (`RowValidator.validate_many`): where every
cell of a column is plain text of the common shape (digits for an integer, an ASCII address
for an email, ...), one regular expression over the whole column stands for a call per cell,
and the values are converted in bulk. Any other column takes the per-cell closure, so the
results are the same either way.
"""

import copy
import itertools
import math
import operator
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any

import orjson

from app.core.timefmt import human_format
from app.importers.schemas import FieldSpec, ImporterDefinition
from app.pipeline.mapping import ColumnPlan

# Typed value or _INVALID; for a compiled field, typed value or Failed.
Parser = Callable[[Any], Any]
# A typed value back, or a Failed.
Check = Callable[[Any], Any]
# A column of cells -> their converted values (typed values or Failed), in order.
Batch = Callable[[list[Any]], list[Any]]


@dataclass(slots=True)
class RowResult:
    data: dict[str, Any] | None  # typed, JSON-ready field values (None when invalid)
    errors: dict[str, list[str]] | None  # field -> messages (None when valid)
    key: str | None  # record key (None when invalid or action append)


class Failed:
    """A field's messages: its own type, so no field value can be mistaken for a failure."""

    __slots__ = ("messages",)

    def __init__(self, messages: list[str]) -> None:
        self.messages = messages


# A parser's answer for a value it cannot coerce (None is a valid JSON value).
_INVALID: Any = object()
# The failed-rows CSV export prefixes these so spreadsheets do not run them as formulas.
_ESCAPED = ("'=", "'+", "'-", "'@", "'\t", "'\r")
# orjson, and so the writer, refuses wider integers.
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
# '42.0' is how a spreadsheet's float often comes back as text (e.g. through the export).
_INTEGRAL_DECIMAL = re.compile(r"([+-]?[0-9]{1,19})\.0*")
_BOOLEANS = {
    **dict.fromkeys(("true", "1", "yes", "y", "on"), True),
    **dict.fromkeys(("false", "0", "no", "n", "off"), False),
}
_BOOLEAN_NUMBERS: dict[float, bool] = {0: False, 1: True}
# Pragmatic, not RFC 5322: one '@', no spaces, a dotted domain, a TLD of letters or punycode.
# Case is spelled out rather than re.IGNORECASE, which doubles the cost of a match.
_EMAIL = re.compile(r"[^\s@]+@(?:[^\s@.]+\.)+(?:[^\W\d_]{2,}|[xX][nN]--[a-zA-Z0-9-]+)")
# A subset of _EMAIL that matches most addresses in a third less time than its Unicode classes.
_ASCII_EMAIL = re.compile(r"[a-zA-Z0-9._%+'-]+@(?:[a-zA-Z0-9-]+\.)+[a-zA-Z]{2,}")
_URL = re.compile(
    r"[hH][tT][tT][pP][sS]?://(?:[^\s/?#@]+@)?(?:[^\s/?#@:\[\]]+|\[[0-9a-fA-F:.]+\])"
    r"(?::[0-9]{1,5})?(?:[/?#]\S*)?"
)
_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_NON_DIGITS = re.compile(r"[^0-9]+")
_ISO_DATE = "%Y-%m-%d"


def _text(value: Any) -> str:
    """A value as the text a person would type: spreadsheet numbers without a '.0'."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, dict | list):
        return orjson.dumps(value, default=str).decode()
    return str(value)


def _slug(value: str) -> str:
    # Like Laravel's Str::slug: accents are transliterated rather than dropped with the letter.
    folded = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode("ascii")
    return _NON_ALNUM.sub("-", folded.lower()).strip("-")


def _strip_non_digits(value: str) -> str:
    return _NON_DIGITS.sub("", value)


_TRANSFORMS: dict[str, Callable[[str], str]] = {
    "trim": str.strip,
    "lower": str.lower,
    "upper": str.upper,
    "slug": _slug,
    "strip_non_digits": _strip_non_digits,
}


# Each type has two parsers returning the typed value or _INVALID: one for text (already
# stripped for every type but string), one for the native values of XLSX and JSON (never None).


def _reject(value: Any) -> Any:
    return _INVALID


def _integer_text(value: str) -> Any:
    # int() also takes '1_000' and non-ASCII digits, which no importer means as a number.
    if not value.isascii() or "_" in value:
        return _INVALID
    try:
        number = int(value)
    except ValueError:
        match = _INTEGRAL_DECIMAL.fullmatch(value)
        if match is None:
            return _INVALID
        number = int(match[1])
    return number if _I64_MIN <= number <= _I64_MAX else _INVALID


def _integer_native(value: Any) -> Any:
    if type(value) is int:
        number = value
    elif type(value) is float:
        if not value.is_integer():
            return _INVALID
        number = int(value)
    else:  # bool included: True is not a count
        return _INVALID
    return number if _I64_MIN <= number <= _I64_MAX else _INVALID


def _finite(number: float) -> Any:
    return number if math.isfinite(number) else _INVALID


def _number_text(value: str) -> Any:
    if not value.isascii() or "_" in value:
        return _INVALID
    # Only try int() where it can succeed: a failed int() costs more than the float() after it.
    if "." not in value:
        try:
            integer = int(value)
        except ValueError:
            pass
        else:
            if _I64_MIN <= integer <= _I64_MAX:
                return integer
    try:
        # Wider than int64 becomes a float; float() gives inf for what it cannot hold.
        return _finite(float(value))
    except ValueError:
        return _INVALID


def _number_native(value: Any) -> Any:
    if type(value) is int:
        if _I64_MIN <= value <= _I64_MAX:
            return value
        try:
            return _finite(float(value))
        except OverflowError:
            return _INVALID
    if type(value) is float:
        return _finite(value)
    return _INVALID


def _boolean_text(value: str) -> Any:
    return _BOOLEANS.get(value.lower(), _INVALID)


def _boolean_native(value: Any) -> Any:
    if type(value) is bool:
        return value
    if type(value) is int or type(value) is float:
        return _BOOLEAN_NUMBERS.get(value, _INVALID)
    return _INVALID


def _date_text(fmt: str | None) -> Parser:
    def parse(value: str) -> Any:
        try:
            if fmt is not None:
                return datetime.strptime(value, fmt).date().isoformat()
            if len(value) <= 10:
                return date.fromisoformat(value).isoformat()
            return datetime.fromisoformat(value).date().isoformat()
        except ValueError:
            return _INVALID

    if fmt != _ISO_DATE:
        return parse

    def parse_iso(value: str) -> Any:
        # strptime is the bottleneck of a date column; fromisoformat accepts exactly the
        # zero-padded 'YYYY-MM-DD' that strptime would, whose ISO form is the text itself.
        # Anything else (e.g. '2024-1-5', which strptime allows) still goes to strptime.
        if len(value) == 10 and value[4] == "-" and value[7] == "-":
            try:
                date.fromisoformat(value)
            except ValueError:
                pass
            else:
                return value
        return parse(value)

    return parse_iso


def _date_native(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.date().isoformat()
    return value.isoformat() if isinstance(value, date) else _INVALID


def _datetime_text(fmt: str | None) -> Parser:
    def parse(value: str) -> Any:
        try:
            if fmt is not None:
                return datetime.strptime(value, fmt).isoformat()
            return datetime.fromisoformat(value).isoformat()
        except ValueError:
            return _INVALID

    return parse


def _datetime_native(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day).isoformat()
    return _INVALID


def _matching(regex: re.Pattern[str], fast: re.Pattern[str] | None = None) -> Parser:
    """Text that `regex` matches whole; `fast`, a subset of it, is tried first."""
    fullmatch = regex.fullmatch
    if fast is None:

        def parse(value: str) -> Any:
            return value if fullmatch(value) else _INVALID

    else:
        fast_fullmatch = fast.fullmatch

        def parse(value: str) -> Any:
            return value if fast_fullmatch(value) or fullmatch(value) else _INVALID

    return parse


def _list_text(separator: str) -> Parser:
    def parse(value: str) -> Any:
        return list(filter(None, map(str.strip, value.split(separator))))

    return parse


def _list_native(value: Any) -> Any:
    return value if type(value) is list else _INVALID


def _json_text(value: str) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return _INVALID


def _json_native(value: Any) -> Any:
    # Values of a JSON input are JSON already.
    if type(value) is dict or type(value) is list or type(value) is bool or type(value) is int:
        return value
    return _finite(value) if type(value) is float else _INVALID


def _parsers(name: str, spec: FieldSpec) -> tuple[Parser | None, Parser]:
    """The (text, native) parsers of a field; no text parser means the text is the value."""
    kind = spec.type
    if kind == "string":
        return None, _text
    if kind == "integer":
        return _integer_text, _integer_native
    if kind == "number":
        return _number_text, _number_native
    if kind == "boolean":
        return _boolean_text, _boolean_native
    if kind == "date":
        return _date_text(spec.format), _date_native
    if kind == "datetime":
        return _datetime_text(spec.format), _datetime_native
    if kind == "email":
        return _matching(_EMAIL, _ASCII_EMAIL), _reject
    if kind == "url":
        return _matching(_URL), _reject
    if kind == "list":
        # The definition guarantees a non-empty separator (str.split('') would raise).
        return _list_text(spec.separator), _list_native
    return _json_text, _json_native


def _type_message(label: str, spec: FieldSpec) -> str:
    kind = spec.type
    if kind in ("date", "datetime"):
        if spec.format is not None:
            return f"The {label} does not match the format {human_format(spec.format)}."
        return f"The {label} is not a valid date."
    return {
        "integer": f"The {label} must be an integer.",
        "number": f"The {label} must be a number.",
        "boolean": f"The {label} field must be true or false.",
        "email": f"The {label} must be a valid email address.",
        "url": f"The {label} must be a valid URL.",
        "list": f"The {label} must be a list.",
        "json": f"The {label} must be a valid JSON string.",
    }[kind]


def _limit_text(limit: float) -> str:
    return _text(float(limit))  # min_length arrives as an int, min as a float


def _bounds(
    low: float | None, high: float | None, too_low: str, too_high: str, sized: bool
) -> Check | None:
    """One check for a min and a max (of the value, or of its length when sized); the messages
    are templates for the limit."""
    if low is None and high is None:
        return None
    low_failure = Failed([too_low.format(_limit_text(low))]) if low is not None else None
    high_failure = Failed([too_high.format(_limit_text(high))]) if high is not None else None
    floor = -math.inf if low is None else low
    ceiling = math.inf if high is None else high
    if sized:

        def check(value: Any) -> Any:
            size = len(value)
            return low_failure if size < floor else high_failure if size > ceiling else value

    else:

        def check(value: Any) -> Any:
            return low_failure if value < floor else high_failure if value > ceiling else value

    return check


def _pattern(regex: re.Pattern[str], failure: Failed, textual: bool) -> Check:
    search = regex.search
    if textual:

        def check(value: Any) -> Any:
            return value if search(value) else failure

    else:

        def check(value: Any) -> Any:
            return value if search(_text(value)) else failure

    return check


def _one_of(allowed: frozenset[Any], failure: Failed, each: bool) -> Check:
    if each:
        # Laravel's `in` on an array: every item must be allowed.
        def check(value: Any) -> Any:
            return value if all(_text(item) in allowed for item in value) else failure

    else:

        def check(value: Any) -> Any:
            return value if value in allowed else failure

    return check


def _rules(label: str, spec: FieldSpec, parse: Parser) -> list[Check]:
    """The rule checks of one field, for a typed, non-blank value. min/max, min_length/
    max_length and pattern only apply where they mean something for the type."""
    kind = spec.type
    textual = kind in ("string", "email", "url")
    checks: list[Check | None] = []
    if kind in ("integer", "number"):
        too_low = f"The {label} must be at least {{}}."
        too_high = f"The {label} may not be greater than {{}}."
        checks.append(_bounds(spec.min, spec.max, too_low, too_high, sized=False))
    elif kind == "list":
        too_low = f"The {label} must have at least {{}} items."
        too_high = f"The {label} may not have more than {{}} items."
        checks.append(_bounds(spec.min, spec.max, too_low, too_high, sized=True))
    elif textual:
        too_low = f"The {label} must be at least {{}} characters."
        too_high = f"The {label} may not be greater than {{}} characters."
        checks.append(_bounds(spec.min, spec.max, too_low, too_high, sized=True))
        checks.append(_bounds(spec.min_length, spec.max_length, too_low, too_high, sized=True))
    if spec.pattern is not None and kind not in ("list", "json"):
        failure = Failed([f"The {label} format is invalid."])
        checks.append(_pattern(re.compile(spec.pattern), failure, textual))
    if spec.in_ is not None and kind != "json":
        failure = Failed([f"The selected {label} is invalid."])
        if kind in ("integer", "number", "boolean"):
            # Compared as values: `in: [1, "2"]` allows 1, 1.0, '2' and ' 2 '.
            entries = (
                parse(entry.strip() if isinstance(entry, str) else entry) for entry in spec.in_
            )
            allowed = frozenset(entry for entry in entries if entry is not _INVALID)
        else:
            allowed = frozenset(map(_text, spec.in_))
        checks.append(_one_of(allowed, failure, each=kind == "list"))
    return [check for check in checks if check is not None]


def _all_of(checks: list[Check]) -> Check | None:
    """The checks as one: each failing check adds its message."""
    if len(checks) <= 1:
        return checks[0] if checks else None

    def check_all(value: Any) -> Any:
        failed = None
        for check in checks:
            result = check(value)
            if type(result) is Failed:
                failed = result if failed is None else Failed(failed.messages + result.messages)
        return value if failed is None else failed

    return check_all


# Cells are joined with NUL, which no shape below admits, to test a whole column at once.
_SEPARATOR = "\x00"
# A column with odd cells is tested again this many cells at a time, to find them.
_BLOCK_CELLS = 32


def _decimal(text: str) -> Any:
    return float(text) if "." in text else int(text)


def _iso_date(text: str) -> Any:
    date.fromisoformat(text)  # the shape is right; the month and day must be too
    return text


def _same(text: str) -> Any:
    return text


# Per type: the plain shape of its cells, their conversion (which may raise ValueError), and
# a plain cell. A string has no shape: any text is one. int64 always holds 18 digits.
_SHAPES: dict[str, tuple[str | None, Callable[[str], Any], str]] = {
    "string": (None, _same, ""),
    "integer": (r"[+-]?[0-9]{1,18}", int, "0"),
    "number": (r"[+-]?[0-9]{1,18}(?:\.[0-9]{1,18})?", _decimal, "0"),
    "date": (r"[0-9]{4}-[0-9]{2}-[0-9]{2}", _iso_date, "2000-01-01"),
    "email": (_ASCII_EMAIL.pattern, _same, "a@example.com"),
}


def _compile_batch(spec: FieldSpec, convert: Parser, finish: Check | None) -> Batch:
    """The column function of a field: `convert` per cell, except for text cells of the plain
    shape, converted in bulk (and checked by one regular expression when all of them are)."""

    def per_cell(cells: list[Any]) -> list[Any]:
        return list(map(convert, cells))

    kind = spec.type
    if kind not in _SHAPES or (kind == "date" and spec.format != _ISO_DATE):
        return per_cell
    if kind == "string" and "" in spec.null_if:
        return per_cell  # blank strings become null: the per-cell path decides
    shape, fast, stand_in = _SHAPES[kind]
    cell_match = re.compile(shape).fullmatch if shape else None
    column_match = re.compile(f"(?:{shape})(?:\x00(?:{shape}))*").fullmatch if shape else None
    nulls = frozenset(spec.null_if)
    transforms = tuple(_TRANSFORMS[transform] for transform in spec.transform)

    def plain_block(cells: list[str], text: list[str]) -> bool:
        """Whether every cell of a block is plain, tested on the block at once."""
        # A quote may start a formula escape, which the per-cell path strips.
        if "'" in _SEPARATOR.join(cells) or not nulls.isdisjoint(text):
            return False
        if column_match is None:
            return "" not in text
        return column_match(_SEPARATOR.join(text)) is not None

    def odd_cells(cells: list[str], text: list[str]) -> list[int]:
        """The cells that are not plain. Odd cells are few: blocks of cells are tested at
        once, and a block with an odd cell is searched cell by cell."""
        odd: list[int] = []
        for start in range(0, len(cells), _BLOCK_CELLS):
            end = start + _BLOCK_CELLS
            raws, block = cells[start:end], text[start:end]
            if plain_block(raws, block):
                continue
            plains = map(cell_match, block) if cell_match else block
            odd.extend(
                start + i
                for i, (raw, cell, plain) in enumerate(zip(raws, block, plains, strict=True))
                if not plain or "'" in raw or cell in nulls
            )
        return odd

    def mixed(cells: list[str], text: list[str]) -> list[Any]:
        """Some cells are not plain: they alone take the per-cell path."""
        odd = odd_cells(cells, text)
        if odd:
            text = list(text)
            for i in odd:
                text[i] = stand_in  # a plain cell in its place, converted then replaced
        try:
            values = list(map(fast, text))
        except ValueError:  # a date of the right shape that does not exist
            return per_cell(cells)
        if finish is not None:
            values = list(map(finish, values))
        for i in odd:
            values[i] = convert(cells[i])
        return values

    def batch(cells: list[Any]) -> list[Any]:
        try:
            joined = _SEPARATOR.join(cells)
        except TypeError:  # not all text: JSON or XLSX values
            return per_cell(cells)
        if joined.count(_SEPARATOR) != len(cells) - 1:
            return per_cell(cells)  # a NUL inside a cell would pass for a separator
        text = cells
        for transform in transforms:
            text = list(map(transform, text))
        if "'" in joined or not nulls.isdisjoint(text):
            return mixed(cells, text)
        if column_match is not None:
            if column_match(_SEPARATOR.join(text) if transforms else joined) is None:
                return mixed(cells, text)
            try:
                text = list(map(fast, text))
            except ValueError:
                return mixed(cells, text)
        return text if finish is None else list(map(finish, text))

    return batch


def _compile_field(name: str, spec: FieldSpec, is_key: bool) -> tuple[Parser, Batch]:
    """The closure raw cell -> typed value or Failed, for one field, and its column form."""
    label = name.replace("_", " ")
    kind = spec.type
    is_string = kind == "string"
    parse_text, parse_native = _parsers(name, spec)

    def parse(value: Any) -> Any:
        if type(value) is str:
            return value if parse_text is None else parse_text(value)
        return parse_native(value)

    # Coercion to string cannot fail.
    type_failure = None if is_string else Failed([_type_message(label, spec)])
    # A record needs its key, so a key field is required whatever the definition says.
    required = spec.required or is_key
    required_failure = Failed([f"The {label} field is required."])
    check = _all_of(_rules(label, spec, parse))
    transforms = tuple(_TRANSFORMS[transform] for transform in spec.transform)
    # trim, slug and strip_non_digits leave no outer spaces, and lower/upper add none.
    strip = not is_string and not {"trim", "slug", "strip_non_digits"} & set(spec.transform)
    empty_is_null = not is_string or "" in spec.null_if
    # None rather than an empty set: a lookup would hash every cell for nothing.
    nulls = frozenset(spec.null_if) - {""} or None

    def finish_blankable(value: Any) -> Any:
        # Laravel: a blank value fails `required` and skips every other rule; an empty list
        # fails `required` too, but the rules still see it.
        if value is None or (type(value) is str and (not value or value.isspace())):
            return required_failure if required else value
        if required and not value and (type(value) is list or type(value) is dict):
            return required_failure
        return value if check is None else check(value)

    # Only string, json and list values can be blank or empty; others need only the rules.
    finish: Check | None = check
    if kind in ("string", "json", "list") and (required or check is not None):
        finish = finish_blankable

    def coerce(value: Any) -> Any:
        value = parse(value)
        if value is _INVALID:
            return type_failure
        return value if finish is None else finish(value)

    if spec.default is not None:
        # The default is used as-is (no unescaping, no transforms), but typed and checked.
        null_value = coerce(spec.default)
    else:
        null_value = required_failure if required else None
    # Rows must not share a mutable default: a writer may change one row's list.
    copy_null = isinstance(null_value, dict | list)

    def convert(raw: Any) -> Any:
        if type(raw) is str:
            if "'" in raw and raw.startswith(_ESCAPED):
                raw = raw[1:]
            if transforms:
                for transform in transforms:
                    raw = transform(raw)
            if strip:
                raw = raw.strip()
            if (empty_is_null and not raw) or (nulls is not None and raw in nulls):
                return copy.deepcopy(null_value) if copy_null else null_value
            # The text path of coerce, inlined: it is the common one.
            if parse_text is not None:
                raw = parse_text(raw)
                if raw is _INVALID:
                    return type_failure
            return raw if finish is None else finish(raw)
        if raw is None:
            return copy.deepcopy(null_value) if copy_null else null_value
        return coerce(raw)

    return convert, _compile_batch(spec, convert, finish)


def _absent(convert: Parser) -> Parser:
    """A field without a column: null in every row, whatever the row holds."""
    return lambda _: convert(None)


def _absent_batch(convert: Parser) -> Batch:
    return lambda cells: [convert(None) for _ in cells]


def _key_text(value: Any) -> str:
    return value if type(value) is str else _text(value)


class RowValidator:
    """Validates the rows of one run: build once per definition and column plan, call per row."""

    def __init__(self, definition: ImporterDefinition, plan: ColumnPlan) -> None:
        keyed = definition.action != "append"
        self._fields: list[tuple[str, str, Parser]] = []
        self._batches: list[Batch] = []
        for name, spec in definition.fields.items():
            convert, batch = _compile_field(name, spec, keyed and name in definition.key)
            column = plan.sources.get(name)
            if column is None:
                # Any column will do: the absent field's closure ignores the cell.
                column, convert, batch = name, _absent(convert), _absent_batch(convert)
            self._fields.append((name, column, convert))
            self._batches.append(batch)
        by_name = {
            name: (column, batch)
            for (name, column, _), batch in zip(self._fields, self._batches, strict=True)
        }
        # In the key's order, as `_key` joins them.
        self._key_batches = [by_name[name] for name in definition.key] if keyed else []
        self._key: Callable[[dict[str, Any]], str] | None = None
        if keyed and len(definition.key) == 1:
            field = definition.key[0]
            self._key = lambda data: _key_text(data[field])
        elif keyed:
            values = operator.itemgetter(*definition.key)
            self._key = lambda data: "|".join(map(_key_text, values(data)))

    def validate(self, row: dict[str, Any]) -> RowResult:
        get = row.get
        data = {name: convert(get(column)) for name, column, convert in self._fields}
        for value in data.values():
            if type(value) is Failed:
                # Copies: a field's failures are shared by all its rows.
                errors = {
                    name: list(failed.messages)
                    for name, failed in data.items()
                    if type(failed) is Failed
                }
                return RowResult(None, errors, None)
        return RowResult(data, None, None if self._key is None else self._key(data))

    def keys_many(self, rows: list[dict[str, Any]]) -> list[str | None]:
        """The record key of each row, from its key fields alone (None where one of them is
        invalid): what `validate` gives a row that is valid."""
        if self._key is None:
            return [None] * len(rows)
        cells = [[row.get(column) for row in rows] for column, _ in self._key_batches]
        return self.keys_of(cells)

    @property
    def key_columns(self) -> list[str]:
        """The input columns of the key fields, in the key's order."""
        return [column for column, _ in self._key_batches]

    def keys_of_lists(self, rows: list[list[Any]], columns: list[str]) -> list[str | None]:
        """`keys_many` of rows given as lists of cells in `columns`' order."""
        if self._key is None:
            return [None] * len(rows)
        at = {column: i for i, column in enumerate(columns)}
        return self.keys_of([[row[at[column]] for row in rows] for column in self.key_columns])

    def keys_of(self, cells: list[list[Any]]) -> list[str | None]:
        """`keys_many` of rows given as the cells of `key_columns`, a list per column."""
        if self._key is None:
            return [None] * len(cells[0]) if cells else []
        columns = [
            batch(column) for (_, batch), column in zip(self._key_batches, cells, strict=True)
        ]
        if len(columns) == 1:
            return [None if type(value) is Failed else _key_text(value) for value in columns[0]]
        return [
            None
            if any(type(value) is Failed for value in values)
            else "|".join(map(_key_text, values))
            for values in zip(*columns, strict=True)
        ]

    def validate_many(self, rows: list[dict[str, Any]]) -> list[RowResult]:
        """`validate` of each row, computed a column at a time."""
        return self.validate_columns([[row.get(column) for row in rows] for column in self.columns])

    @property
    def converters(self) -> list[tuple[str, Parser]]:
        """Each field's per-cell closure (raw cell -> typed value or a failure), in field
        order; a field without a column ignores its cell."""
        return [(name, convert) for name, _, convert in self._fields]

    @property
    def columns(self) -> list[str]:
        """The input column of each field, in field order (any name for a field without
        one: its cells are ignored)."""
        return [column for _, column, _ in self._fields]

    def validate_lists(self, rows: list[list[Any]], columns: list[str]) -> list[RowResult]:
        """`validate_many` of rows given as lists of cells in `columns`' order: the rows are
        transposed at once. A field without a column ignores its cells."""
        if not rows:
            return []
        by_column = dict(zip(columns, map(list, zip(*rows, strict=True)), strict=True))
        blank = [None] * len(rows)
        return self.validate_columns([by_column.get(column, blank) for column in self.columns])

    def validate_columns(self, cells: list[list[Any]]) -> list[RowResult]:
        """`validate_many` of rows given as the cells of each field's column, in field
        order."""
        names = [name for name, _, _ in self._fields]
        columns = [batch(column) for column, batch in zip(cells, self._batches, strict=True)]
        failed: set[int] = set()
        for values in columns:
            if Failed in set(map(type, values)):  # most columns have no failure: no scan
                failed.update(i for i, value in enumerate(values) if type(value) is Failed)
        datas = list(map(dict, map(zip, itertools.repeat(names), zip(*columns, strict=True))))
        key = self._key
        results = []
        for i, data in enumerate(datas):
            if i in failed:
                errors = {
                    name: list(value.messages)
                    for name, value in data.items()
                    if type(value) is Failed
                }
                results.append(RowResult(None, errors, None))
            else:
                results.append(RowResult(data, None, None if key is None else key(data)))
        return results
