"""The row validator against the plain reference of tests/pipeline/reference.py, on generated
definitions and chunks (issue 14: a columnar validator must keep today's semantics).

Each type in turn leads a definition of one to four fields; the leading field gets many rules,
its companions few. A column is drawn in one of five styles: all plain cells of its type (the
shape a column fast path takes), plain cells with a few odd ones among them, any text, native
values (a column of an XLSX or JSON input), or anything, missing cells included.
"""

import functools
import os
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any, get_args

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.importers.schemas import FieldType, ImporterDefinition, Transform
from app.pipeline.mapping import plan_columns
from app.pipeline.validation import RowResult, RowValidator
from tests.pipeline.reference import reference_key, reference_validate


@pytest.fixture(autouse=True)
def clean_database() -> None:
    """Validation touches no database: the suite's table truncation is not needed."""


# A new type or transform fails here (KeyError below) until it gets its cells.
TYPES: list[str] = list(get_args(FieldType))
TRANSFORMS: list[str] = list(get_args(Transform))
NAMES = ["id", "full_name", "score", "signup_date", "e_mail_address"]
# A row may lack a column (a ragged CSV row, a JSON object without the key).
MISSING = object()

LIMITS = [-5, 0, 0.5, 1, 2, 3, 10, 150, 1e20]
PATTERNS = [r"^\d+$", r"[a-z]", r"^[A-Z]{2}$", "@", r"\.", "^1", "e$", "^$", "(?i)yes|true"]
IN_ENTRIES = [1, "2", 2.5, " 3 ", True, 0, None, "x", "US", "GB", "a", "b", "1.0", "yes"]
IN_ENTRIES += ["2024-01-05", "ada@example.com", "https://example.com", 42.0]
# ... and entries that mean something to one type (numbers and booleans compare as values).
IN_BY_TYPE: dict[str, list[Any]] = {
    "string": ["US", "GB", "x", "Ada", 1, 1.0, True, None],
    "integer": [1, "2", " 3 ", 2.5, True, "x", 0, "150", 7.0],
    "number": [1, "2", 2.5, " 3 ", "1.0", "nan", 0.5, True],
    "boolean": ["yes", 0, True, "x", "off", 2],
    "date": ["2024-01-05", date(2024, 1, 5), "05/01/2024"],
    "datetime": ["2024-01-05T10:30:00", datetime(2024, 1, 5, 10, 30)],
    "email": ["ada@example.com", "A@B.CO", "a@b.co"],
    "url": ["https://example.com", "http://localhost"],
    "list": ["a", "b", "1", 1, " c ", "x y"],
    "json": [1, "x"],
}
DEFAULTS = [0, 5, "5", " 5 ", "", "  ", "x", True, False, "yes", 1.5, ["new"], [], {"a": 1}]
DEFAULTS += ["2024-01-05", "2024-01-05T10:30:00", "a@b.co", "https://example.com", "a;b", "NA"]
NULLS = ["", "NA", "n/a", "-", "0", " ", "x", "2024-01-05"]
SEPARATORS = [",", ";", "|", " ", "--"]
DATE_FORMATS = [None, "%Y-%m-%d", "%Y-%m-%d", "%d/%m/%Y", "%Y%m%d", "%d.%m.%y"]
DATETIME_FORMATS = [None, "%Y-%m-%d %H:%M", "%d/%m/%Y %H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]

# Text of odd shapes, tried against every type.
ODD_TEXT = [
    *["", " ", "  ", "\t", "\x1c", "\u2003", "NA", "na", "n/a", "-", "0", "1", "2", "x"],
    *["'=1", "'-5", "'+x", "''=x", "'quoted'", "'\t7", "a\x00b", "1\x002", "US", "GB"],
    *["Héllo, Wörld", "ß", "İ", "ǅ", "\u0661", "1_000", "42.0", "yes", "2024-01-05", "a;b"],
]
# ... and those that are near misses (or near hits) of one type.
ODD_BY_TYPE = {
    "string": ["'=SUM(A1)", "it's", " Ada ", "  ", "\x00", "A"],
    "integer": [
        *["42.0", "42.", "-3.000", " 42 ", "+5", "-0", "007", "1e3", "4.5"],
        *["\u0664\u0662", "\uff11\uff12"],  # 42 in Arabic-Indic digits, 12 in full-width ones
        *["9223372036854775807", "9223372036854775808", "-9223372036854775808"],
        *["-9223372036854775809", "0" * 20 + "1.0", "0" * 20 + "1", "1" * 25, "'-5", "'=2"],
    ],
    "number": [
        *["1e3", ".5", "1.", "nan", "inf", "-Infinity", "1e999", "1_0", "1,000", "-0.0"],
        *["1" * 25, "1" * 400, "9223372036854775808", "'-2.5", " 2 ", "0x10", "1E-3"],
    ],
    "boolean": ["TRUE", "Off", "maybe", "t", " yes ", "'=1", "1.0"],
    "date": [
        *["2024-1-5", "2024-02-30", "20240105", "2024-W01-1", "2024-13-01"],
        "\uff12\uff10\uff12\uff14-01-05",  # a full-width year, which strptime's %Y takes
        *["05/01/2024", "2024-01-05T10:30:00", "2024-01-05 10:30+02:00", "05.01.24"],
    ],
    "datetime": [
        *["2024-01-05T10:30:00Z", "2024-01-05 10:30", "2024-01-05", "soon", "20240105T1030"],
        *["2024-13-01T00:00", "05/01/2024 10:30:00", "2024-01-05T10:30:00+0200"],
    ],
    "email": [
        *[" Ada@Example.COM ", "jürgen@bücher.de", "ivan@example.xn--p1ai", "a@b.c"],
        *["a@@b.co", "ada@example..com", "'@a@b.co", "o'brien@example.ie", "A@B.CO"],
        *["a@b.co\x00c@d.co", "ada@example", "ada @example.com"],
    ],
    "url": [
        *["HTTP://[::1]:80/", "ftp://x.y", "https://", "https:///path", "http://exa mple.com"],
        *["https://user:pw@example.com/", "http://localhost", "'-http://x.y"],
    ],
    "list": ["a;b", " , ", "a, b ,,c", "x--y", "a|b| ", "'=a,b"],
    "json": ["null", '""', '" "', "[]", "{}", "NaN", "{a: 1}", "18446744073709551616", "[1,"],
}
# Native values of XLSX and JSON inputs near the edges of each type.
NATIVE_BY_TYPE: dict[str, list[Any]] = {
    "string": [42, 42.0, 1.5, True, {"a": 1}, [1, "a"], date(2024, 1, 5), float("nan")],
    "integer": [7, 7.0, -3.0, 4.5, True, 2**63 - 1, 2**63, -(2**63) - 1, float("inf")],
    "number": [3, 2.5, 2**70, 10**400, float("nan"), float("-inf"), False, -0.0, 1e20],
    "boolean": [True, False, 1, 0, 1.0, -0.0, 2, 0.5, float("nan")],
    "date": [date(2024, 1, 5), datetime(2024, 1, 5, 23, 59), 20240105],
    "datetime": [
        *[datetime(2024, 1, 5, 10, 30), date(2024, 1, 5), 1704450600],
        datetime(2024, 1, 5, 10, 30, tzinfo=timezone(timedelta(hours=1))),
    ],
    "email": [42, True],
    "url": [7, None],
    "list": [["a", 1], [], {"a": 1}, 5, True],
    "json": [{"a": [1, 2]}, [], {}, 3, 2.5, float("nan"), False, date(2024, 1, 5)],
}

FIXED_OFFSETS: st.SearchStrategy[Any] = st.sampled_from([None, UTC, timezone(timedelta(hours=2))])
DATES = st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 31))
DATETIMES = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2100, 12, 31), timezones=FIXED_OFFSETS
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=5,
)
# Native values of XLSX and JSON inputs.
NATIVE = st.one_of(
    st.none(),
    st.integers(-3, 3),
    st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**70, 10**400, 150, 151]),
    st.sampled_from([0.0, -0.0, 1.0, 42.0, 1.5, -2.5, 1e20, 2.0**70, 0.25]),
    st.floats(),
    st.booleans(),
    DATES,
    DATETIMES,
    st.dictionaries(st.text(max_size=3), st.integers(-5, 5), max_size=2),
    st.lists(st.text(max_size=3) | st.integers(-5, 5), max_size=3),
)


