"""What a path or query parameter may hold, settled before any query runs.

asyncpg refuses to send an integer its column cannot hold and Postgres text never holds NUL:
either would be a 500. So ids in the path are checked against their column (beyond it: the
same 404 as any unknown id), integers in the query against int4 (beyond it: 422), and a NUL
anywhere in the path or query is refused before routing (404 / 422).
"""

from typing import Annotated
from urllib.parse import parse_qsl

from annotated_types import Interval
from fastapi import Path
from pydantic import AfterValidator, WithJsonSchema
from pydantic_core import PydanticCustomError
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.errors import UNKNOWN_ID, error_response, validation_response

INT4_MAX = 2**31 - 1
INT8_MAX = 2**63 - 1


def _known_id(resource: str, maximum: int) -> AfterValidator:
    def check(value: int) -> int:
        if not 1 <= value <= maximum:
            raise PydanticCustomError(
                UNKNOWN_ID, "{resource} {id} not found.", {"resource": resource, "id": value}
            )
        return value

    return AfterValidator(check)


def _id_schema(maximum: int) -> WithJsonSchema:
    return WithJsonSchema({"type": "integer", "minimum": 1, "maximum": maximum})


# Path ids, by the type of their column (see the migrations): runs, sources and tokens are
# int4, items int8. Routes declare them with the `int` converter, so only digits reach here.
RunId = Annotated[
    int, _known_id("Run", INT4_MAX), _id_schema(INT4_MAX), Path(description="Run id.")
]
SourceId = Annotated[
    int, _known_id("Source", INT4_MAX), _id_schema(INT4_MAX), Path(description="Source id.")
]
TokenId = Annotated[
    int, _known_id("Token", INT4_MAX), _id_schema(INT4_MAX), Path(description="Token id.")
]
ItemId = Annotated[
    int, _known_id("Item", INT8_MAX), _id_schema(INT8_MAX), Path(description="Item id.")
]

# An integer in the query (an id filter, a page number): what an int4 column holds, from 1.
QueryInt = Annotated[int, Interval(ge=1, le=INT4_MAX)]


def _nul_errors(query_string: bytes) -> dict[str, list[str]]:
    # Decoded as Starlette decodes it, so the check sees the values the routes would get.
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    return {
        name: [f"The {name} must not contain NUL characters."]
        for name, value in pairs
        if "\x00" in name or "\x00" in value
    }


class RefuseNul:
    """A NUL in the path names nothing (404); in the query it is a bad value (422)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            response = self._refusal(scope)
            if response is not None:
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _refusal(scope: Scope) -> JSONResponse | None:
        if "\x00" in scope["path"]:
            return error_response(404, "Not found.")
        errors = _nul_errors(scope.get("query_string", b""))
        return validation_response(errors) if errors else None
