"""Turn a chunk's raw rows into validated rows, skipping the rows known to be unchanged.

Every row gets an *input hash*: the MD5 of its mapped cells (in field order) salted with the
importer definition and the fields the file has. Records keep the input hash of the row that
wrote them, so a row sent again with the same cells under the same definition is unchanged
without being validated, canonicalised or written: the same cells under the same definition
always give the same typed data. Only its record is needed, found by key.

Records are first looked up by the rows' key cells as they stand, where a valid key's text is
its cells (text types, no transforms): a record found that way that has the row's input hash
came from the very same cells, so its key is the row's key, and no key is computed. The other
rows get their key computed from the key fields alone, and are looked up by it.

The shortcut applies where an existing record leads to a content comparison, i.e. for
``on_duplicate`` update and update_if_newer (skip and fail decide on the key alone), and only
to a key that one row of the chunk has (with two, the earlier row may change the record before
the later one is compared) and that no earlier row of the run had (such a row must mark the
record as its own; see the splitter).
"""

import hashlib
import operator
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, cast

import orjson

from app.importers.schemas import ImporterDefinition
from app.pipeline.chunks import ChunkRow, Original, RawRow, original_dict
from app.pipeline.frames import FrameValidator, key_sources
from app.pipeline.mapping import ColumnPlan, plan_columns
from app.pipeline.validation import RowResult, RowValidator
from app.records.store import Known

INVALID = "The given data was invalid."

# A row known unchanged by its input hash: row number, record key, original data.
Unchanged = tuple[int, str, Original]


# Joins a row's cells for hashing; a row with a cell that holds it is not hashed.
_SEPARATOR = "\x1f"


def _single(source: str | int) -> Callable[[Any], tuple[Any]]:
    return lambda original: (original[source],)


def definition_salt(definition: ImporterDefinition) -> bytes:
    dump = definition.model_dump(mode="json", by_alias=True)
    return hashlib.md5(orjson.dumps(dump, option=orjson.OPT_SORT_KEYS)).digest()


def _key_cells(
    definition: ImporterDefinition, sources: dict[str, str | None], at: dict[str, Any]
) -> Callable[[Any], str] | None:
    """The row's key cells joined as a record key is, when a valid key's text is its cells;
    `at` maps a column to where a row holds its cell (its name, or its position)."""
    columns = key_sources(definition, sources)
    if columns is None:
        return None
    present = [at[column] for column in columns]
    if len(present) == 1:
        return operator.itemgetter(present[0])
    cells = operator.itemgetter(*present)
    return lambda original: "|".join(cells(original))


def _lists(originals: list[Original]) -> list[list[str]]:
    """`originals` known to be lists of cells (their layout is by position)."""
    return cast(list[list[str]], originals)


class _Layout:
    """How a chunk's rows hold their cells: dicts by column name, or lists (a CSV byte
    range's well-formed rows) by position in the header."""

    def __init__(
        self, definition: ImporterDefinition, plan: ColumnPlan, at: dict[str, Any]
    ) -> None:
        sources = [at[source] for source in plan.sources.values() if source is not None]
        self.sources: Callable[[Any], tuple[Any, ...]] | None = None
        if len(sources) > 1:
            self.sources = operator.itemgetter(*sources)
        elif sources:
            self.sources = _single(sources[0])
        self.key_cells = _key_cells(definition, plan.sources, at)


