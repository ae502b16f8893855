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
        self._key_validator: RowValidator | None = None
        self._sources: list[str | None] = []
        self._salt = b""
        if definition.action != "append" and definition.on_duplicate in (
            "update",
            "update_if_newer",
        ):
            key_fields = {name: definition.fields[name] for name in definition.key}
            self._key_validator = RowValidator(
                definition.model_copy(update={"fields": key_fields}), plan
            )
            self._sources = [plan.sources[name] for name in definition.fields]
            self._salt = definition_salt(definition)

    def keys(self, raws: list[RawRow]) -> list[tuple[str, str] | None]:
        """Per raw row, its (key, input hash) when the shortcut may apply to it, else None."""
        keyed: list[tuple[str, str] | None] = [None] * len(raws)
        if self._key_validator is None:
            return keyed
        sources, salt = self._sources, self._salt
        readable = [i for i, raw in enumerate(raws) if raw[2] is None]
        results = self._key_validator.validate_many([raws[i][1] for i in readable])
        for i, result in zip(readable, results, strict=True):
            if result.key is None:
                continue
            get = raws[i][1].get
            try:
                # Without a default: a value that is not plain JSON (an XLSX date) could share
                # its text with a string that types differently, so such rows are validated.
                cells = orjson.dumps([get(source) if source else None for source in sources])
            except TypeError:
                continue
            keyed[i] = (result.key, hashlib.md5(salt + cells).hexdigest())
        return keyed

    def validate(
        self,
        raws: list[RawRow],
        keyed: list[tuple[str, str] | None],
        known: dict[str, Known],
    ) -> list[ChunkRow]:
        once = Counter(k[0] for k in keyed if k is not None)
        rows: list[ChunkRow | None] = [None] * len(raws)
        pending: list[int] = []
        for i, ((number, original, error, _), hashed) in enumerate(zip(raws, keyed, strict=True)):
            if error is not None:
                rows[i] = ChunkRow(number, original, None, None, {"message": error})
            elif hashed is not None and once[hashed[0]] == 1:
                record = known.get(hashed[0])
                if record is not None and record.input_hash == hashed[1]:
                    rows[i] = ChunkRow(
                        number,
                        original,
                        None,
                        hashed[0],
                        None,
                        input_hash=hashed[1],
                        unchanged=True,
                    )
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
        return [row for row in rows if row is not None]
