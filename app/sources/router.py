"""Sources over HTTP. A source-bound token sees only its own source (others: 404)."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query, Request, status
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.dependencies import Principal, require
from app.auth.permissions import ADMIN, CREATE, VIEW
from app.core.deps import SessionDep, check_queue_room, split_after_commit
from app.core.errors import error_responses
from app.core.idempotency import Idempotency, IdempotencyDep, fingerprint
from app.core.pagination import One, Page, PageParams, page_params, paginate
from app.core.params import SourceId
from app.importers.schemas import ApprovalMode
from app.runs import service as runs_service
from app.sources import service
from app.sources.schemas import (
    SourceCreate,
    SourceOut,
    SourceStatus,
    SourceTokenCreate,
    SourceTokenOut,
    SourceUpdate,
    SyncOut,
)

# 422: a parameter out of range, or a NUL anywhere in the query (app/core/params.py).
router = APIRouter(prefix="/sources", tags=["sources"], responses=error_responses(401, 403, 422))

ViewDep = Annotated[Principal, Depends(require(VIEW))]
AdminDep = Annotated[Principal, Depends(require(ADMIN))]


@router.get("", response_model=Page[SourceOut])
async def list_sources(
    request: Request,
    session: SessionDep,
    params: Annotated[PageParams, Depends(page_params)],
    principal: ViewDep,
    status_: Annotated[SourceStatus | None, Query(alias="status")] = None,
    provider: str | None = None,
    ingestion_type: str | None = None,
    onboarded: bool | None = None,
    approval_mode: ApprovalMode | None = None,
    sort: Literal["id", "name", "source_priority", "created_at", "updated_at"] = "id",
    order: Literal["asc", "desc"] = "desc",
) -> dict[str, Any]:
    """List sources, newest first (filters: status, provider, ingestion_type, onboarded)."""
    await service.settle_syncs(session)
    stmt = service.list_query(
        scope_source_id=principal.source_id,
        status=status_,
        provider=provider,
        ingestion_type=ingestion_type,
        onboarded=onboarded,
        approval_mode=approval_mode,
        sort=sort,
        order=order,
    )
    return await paginate(session, request, stmt, params, service.to_resource)


@router.get("/{source_id:int}", response_model=One[SourceOut], responses=error_responses(404))
async def show_source(
    source_id: SourceId, session: SessionDep, principal: ViewDep
) -> dict[str, Any]:
    """Show one source with its sync state."""
    await service.settle_syncs(session)
    source = await service.get(session, source_id, scope_source_id=principal.source_id)
    return {"data": service.to_resource(source)}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=One[SourceOut],
    responses=error_responses(400, 422),
)
async def create_source(
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(CREATE))],
    body: SourceCreate,
) -> dict[str, Any]:
    """Create a source (only an admin may choose its approval mode)."""
    source = await service.create(
        session,
        body.model_dump(exclude_unset=True),
        is_admin=principal.can(ADMIN),
        scope_source_id=principal.source_id,
    )
    return {"data": service.to_resource(source)}


@router.put(
    "/{source_id:int}", response_model=One[SourceOut], responses=error_responses(400, 404, 422)
)
async def update_source(
    source_id: SourceId, session: SessionDep, principal: AdminDep, body: SourceUpdate
) -> dict[str, Any]:
    """Change a source; only the fields given change."""
    source = await service.get(
        session, source_id, scope_source_id=principal.source_id, for_update=True
    )
    source = await service.update(
        session, source, body.model_dump(exclude_unset=True), is_admin=principal.can(ADMIN)
    )
    return {"data": service.to_resource(source)}


@router.delete(
    "/{source_id:int}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404)
)
async def delete_source(source_id: SourceId, session: SessionDep, principal: AdminDep) -> None:
    """Delete a source and revoke its tokens (its runs, items and records stay, unlinked)."""
    source = await service.get(session, source_id, scope_source_id=principal.source_id)
    await service.delete(session, source)


@router.post(
    "/{source_id:int}/pause", response_model=One[SourceOut], responses=error_responses(404)
)
async def pause_source(
    source_id: SourceId, session: SessionDep, principal: AdminDep
) -> dict[str, Any]:
    """Pause a source: no scheduled run starts and its pushes get 409 until it is resumed."""
    source = await service.get(
        session, source_id, scope_source_id=principal.source_id, for_update=True
    )
    return {"data": service.to_resource(await service.set_paused(session, source, True))}


@router.post(
    "/{source_id:int}/resume", response_model=One[SourceOut], responses=error_responses(404)
)
async def resume_source(
    source_id: SourceId, session: SessionDep, principal: AdminDep
) -> dict[str, Any]:
    """Resume a paused source."""
    source = await service.get(
        session, source_id, scope_source_id=principal.source_id, for_update=True
    )
    return {"data": service.to_resource(await service.set_paused(session, source, False))}


async def _sync(
    request: Request,
    session: AsyncSession,
    principal: Principal,
    idempotency: Idempotency,
    source_id: int,
    *,
    initial: bool,
) -> Any:
    source = await service.get(session, source_id, scope_source_id=principal.source_id)
    await check_queue_room(request)
    request_hash = fingerprint("import" if initial else "sync", str(source_id))
    replayed = await idempotency.replay(session, principal.token_id, request_hash)
    if replayed is not None:
        return replayed
    runs = await service.start_sync(
        session,
        source,
        user_id=principal.user_id,
        token_id=principal.token_id,
        initial=initial,
    )
    data = {
        "source": service.to_resource(source),
        "runs": [runs_service.to_resource(run) for run in runs],
    }
    # Stored as the response model renders it, so a replay is the same document.
    result = {"data": SyncOut.model_validate(data).model_dump(mode="json")}
    await idempotency.save(session, principal.token_id, request_hash, 202, result)
    split_after_commit(request, *(run.id for run in runs))
    return result


@router.post(
    "/{source_id:int}/sync",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=One[SyncOut],
    responses=error_responses(404, 409, 422, 429),
)
async def sync_source(
    source_id: SourceId,
    request: Request,
    session: SessionDep,
    principal: AdminDep,
    idempotency: IdempotencyDep,
) -> Any:
    """Start a run of every URL importer of the source now."""
    return await _sync(request, session, principal, idempotency, source_id, initial=False)


@router.post(
    "/{source_id:int}/import",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=One[SyncOut],
    responses=error_responses(404, 409, 422, 429),
)
async def import_source(
    source_id: SourceId,
    request: Request,
    session: SessionDep,
    principal: AdminDep,
    idempotency: IdempotencyDep,
) -> Any:
    """Initial import: run every URL importer of the source and mark it onboarded."""
    return await _sync(request, session, principal, idempotency, source_id, initial=True)


@router.post(
    "/{source_id:int}/tokens",
    status_code=status.HTTP_201_CREATED,
    response_model=One[SourceTokenOut],
    responses=error_responses(400, 404, 422),
)
async def create_source_token(
    source_id: SourceId,
    session: SessionDep,
    principal: AdminDep,
    body: Annotated[SourceTokenCreate | None, Body()] = None,
) -> dict[str, Any]:
    """Issue a service token bound to this source (e.g. for an n8n workflow); shown once."""
    source = await service.get(session, source_id, scope_source_id=principal.source_id)
    return {"data": await service.issue_agent_token(session, source, body or SourceTokenCreate())}
