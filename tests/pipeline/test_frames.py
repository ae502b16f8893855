"""Columnar chunks (app.pipeline.frames) against the per-row path they stand for.

Validation: on the generated definitions and chunks of test_validation_properties (as a CSV
gives them: every cell text), each row of a frame fails with the reference's messages or has
the reference's values (as their columns hold them), key and content hash, and the input
hash the per-row path gives it. Reading: a frame read from CSV bytes holds exactly the rows
the csv reader reads from them, or the frame path declines the bytes.
"""

import csv
import io
import os
from collections.abc import Sequence
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.importers.schemas import ImporterDefinition
from app.pipeline import frames
from app.pipeline.prepare import ChunkValidator
from app.pipeline.readers.csv_reader import CsvSlice, parse_slice
from app.pipeline.validation import _text
from app.records.store import column_value, content_hash, copy_text
from tests.pipeline.reference import reference_validate
from tests.pipeline.test_validation_properties import MISSING, TYPES, cases

EXAMPLES = int(os.environ.get("INGEST_PROPERTY_EXAMPLES", "40"))


@pytest.fixture(autouse=True)
def clean_database() -> None:
    """No database here: the suite's table truncation is not needed."""


def as_csv_cell(cell: Any) -> str:
    """A generated cell as a CSV gives it: text, a missing cell empty. (NUL never reaches a
    frame: `frames.read` declines it.)"""
    if cell is MISSING or cell is None:
        return ""
    return (cell if isinstance(cell, str) else _text(cell)).replace("\x00", "0")


def shown(value: Any) -> str:
    return repr(value)  # tells 1, 1.0 and True apart


def values_of(validated: frames.Validated, rows: Sequence[int]) -> list[list[Any]]:
    return [column.take(rows) for column in validated.columns]


@pytest.mark.parametrize("kind", TYPES)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_a_frame_validates_as_the_reference_validates_its_rows(
    kind: str, data: st.DataObject
) -> None:
    definition, columns, generated = data.draw(cases(kind), label="case")
    rows = [
        {column: as_csv_cell(row.get(column, MISSING)) for column in columns} for row in generated
    ]
    validator = ChunkValidator(definition, columns)
    checker = validator.frames
    if checker is None:  # a required field without a column: every row fails, per row
        return
    frame = pl.DataFrame(
        {column: [row[column] for row in rows] for column in columns},
        schema=dict.fromkeys(columns, pl.String),
    )
    validated = checker.validate(frame)
    raws = [(n, [row[c] for c in columns], None, False) for n, row in enumerate(rows, 2)]
    input_hashes = validator.hashes(raws)
    keyed = all(definition.fields[name].type in frames._KEY_KINDS for name in definition.key)
    given = validated.input_hashes_of(range(len(rows)))
    every = range(len(rows))
    every_value = values_of(validated, every)
    names = list(definition.fields)
    every_copied = validated.copied(every, names)
    # The CSV polars writes of the columns is that of their text (what the upsert sends).
    every_text = every_copied.select(pl.all().cast(pl.String))
    assert every_copied.write_csv() == every_text.write_csv()
    # Some of the rows, as the same rows of the whole.
    picked = list(every)[1::2]
    assert validated.input_hashes_of(picked) == given[1::2]
    assert [shown(v) for v in values_of(validated, picked)] == [shown(v[1::2]) for v in every_value]
    assert validated.copied(picked, names).equals(every_copied[picked])
    # Rows given as unchanged (every third valid one) are not validated; the others are as
    # in the whole, and so are the keys and hashes given.
    unchanged = {
        i: (key, digest)
        for i, (key, digest) in enumerate(zip(validated.keys, validated.hashes, strict=True))
        if key is not None and digest is not None and i % 3 == 0
    }
    partly = checker.validate_except(frame, unchanged, given)
    assert (partly.keys, partly.hashes, partly.errors) == (
        validated.keys,
        validated.hashes,
        validated.errors,
    )
    rest = [i for i in range(len(rows)) if i not in unchanged]
    assert [shown(v) for v in values_of(partly, rest)] == [
        shown([v[i] for i in rest]) for v in every_value
    ]
    assert partly.copied(rest, names).equals(every_copied[rest])
    assert partly.input_hashes_of(rest) == [given[i] for i in rest]
    # Key cells, where the shortcut takes them, are the per-row path's.
    cells = checker.key_cells(frame)
    if cells is not None:
        assert len(cells) == len(rows)
        for cell, hashed in zip(cells, input_hashes, strict=True):
            assert hashed is None or cell == hashed[0]
    for i, row in enumerate(rows):
        wanted, errors, key = reference_validate(definition, columns, row)
        if errors:
            assert validated.errors.get(i) == errors, row
            assert list(validated.errors[i]) == list(errors), row  # in field order
            assert validated.hashes[i] is None
            continue
        assert wanted is not None
        assert i not in validated.errors, row
        assert validated.hashes[i] == content_hash(wanted), row
        for (name, spec), values in zip(definition.fields.items(), every_value, strict=True):
            expected = wanted[name]
            kind = frames.NATURAL[spec.type]
            if expected is not None:
                expected = column_value(kind, expected)
            assert shown(values[i]) == shown(expected), (name, row)
            # The text COPY reads is Python's text of the value (a double's, one that reads
            # back as the same double).
            text, python = every_text[name][i], copy_text(kind, expected)
            if kind == "double precision" and text is not None and python is not None:
                assert float(text) == float(python), (name, row)
            else:
                assert text == python, (name, row)
        if keyed:
            assert validated.keys[i] == key, row
        hashed = input_hashes[i]
        assert given[i] == (None if hashed is None else hashed[1]), row


