"""Turn a chunk's raw rows into validated rows, skipping the rows known to be unchanged.

Every row gets an *input hash*: the MD5 of its mapped cells (in field order) salted with the
importer definition. Records keep the input hash of the row that wrote them, so a row sent
again with the same cells under the same definition is unchanged without being validated,
canonicalised or written: the same cells under the same definition always give the same typed
data. Only its key is computed, from the key fields alone, to find its record.

The shortcut applies where an existing record leads to a content comparison, i.e. for
``on_duplicate`` update and update_if_newer (skip and fail decide on the key alone), and only
to a key that one row of the chunk has: with two, the earlier row may change the record before
the later one is compared.
"""

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from app.importers.schemas import ImporterDefinition
from app.pipeline.chunks import ChunkRow, RawRow
from app.pipeline.mapping import plan_columns
from app.pipeline.validation import RowValidator

INVALID = "The given data was invalid."


@dataclass(slots=True)
class Known:
    """What the chunk needs of an existing record."""

    hash: str
    compare: Any
    input_hash: str | None = None


def definition_salt(definition: ImporterDefinition) -> bytes:
    dump = definition.model_dump(mode="json", by_alias=True)
    return hashlib.md5(orjson.dumps(dump, option=orjson.OPT_SORT_KEYS)).digest()


class ChunkValidator:
    """Validates the rows of one run (one definition and header): build once, call per chunk."""

    def __init__(self, definition: ImporterDefinition, columns: list[str]) -> None:
        plan = plan_columns(definition, columns)
        self._validator = RowValidator(definition, plan)
        self._key: Callable[[dict[str, Any]], str | None] | None = None
        self._sources: list[str | None] = []
        self._salt = b""
        if definition.action != "append" and definition.on_duplicate in (
            "update",
            "update_if_newer",
        ):
            key_fields = {name: definition.fields[name] for name in definition.key}
            key_validator = RowValidator(definition.model_copy(update={"fields": key_fields}), plan)
            self._key = lambda original: key_validator.validate(original).key
            self._sources = [plan.sources[name] for name in definition.fields]
            self._salt = definition_salt(definition)

    def keys(self, raws: list[RawRow]) -> list[tuple[str, str] | None]:
        """Per raw row, its (key, input hash) when the shortcut may apply to it, else None."""
        if self._key is None:
            return [None] * len(raws)
        key_of, sources, salt = self._key, self._sources, self._salt
        keyed: list[tuple[str, str] | None] = []
        for _, original, error, _ in raws:
            key = key_of(original) if error is None else None
            if key is None:
                keyed.append(None)
                continue
            get = original.get
            try:
                # Without a default: a value that is not plain JSON (an XLSX date) could share
                # its text with a string that types differently, so such rows are validated.
                cells = orjson.dumps([get(source) if source else None for source in sources])
            except TypeError:
                keyed.append(None)
                continue
            keyed.append((key, hashlib.md5(salt + cells).hexdigest()))
        return keyed

    def validate(
        self,
        raws: list[RawRow],
        keyed: list[tuple[str, str] | None],
        known: dict[str, Known],
    ) -> list[ChunkRow]:
        once = Counter(k[0] for k in keyed if k is not None)
        validate = self._validator.validate
        rows = []
        for (number, original, error, duplicate), hashed in zip(raws, keyed, strict=True):
            if error is not None:
                rows.append(ChunkRow(number, original, None, None, {"message": error}))
                continue
            input_hash = None
            if hashed is not None:
                key, input_hash = hashed
                record = known.get(key)
                if record is not None and record.input_hash == input_hash and once[key] == 1:
                    rows.append(
                        ChunkRow(
                            number, original, None, key, None, input_hash=input_hash, unchanged=True
                        )
                    )
                    continue
            result = validate(original)
            if result.errors:
                errors = {"message": INVALID, "validation": result.errors}
                rows.append(ChunkRow(number, original, None, None, errors))
            else:
                rows.append(
                    ChunkRow(number, original, result.data, result.key, None, duplicate, input_hash)
                )
        return rows
