"""Turn a chunk's raw rows into validated rows, skipping the rows known to be unchanged.

Every row gets an *input hash*: the MD5 of its mapped cells (in field order) salted with the
importer definition and the fields the file has. Records keep the input hash of the row that
wrote them, so a row sent
again with the same cells under the same definition is unchanged without being validated,
canonicalised or written: the same cells under the same definition always give the same typed
data. Only its key is computed, from the key fields alone, to find its record.

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
from dataclasses import dataclass
from typing import Any

import orjson

from app.importers.schemas import ImporterDefinition
from app.pipeline.chunks import ChunkRow, RawRow
from app.pipeline.mapping import plan_columns
from app.pipeline.validation import RowValidator

INVALID = "The given data was invalid."

# A row known unchanged by its input hash: row number, record key, original data.
Unchanged = tuple[int, str, dict[str, Any]]


@dataclass(slots=True)
class Known:
    """What the chunk needs of an existing record."""

    hash: str
    compare: Any
    input_hash: str | None = None


# Joins a row's cells for hashing; a row with a cell that holds it is not hashed.
_SEPARATOR = "\x1f"


def _single(source: str) -> Callable[[dict[str, Any]], tuple[Any]]:
    return lambda original: (original[source],)


def definition_salt(definition: ImporterDefinition) -> bytes:
    dump = definition.model_dump(mode="json", by_alias=True)
    return hashlib.md5(orjson.dumps(dump, option=orjson.OPT_SORT_KEYS)).digest()


class ChunkValidator:
    """Validates the rows of one run (one definition and header): build once, call per chunk."""

    def __init__(self, definition: ImporterDefinition, columns: list[str]) -> None:
        plan = plan_columns(definition, columns)
        self._validator = RowValidator(definition, plan)
        self._shortcut = definition.action != "append" and definition.on_duplicate in (
            "update",
            "update_if_newer",
        )
        # The cells that make a record: its fields' columns in field order. Which fields have
        # no column depends on the file, so it is part of the salt with the definition.
        self._sources = [source for source in plan.sources.values() if source is not None]
        present = [name for name, source in plan.sources.items() if source is not None]
        self._salt = definition_salt(definition) + orjson.dumps(present)

    def keys(self, raws: list[RawRow]) -> list[tuple[str, str] | None]:
        """Per raw row, its (key, input hash) when the shortcut may apply to it, else None."""
        keyed: list[tuple[str, str] | None] = [None] * len(raws)
        if not self._shortcut:
            return keyed
        readable = [i for i, raw in enumerate(raws) if raw[2] is None]
        originals = [raws[i][1] for i in readable]
        keys = self._validator.keys_many(originals)
        texts = self._texts(originals)
        salt = self._salt
        for i, key, text in zip(readable, keys, texts, strict=True):
            if key is not None and text is not None:
                keyed[i] = (key, hashlib.md5(salt + text.encode()).hexdigest())
        return keyed

    def _texts(self, originals: list[dict[str, Any]]) -> Sequence[str | None]:
        """Per row, its mapped cells joined, or None when they cannot stand for the row: a
        value that is not text (XLSX or JSON: it could share its text with a string that
        types differently), or a cell that holds the separator."""
        sources, separators = self._sources, len(self._sources) - 1
        if not sources:
            return [""] * len(originals)
        cells = operator.itemgetter(*sources) if separators else _single(sources[0])
        try:
            texts: list[str] = list(map(_SEPARATOR.join, map(cells, originals)))
        except (KeyError, TypeError):  # a JSON object without a column, or a value not text
            return [self._text(original) for original in originals]
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
        results = self._validator.validate_many([raws[i][1] for i in pending])
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