# Text that CSV quoting has to get right: quotes, separators, line breaks, spaces, Unicode.
CELLS = st.text(st.sampled_from(list("ab ,;\"\n\r\t'éß😀1")), max_size=6)


@st.composite
def csv_bytes(draw: st.DrawFn) -> tuple[bytes, list[str], str]:
    width = draw(st.integers(1, 4))
    delimiter = draw(st.sampled_from([",", ";", "\t", "|"]))
    rows = draw(st.lists(st.lists(CELLS, min_size=width, max_size=width), min_size=1, max_size=12))
    out = io.StringIO()
    csv.writer(
        out,
        delimiter=delimiter,
        lineterminator=draw(st.sampled_from(["\n", "\r\n"])),
        quoting=draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])),
    ).writerows(rows)
    text = out.getvalue()
    # Now and then a hand-made flaw: a ragged row, a blank line, a stray quote, a lone CR.
    flaw = draw(st.sampled_from(["", "", "", "x\n", "\n", '"open', 'a"b\n', "a\rb\n"]))
    at = draw(st.integers(0, len(text)))
    text = text[:at] + flaw + text[at:]
    columns = [f"c{n}" for n in range(width)]
    return text.encode(), columns, delimiter


@settings(max_examples=EXAMPLES * 10, deadline=None)
@given(case=csv_bytes())
def test_a_frame_holds_the_rows_the_csv_reader_reads_or_none(
    case: tuple[bytes, list[str], str],
) -> None:
    data, columns, delimiter = case
    frame = frames.read(data, columns, delimiter, "utf-8")
    if frame is None:
        return
    rows = parse_slice(
        data,
        columns,
        CsvSlice("utf-8", delimiter, 0, len(data)),
        at_end=True,
        breaks_before=lambda: 0,
    )
    assert all(error is None for _, error in rows)
    assert [list(row) for row in frame.rows()] == [cells for cells, _ in rows]


def test_a_frame_declines_what_the_csv_reader_reads_its_own_way() -> None:
    columns = ["a", "b"]
    for data in (
        b"1,2\r3,4\n",  # a lone CR ends a line
        b"1,2\n3\n",  # a ragged row
        b"1,2\n\n3,4\n",  # a blank line
        b'1,"2\n',  # a quote left open
        b"1,a\x00b\n",  # NUL
        "1,é\n".encode("cp1252"),
    ):
        assert frames.read(data, columns, ",", "utf-8") is None, data
    assert frames.read(b"1,2\n", columns, ",", "cp1252") is None
    assert frames.read(b"1,2\r\n3,4\r\n", columns, ",", "utf-8") is not None


def test_rows_given_as_unchanged_share_their_key_with_no_validated_row() -> None:
    """A row whose key is computed (an email's outer spaces go) may share the key of a row
    given as unchanged: then every row is validated, as the per-row path would."""
    definition = ImporterDefinition.model_validate(
        {
            "slug": "people",
            "collection": "people",
            "key": ["email"],
            "fields": {"email": {"type": "email"}, "name": {"type": "string"}},
        }
    )
    checker = ChunkValidator(definition, ["email", "name"]).frames
    assert checker is not None
    frame = pl.DataFrame({"email": ["a@example.com", " a@example.com ", "b@example.com"]})
    frame = frame.with_columns(name=pl.lit("Ada"))
    whole = checker.validate(frame)
    inputs = checker.input_hashes(frame)
    assert checker.key_cells(frame) == frame.get_column("email").to_list()
    given = {0: ("a@example.com", whole.hashes[0]), 2: ("b@example.com", whole.hashes[2])}
    again = checker.validate_except(frame, given, inputs)
    assert again.unvalidated == 0
    assert (again.keys, again.hashes) == (whole.keys, whole.hashes)
    assert values_of(again, range(3)) == values_of(whole, range(3))
    alone = checker.validate_except(frame, {2: given[2]}, inputs)
    assert alone.unvalidated == 1
    assert (alone.keys, alone.hashes) == (whole.keys, whole.hashes)
    assert values_of(alone, [0, 1]) == [column[:2] for column in values_of(whole, range(3))]
    assert values_of(alone, range(3))[1][2] is None  # an unvalidated row has no values
    names = ["email", "name"]
    assert alone.copied([0, 1], names).equals(whole.copied([0, 1], names))
    assert alone.copied(range(3), names).row(2) == (None, None)