class ChunkValidator:
    """Validates the rows of one run (one definition and header): build once, call per chunk."""

    def __init__(self, definition: ImporterDefinition, columns: list[str]) -> None:
        plan = plan_columns(definition, columns)
        self._definition = definition
        self._validator = RowValidator(definition, plan)
        self._shortcut = definition.action != "append" and definition.on_duplicate in (
            "update",
            "update_if_newer",
        )
        # The cells that make a record: its fields' columns in field order. Which fields have
        # no column depends on the file, so it is part of the salt with the definition.
        self._sources = [source for source in plan.sources.values() if source is not None]
        present = [name for name, source in plan.sources.items() if source is not None]
        # Fed the salt once; each row's hash continues a copy of it.
        self._salted = hashlib.md5(definition_salt(definition) + orjson.dumps(present))
        self._columns = columns
        self._plan = plan
        self._frames: FrameValidator | None = None
        self._by_name = _Layout(definition, plan, {column: column for column in columns})
        self._by_position = _Layout(
            definition, plan, {column: i for i, column in enumerate(columns)}
        )

    @property
    def frames(self) -> FrameValidator | None:
        """The columnar form of this validator (app.pipeline.frames), None where the
        definition and header cannot take it."""
        if self._frames is None:
            self._frames = FrameValidator(
                self._definition, self._plan, self._validator, self._salted, self._shortcut
            )
        return self._frames if self._frames.usable else None

    def _layout(self, originals: Sequence[Original]) -> _Layout:
        return self._by_position if originals and type(originals[0]) is list else self._by_name

    def hashes(self, raws: list[RawRow]) -> list[tuple[str | None, str] | None]:
        """Per raw row, when the shortcut may apply to it: its key cells as they stand (None
        where a key's text need not be its cells) and its input hash; else None."""
        hashed: list[tuple[str | None, str] | None] = [None] * len(raws)
        if not self._shortcut:
            return hashed
        readable = [i for i, raw in enumerate(raws) if raw[2] is None]
        originals = [raws[i][1] for i in readable]
        texts = self._texts(originals)
        key_cells, salted = self._layout(originals).key_cells, self._salted
        for i, original, text in zip(readable, originals, texts, strict=True):
            if text is not None:  # so every mapped cell is there, as text
                digest = salted.copy()
                digest.update(text.encode())
                cells = None if key_cells is None else key_cells(original)
                hashed[i] = (cells, digest.hexdigest())
        return hashed

    def keys(
        self,
        raws: list[RawRow],
        hashed: list[tuple[str | None, str] | None] | None = None,
        known: dict[str, Known] | None = None,
    ) -> list[tuple[str, str] | None]:
        """Per raw row, its (key, input hash) when the shortcut may apply to it, else None.
        A row whose key cells name a record in `known` that has the row's input hash has
        that key; the other rows' keys are computed, from the key fields alone."""
        if hashed is None:
            hashed = self.hashes(raws)
        known = known or {}
        keyed: list[tuple[str, str] | None] = [None] * len(raws)
        rest: list[tuple[int, str]] = []
        for i, given in enumerate(hashed):
            if given is None:
                continue
            cells, digest = given
            record = None if cells is None else known.get(cells)
            if cells is not None and record is not None and record.input_hash == digest:
                keyed[i] = (cells, digest)
            else:
                rest.append((i, digest))
        computed = self._keys_of([raws[i][1] for i, _ in rest])
        for (i, digest), key in zip(rest, computed, strict=True):
            if key is not None:
                keyed[i] = (key, digest)
        return keyed

    def _keys_of(self, originals: list[Original]) -> list[str | None]:
        if self._layout(originals) is self._by_position:
            return self._validator.keys_of_lists(_lists(originals), self._columns)
        return self._validator.keys_many(self._originals(originals))

    def _originals(self, originals: list[Original]) -> list[dict[str, Any]]:
        columns = self._columns
        return [original_dict(original, columns) for original in originals]

    def _texts(self, originals: list[Original]) -> Sequence[str | None]:
        """Per row, its mapped cells joined, or None when they cannot stand for the row: a
        value that is not text (XLSX or JSON: it could share its text with a string that
        types differently), or a cell that holds the separator."""
        cells, separators = self._layout(originals).sources, len(self._sources) - 1
        if cells is None:
            return [""] * len(originals)
        try:
            texts: list[str] = list(map(_SEPARATOR.join, map(cells, originals)))
        except (KeyError, TypeError):  # a JSON object without a column, or a value not text
            return [self._text(original) for original in self._originals(originals)]
        if "".join(texts).count(_SEPARATOR) == separators * len(texts):
            return texts
        return [text if text.count(_SEPARATOR) == separators else None for text in texts]

    def _text(self, original: dict[str, Any]) -> str | None:
        cells = [original.get(source) for source in self._sources]
        texts = [cell for cell in cells if type(cell) is str]
        if len(texts) < len(cells):
            return None
        text = _SEPARATOR.join(texts)
        return text if text.count(_SEPARATOR) == len(texts) - 1 else None

    def validate(
        self,
        raws: list[RawRow],
        keyed: list[tuple[str, str] | None],
        known: dict[str, Known],
    ) -> tuple[list[ChunkRow], list[Unchanged]]:
        """The chunk's rows, validated, but for the rows its input hash shows unchanged: those
        come apart, as (row number, key, original)."""
        once = Counter(k[0] for k in keyed if k is not None)
        rows: list[ChunkRow | None] = [None] * len(raws)
        unchanged: list[Unchanged] = []
        pending: list[int] = []
        for i, ((number, original, error, duplicate), hashed) in enumerate(
            zip(raws, keyed, strict=True)
        ):
            if error is not None:
                rows[i] = ChunkRow(number, original, None, None, {"message": error})
            elif hashed is not None and once[hashed[0]] == 1 and not duplicate:
                record = known.get(hashed[0])
                if record is not None and record.input_hash == hashed[1]:
                    unchanged.append((number, hashed[0], original))
                else:
                    pending.append(i)
            else:
                pending.append(i)
        results = self._validate([raws[i][1] for i in pending])
        for i, result in zip(pending, results, strict=True):
            number, original, _, duplicate = raws[i]
            if result.errors:
                errors = {"message": INVALID, "validation": result.errors}
                rows[i] = ChunkRow(number, original, None, None, errors)
            else:
                hashed = keyed[i]
                input_hash = hashed[1] if hashed is not None else None
                rows[i] = ChunkRow(
                    number, original, result.data, result.key, None, duplicate, input_hash
                )
        return [row for row in rows if row is not None], unchanged

    def _validate(self, originals: list[Original]) -> list[RowResult]:
        if self._layout(originals) is self._by_position:
            return self._validator.validate_lists(_lists(originals), self._columns)
        return self._validator.validate_many(self._originals(originals))