# Any short text, odd characters (NUL, quotes, separators) well represented.
FREE_TEXT = st.text(
    st.characters(codec="utf-8") | st.sampled_from(" '=-_.,;@0123456789"), max_size=6
)


@functools.cache
def plain_cells(kind: str, fmt: str | None, separator: str) -> st.SearchStrategy[str]:
    """Text cells of the plain shape of a type. Built once: building a strategy costs more
    than drawing from it."""
    if kind == "string":
        return st.text(max_size=8) | st.sampled_from(["US", "GB", "a", "b", "x", "Ada"])
    if kind == "integer":
        return st.integers(-5, 200).map(str) | st.from_regex(r"[+-]?[0-9]{1,20}", fullmatch=True)
    if kind == "number":
        shaped = st.from_regex(r"[+-]?[0-9]{1,20}(\.[0-9]{1,20})?", fullmatch=True)
        return shaped | st.integers(-5, 200).map(str) | st.sampled_from(["2.5", "0.5", "1.0"])
    if kind == "boolean":
        return st.sampled_from(["true", "false", "1", "0", "yes", "no", "Y", "n", "On", "OFF"])
    if kind == "date":
        return DATES.map(lambda day: day.strftime(fmt or "%Y-%m-%d"))
    if kind == "datetime":
        if fmt is None:
            return DATETIMES.map(datetime.isoformat) | DATETIMES.map(lambda t: t.isoformat(" "))
        return DATETIMES.map(lambda moment: moment.strftime(fmt))
    if kind == "email":
        address = r"[a-zA-Z0-9._%+'-]{1,8}@([a-zA-Z0-9-]{1,6}\.){1,2}[a-zA-Z]{2,4}"
        return st.from_regex(address, fullmatch=True) | st.just("ada@example.com")
    if kind == "url":
        url = r"https?://[a-z0-9.-]{1,10}(:[0-9]{1,5})?(/[a-z0-9/?=&#]{0,10})?"
        return st.from_regex(url, fullmatch=True)
    if kind == "list":
        # (Quotes, backslashes and braces: what an array's text must escape.)
        words = ["a", "b", " c ", "", "x y", "1", 'q"u', "b\\s", "{x}"]
        items = st.lists(st.sampled_from(words), max_size=4)
        return items.map(separator.join)
    return JSON_VALUES.map(lambda value: orjson.dumps(value).decode())


