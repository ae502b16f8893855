"""Input hashes (prepare.py): which rows may be found unchanged without being validated."""

from typing import Any

import pytest

from app.importers.schemas import ImporterDefinition
from app.pipeline.chunks import RawRow
from app.pipeline.prepare import ChunkValidator, Known

FIELDS = {"email": {"type": "email"}, "name": {"type": "string"}, "age": {"type": "integer"}}
COLUMNS = ["email", "name", "age", "unmapped"]


@pytest.fixture(autouse=True)
def clean_database() -> None:
    """Hashing touches no database: the suite's table truncation is not needed."""


def chunk_validator(**options: Any) -> ChunkValidator:
    definition = ImporterDefinition.model_validate(
        {"slug": "users", "collection": "users", "key": ["email"], "fields": FIELDS, **options}
    )
    return ChunkValidator(definition, COLUMNS)


def raw(number: int, **cells: Any) -> RawRow:
    return (number, cells, None, False)


def test_rows_of_text_get_their_key_and_a_hash_of_their_mapped_cells() -> None:
    keys = chunk_validator().keys(
        [
            raw(1, email="a@example.com", name="Ada", age="36", unmapped="x"),
            raw(2, email="a@example.com", name="Ada", age="36", unmapped="y"),
            raw(3, email="a@example.com", name="Ada", age="37", unmapped="x"),
            raw(4, email="not an email", name="Bob", age="1", unmapped=""),
        ]
    )
    assert keys[0] is not None and keys[0][0] == "a@example.com"
    assert keys[1] == keys[0]  # an unmapped column is not part of the record
    assert keys[2] is not None and keys[2][1] != keys[0][1]
    assert keys[3] is None  # no valid key: the row is validated


def test_a_row_that_its_cells_cannot_stand_for_is_not_hashed_and_others_still_are() -> None:
    validator = chunk_validator()
    plain = raw(1, email="a@example.com", name="Ada", age="36", unmapped="")
    rows = [
        plain,
        # The separator inside a cell: its joined cells could equal another row's.
        raw(2, email="b@example.com", name="B\x1fob", age="1", unmapped=""),
        # Not text (JSON or XLSX values): 36 and "36" may type differently.
        raw(3, email="c@example.com", name="Cy", age=36, unmapped=""),
        # A JSON object without a column.
        raw(4, email="d@example.com", name="Dan"),
    ]
    keys = validator.keys(rows)
    assert keys[0] == validator.keys([plain])[0]
    assert keys[0] is not None
    assert keys[1:] == [None, None, None]
    # All text, one cell with the separator (found a chunk at a time, then row by row).
    assert validator.keys(rows[:2]) == keys[:2]


def test_hashes_change_with_the_definition_and_are_not_taken_where_they_cannot_apply() -> None:
    row = raw(1, email="a@example.com", name="Ada", age="36", unmapped="")
    (first,) = chunk_validator().keys([row])
    (other,) = chunk_validator(chunk_size=10).keys([row])
    assert first is not None and other is not None and first[1] != other[1]
    # skip and fail decide on the key alone, and append has no key to look up.
    assert chunk_validator(on_duplicate="skip").keys([row]) == [None]
    assert chunk_validator(action="append", key=[]).keys([row]) == [None]


def test_a_row_found_by_its_key_cells_with_its_input_hash_has_that_key_uncomputed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    validator = chunk_validator()
    rows = [
        raw(1, email="a@example.com", name="Ada", age="36", unmapped=""),
        raw(2, email="b@example.com", name="Bob", age="40", unmapped=""),
        raw(3, email=" c@example.com", name="Cy", age="50", unmapped=""),
    ]
    hashed = validator.hashes(rows)
    given = [h for h in hashed if h is not None]
    assert [cells for cells, _ in given] == [r[1]["email"] for r in rows]
    first = validator.keys(rows, hashed, {})
    known = {
        "a@example.com": Known("content", None, given[0][1]),
        "b@example.com": Known("content", None, "another input"),
        # Row 3's cells are not its key (an email loses its outer spaces).
        "c@example.com": Known("content", None, given[2][1]),
    }
    computed: list[list[dict[str, Any]]] = []
    keys_many = validator._validator.keys_many

    def counted(originals: list[dict[str, Any]]) -> list[str | None]:
        computed.append(originals)
        return keys_many(originals)

    monkeypatch.setattr(validator._validator, "keys_many", counted)
    assert validator.keys(rows, hashed, known) == first
    assert first[2] is not None and first[2][0] == "c@example.com"
    assert [[original["name"] for original in batch] for batch in computed] == [["Bob", "Cy"]]


def test_key_cells_stand_for_a_key_only_where_a_valid_key_is_its_cells() -> None:
    row = raw(1, email="A@Example.com", name="Ada", age="36", unmapped="")
    (lowered,) = chunk_validator(
        fields={**FIELDS, "email": {"type": "email", "transform": ["lower"]}}
    ).hashes([row])
    assert lowered is not None and lowered[0] is None
    (by_age,) = chunk_validator(key=["age"]).hashes([row])
    assert by_age is not None and by_age[0] is None
    (both,) = chunk_validator(key=["email", "name"]).hashes([row])
    assert both is not None and both[0] == "A@Example.com|Ada"


def test_rows_given_as_cells_hash_key_and_validate_as_the_same_rows_as_dicts() -> None:
    """A CSV byte range's rows come as lists of cells in the header's order."""
    validator = chunk_validator()
    cells = [
        ["a@example.com", "Ada", "36", "x"],
        ["b@example.com", "Bob", "not a number", ""],
        ["not an email", "Cy", "1", ""],
        ["'=d@example.com", "'=Dan", "7", ""],
    ]
    as_lists: list[RawRow] = [(i, row, None, False) for i, row in enumerate(cells, start=1)]
    as_dicts: list[RawRow] = [
        (i, dict(zip(COLUMNS, row, strict=True)), None, False)
        for i, row in enumerate(cells, start=1)
    ]
    assert validator.hashes(as_lists) == validator.hashes(as_dicts)
    keyed = validator.keys(as_dicts)
    assert validator.keys(as_lists) == keyed
    known = {"a@example.com": Known("content", None, "another input")}
    from_lists, _ = validator.validate(as_lists, keyed, known)
    from_dicts, _ = validator.validate(as_dicts, keyed, known)
    assert [(r.data, r.key, r.errors, r.input_hash) for r in from_lists] == [
        (r.data, r.key, r.errors, r.input_hash) for r in from_dicts
    ]
    assert from_dicts[1].errors is not None and from_dicts[0].key == "a@example.com"
