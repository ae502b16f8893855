"""Header matching (SPEC §3): which input column each field of an importer reads."""

import re
from dataclasses import dataclass

from app.importers.schemas import FieldSpec, ImporterDefinition

# 'E-mail', 'e mail' and 'E_MAIL' are one header to a person, so they are one name here.
_SEPARATORS = re.compile(r"[\s_-]+")
# Added by the failed-rows CSV export; a re-upload must not map them onto fields.
_EXPORT_COLUMNS = frozenset({"_error_message", "_row_number"})


class MissingColumns(Exception):
    """A column the definition needs is absent. str(exc) is the run's error message:
    'Missing key column "email"' (the first missing key field, by its first `from` name or its
    name), or for strict_headers 'Missing mapped column(s): "Name", "Age"'."""


@dataclass(frozen=True)
class ColumnPlan:
    sources: dict[str, str | None]  # field name -> the input column it reads (None: absent)


def _fold(header: str) -> str:
    return _SEPARATORS.sub("", header).casefold()


def _names(field: str, spec: FieldSpec) -> list[str]:
    return spec.from_ or [field]


def plan_columns(definition: ImporterDefinition, columns: list[str]) -> ColumnPlan:
    """Match headers per SPEC §3: a field's `from` names (or its name) match columns
    case-insensitively after folding spaces, underscores and hyphens; the first `from` name
    that matches wins. Raises MissingColumns when a key field has no column, or (strict_headers)
    when a field with a `from` or without a default has none."""
    by_fold: dict[str, str] = {}
    for column in columns:
        if column not in _EXPORT_COLUMNS:
            # Of two headers that fold alike, the first one is read.
            by_fold.setdefault(_fold(column), column)

    sources: dict[str, str | None] = {}
    for field, spec in definition.fields.items():
        sources[field] = next(
            (by_fold[key] for key in map(_fold, _names(field, spec)) if key in by_fold), None
        )

    for field in definition.key:
        if sources[field] is None:
            raise MissingColumns(
                f'Missing key column "{_names(field, definition.fields[field])[0]}"'
            )
    if definition.strict_headers:
        missing = [
            _names(field, spec)[0]
            for field, spec in definition.fields.items()
            if sources[field] is None and (spec.from_ or spec.default is None)
        ]
        if missing:
            listed = ", ".join(f'"{name}"' for name in missing)
            raise MissingColumns(f"Missing mapped column(s): {listed}")
    return ColumnPlan(sources)