@st.composite
def either(draw: st.DrawFn, *choices: st.SearchStrategy[Any]) -> Any:
    """A draw from one of `choices`, each as likely (one_of weighs a choice by its branches)."""
    return draw(draw(st.sampled_from(choices)))


@functools.cache
def column_cells(
    kind: str, fmt: str | None, separator: str, own: tuple[str, ...]
) -> tuple[dict[str, st.SearchStrategy[list[Any]]], st.SearchStrategy[Any]]:
    """The few distinct cells of a column, per style, and the odd cells that "mostly plain"
    adds; `own` is the field's null_if values and text default."""
    plain = plain_cells(kind, fmt, separator)
    # Text of odd shapes: most of them near misses of the type, some of any type, any text.
    odd = either(
        st.sampled_from(ODD_BY_TYPE[kind]), st.sampled_from(ODD_TEXT + list(own)), FREE_TEXT
    )
    # Native values near the edges of the type, or any native value (a column of XLSX, JSON).
    edges = st.sampled_from(NATIVE_BY_TYPE[kind])
    native = either(edges, edges, NATIVE)
    styles = {
        "plain": plain,
        "mostly plain": plain,
        "text": either(plain, odd),
        "native": native,
        "anything": either(plain, odd, edges, NATIVE, st.just(MISSING)),
    }
    columns = {style: st.lists(cell, min_size=1, max_size=8) for style, cell in styles.items()}
    return columns, either(odd, native, st.just(MISSING))


# The field under test takes any style; the others mostly plain cells, so that rows are often
# valid and their data and keys compared.
STYLES = st.sampled_from(["plain", "mostly plain", "text", "native", "anything"])
COMPANION_STYLES = st.sampled_from(["plain", "plain", "plain", "mostly plain", "text", "native"])


@st.composite
def columns_of(draw: st.DrawFn, spec: dict[str, Any], rows: int, lead: bool) -> list[Any]:
    """The cells of one column, `rows` long, in one of five styles. A few cells are drawn
    and repeated down the column: drawing every cell of a long chunk is what takes time."""
    nulls = spec.get("null_if", [])
    own = [*nulls, *(f" {value} " for value in nulls)]
    if isinstance(spec.get("default"), str):
        own.append(spec["default"])
    by_style, odd = column_cells(
        spec["type"], spec.get("format"), spec.get("separator", ","), tuple(own)
    )
    style = draw(STYLES if lead else COMPANION_STYLES)
    drawn = draw(by_style[style])
    cells = [drawn[i % len(drawn)] for i in range(rows)]
    if style == "mostly plain":
        # A few odd cells anywhere, block edges of 32 cells included.
        for i in draw(st.lists(st.integers(0, rows - 1), max_size=3)):
            cells[i] = draw(odd)
    return cells


ONE_IN = {n: st.integers(1, n) for n in (3, 4, 5, 6, 12)}
RULES = {
    "min": st.sampled_from(LIMITS),
    "max": st.sampled_from(LIMITS),
    "min_length": st.integers(0, 5),
    "max_length": st.integers(0, 10),
    "pattern": st.sampled_from(PATTERNS),
    "default": st.sampled_from(DEFAULTS),
    "null_if": st.lists(st.sampled_from(NULLS), max_size=3, unique=True),
    "transform": st.lists(st.sampled_from(TRANSFORMS), max_size=3),
}
IN_LISTS = {
    kind: st.lists(
        either(st.sampled_from(IN_BY_TYPE[kind]), st.sampled_from(IN_ENTRIES)),
        min_size=1,
        max_size=5,
    )
    for kind in TYPES
}
FORMATS = {"date": st.sampled_from(DATE_FORMATS), "datetime": st.sampled_from(DATETIME_FORMATS)}


