"""What a JSON request body may hold, settled before any query runs.

Postgres text never holds NUL and asyncpg refuses an integer its column cannot hold: either
would be a 500. So every request body is a ``RequestBody``, which refuses a NUL in any string of
any field (list items, dict keys and values included) with a 422 naming the field, and every
body integer that reaches a column is one of the bounded types below.
"""

from typing import Annotated, Any

from annotated_types import Interval
from pydantic import AfterValidator, BaseModel, ValidationInfo, WithJsonSchema, field_validator
from pydantic_core import PydanticCustomError

from app.core.params import INT4_MAX

INT4_MIN = -(2**31)


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return any(_has_nul(item) for item in value)
    # Nested request bodies checked their own fields (with their own paths) already.
    return False


class RequestBody(BaseModel):
    """Base of every request body: no field may hold a NUL character, however deep."""

    # Declared on the base, this runs before the subclasses' own validators of each field, so
    # no URL canonicalisation or regex sees a NUL first.
    @field_validator("*")
    @classmethod
    def _refuse_nul(cls, value: Any, info: ValidationInfo) -> Any:
        if _has_nul(value):
            name = info.field_name or "value"
            field = cls.model_fields.get(name)
            label = (field.alias if field is not None and field.alias else name).replace("_", " ")
            raise PydanticCustomError(
                "nul_character", "The {label} must not contain a NUL character.", {"label": label}
            )
        return value


def _known_id(value: int, info: ValidationInfo) -> int:
    # Beyond its column no row has this id: the same answer as any unknown id.
    if not 1 <= value <= INT4_MAX:
        label = (info.field_name or "id").replace("_", " ")
        raise PydanticCustomError(
            "unknown_reference", "The selected {label} is invalid.", {"label": label}
        )
    return value


# An integer an int4 column holds.
Int4 = Annotated[int, Interval(ge=INT4_MIN, le=INT4_MAX)]
# A body field naming a row by an int4 id (sources, tokens, runs: see the migrations).
Int4Id = Annotated[
    int,
    AfterValidator(_known_id),
    WithJsonSchema({"type": "integer", "minimum": 1, "maximum": INT4_MAX}),
]
