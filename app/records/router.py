from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import AfterValidator, BaseModel
from pydantic_core import PydanticCustomError

from app.auth.dependencies import Principal, require
from app.auth.permissions import VIEW
from app.core.db import raw_connection
from app.core.deps import SessionDep
from app.core.errors import error_responses
from app.core.pagination import One, Page, PageParams, page_params
from app.core.params import INT8_MAX
from app.records import service

# 422: a parameter out of range, or a NUL anywhere in the query (app/core/params.py).
router = APIRouter(prefix="/records", tags=["records"], responses=error_responses(401, 403, 422))


class RecordOut(BaseModel):
    id: int
    collection: str
    key: str
    data: dict[str, Any]
    content_hash: str
    source_id: int | None
    last_run_id: int | None
    created_at: str | None
    updated_at: str | None


def _with_offset(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise PydanticCustomError(
            "timezone_aware", "The time needs its offset (e.g. 2026-12-01T09:00:00Z)."
        )
    return moment


Moment = Annotated[datetime, AfterValidator(_with_offset)]

FILTERS = (
    " Filter by field with `filter[<field>]=<value>`: records whose field equals the value "
    "(for a list field: holds it as an element). The value is read as the field's type."
)


@router.get(
    "/{collection}",
    response_model=Page[RecordOut],
    responses=error_responses(422),
    description="List a collection's records, newest first." + FILTERS,
)
async def list_records(
    collection: str,
    request: Request,
    session: SessionDep,
    params: Annotated[PageParams, Depends(page_params)],
    principal: Annotated[Principal, Depends(require(VIEW))],
    key: Annotated[str | None, Query(description="Only the record with this key.")] = None,
    updated_since: Annotated[
        Moment | None,
        Query(description="Only records created or changed at or after this time."),
    ] = None,
    after: Annotated[
        int | None,
        Query(
            ge=1,
            le=INT8_MAX,
            description="Keyset paging: records below this record id (the next link "
            "continues from the page's last one).",
        ),
    ] = None,
) -> dict[str, Any]:
    return await service.list_page(
        await raw_connection(session),
        request,
        collection,
        params,
        key=key,
        source_id=principal.source_id,
        updated_since=updated_since,
        after=after,
    )


@router.get(
    "/{collection}/{key:path}", response_model=One[RecordOut], responses=error_responses(404)
)
async def show_record(
    collection: str,
    key: str,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(VIEW))],
) -> dict[str, Any]:
    """Show one record by its key."""
    conn = await raw_connection(session)
    record = await service.get(conn, collection, key, source_id=principal.source_id)
    return {"data": record}