@st.composite
def field_specs(draw: st.DrawFn, kind: str | None = None) -> dict[str, Any]:
    """One field: the field under test of type `kind`, or a companion of any type with
    fewer rules; rules may mean nothing for the type."""
    lead = kind is not None
    kind = kind or draw(st.sampled_from(TYPES))
    often, sometimes = (ONE_IN[3], ONE_IN[4]) if lead else (ONE_IN[6], ONE_IN[12])
    spec: dict[str, Any] = {"type": kind}
    if draw(often) == 1:
        spec["required"] = True
    for rule in ("min", "max"):
        if draw(often) == 1:
            spec[rule] = draw(RULES[rule])
    for rule in ("min_length", "max_length", "pattern"):
        if draw(sometimes) == 1:
            spec[rule] = draw(RULES[rule])
    if draw(sometimes) == 1:
        spec["in"] = draw(IN_LISTS[kind])
    if draw(often) == 1:
        spec["default"] = draw(RULES["default"])
    spec["null_if"] = draw(RULES["null_if"])
    spec["transform"] = draw(RULES["transform"])
    if kind in FORMATS:
        spec["format"] = draw(FORMATS[kind])
    if kind == "list":
        spec["separator"] = draw(st.sampled_from(SEPARATORS))
    return spec


NAME_LISTS = st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True)
ACTIONS = st.sampled_from(["append", "upsert", "replace"])
SIZES = st.integers(1, 40) | st.integers(30, 70)  # past a block of 32 cells now and then


@st.composite
def cases(draw: st.DrawFn, kind: str) -> tuple[ImporterDefinition, list[str], list[dict[str, Any]]]:
    """A definition whose first field is of type `kind`, the header of its input and a chunk
    of rows."""
    names = draw(NAME_LISTS)
    specs = {name: draw(field_specs(None if i else kind)) for i, name in enumerate(names)}
    action = draw(ACTIONS)
    key = draw(st.permutations(names))[: draw(st.integers(0 if action == "append" else 1, 2))]
    header: dict[str, str] = {}  # field -> its column; fields out of it have none
    for name in names:
        if name in key or draw(ONE_IN[5]) > 1:
            spelling = draw(st.sampled_from(["name", "title", "from"]))
            if spelling == "from":  # a `from` name, spelt otherwise in the header
                specs[name]["from"] = [f"{name} col"]
            header[name] = {
                "name": name,
                "title": name.replace("_", " ").title(),  # 'Full Name' folds to full_name
                "from": f"{name.upper()}-COL",
            }[spelling]
    definition = ImporterDefinition.model_validate(
        {"slug": "props", "collection": "props", "action": action, "key": key, "fields": specs}
    )
    columns = [*header.values(), "notes"]
    size = draw(SIZES)
    cells = {
        column: draw(columns_of(specs[name], size, lead=name == names[0]))
        for name, column in header.items()
    }
    # A field without a column ignores a cell under its own name.
    cells |= {name: [" 1 "] * size for name in names if name not in header}
    cells["notes"] = ["unmapped"] * size
    rows = [
        {column: cells[column][i] for column in cells if cells[column][i] is not MISSING}
        for i in range(size)
    ]
    return definition, columns, rows


def shown(result: RowResult) -> str:
    """A result as text that tells 1, 1.0 and True apart (the JSON the writer stores does)."""
    return repr((result.data, result.errors, result.key))


# Every type leads a definition in turn: left to chance, a run of a few hundred examples
# would leave some type and rule unseen.
@pytest.mark.parametrize("kind", TYPES)
@settings(
    # A thorough hunt: INGEST_PROPERTY_EXAMPLES=2000 .venv/bin/pytest tests/pipeline/...
    max_examples=int(os.environ.get("INGEST_PROPERTY_EXAMPLES", "40")),
    deadline=None,
    # The suite's autouse fixture is replaced above by one that does nothing.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_rows_validate_as_the_reference_validates_them(kind: str, data: st.DataObject) -> None:
    """A chunk at once (`validate_many`), each row alone (`validate`) and the chunk's keys
    (`keys_many`) all answer as the reference does, row by row."""
    definition, columns, rows = data.draw(cases(kind), label="case")
    check = RowValidator(definition, plan_columns(definition, columns))
    expected = [repr(reference_validate(definition, columns, row)) for row in rows]

    chunk = check.validate_many(rows)
    one_by_one = [check.validate(row) for row in rows]
    keys = check.keys_many(rows)

    assert len(chunk) == len(rows)
    for row, result, alone, wanted in zip(rows, chunk, one_by_one, expected, strict=True):
        assert shown(result) == wanted, row
        assert shown(alone) == wanted, row
    assert keys == [reference_key(definition, columns, row) for row in rows]
