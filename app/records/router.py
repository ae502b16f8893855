from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from app.auth.dependencies import Principal, require
from app.auth.permissions import VIEW
from app.core.deps import SessionDep
from app.core.errors import error_responses
from app.core.pagination import One, Page, PageParams, page_params, paginate
from app.records import service

router = APIRouter(prefix="/records", tags=["records"], responses=error_responses(401, 403))


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


@router.get("/{collection}", response_model=Page[RecordOut])
async def list_records(
    collection: str,
    request: Request,
    session: SessionDep,
    params: Annotated[PageParams, Depends(page_params)],
    principal: Annotated[Principal, Depends(require(VIEW))],
    key: Annotated[str | None, Query(description="Only the record with this key.")] = None,
) -> dict[str, Any]:
    """List a collection's records, newest first."""
    stmt = service.list_query(collection, key=key, source_id=principal.source_id)
    return await paginate(session, request, stmt, params, service.to_resource)


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
    record = await service.get(session, collection, key, source_id=principal.source_id)
    return {"data": service.to_resource(record)}
