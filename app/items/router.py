"""Agent push and the review workflow over HTTP (SPEC §6)."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query, Request, status
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.dependencies import Principal, require
from app.auth.permissions import CREATE, REVIEW, VIEW
from app.core.deps import SessionDep, SettingsDep, check_queue_room, split_after_commit
from app.core.errors import error_responses
from app.core.idempotency import IdempotencyDep, fingerprint
from app.core.pagination import One, Page, PageParams, page_params, paginate
from app.core.params import ItemId, QueryInt
from app.core.storage import storage_of
from app.items import hooks, payload, service
from app.items.models import Item
from app.items.schemas import (
    ApproveIn,
    ItemDetailOut,
    ItemOut,
    ItemStatus,
    PromoteIn,
    PushOut,
    RejectIn,
    RequestChangesIn,
    RetargetIn,
)
from app.runs import service as runs_service

# 422: a parameter out of range, or a NUL anywhere in the query (app/core/params.py).
router = APIRouter(prefix="/items", tags=["items"], responses=error_responses(401, 403, 422))

ViewDep = Annotated[Principal, Depends(require(VIEW))]
ReviewDep = Annotated[Principal, Depends(require(REVIEW))]

_ITEM = {"type": "object", "additionalProperties": True}
PUSH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"type": "object", "required": ["item"], "properties": {"item": _ITEM}},
                        {
                            "type": "object",
                            "required": ["items"],
                            "properties": {
                                "items": {"type": "array", "items": _ITEM, "minItems": 1}
                            },
                        },
                    ]
                }
            }
        },
    }
}
TRANSITION_ERRORS = error_responses(400, 404, 409, 422)


@router.post(
    "/{type}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=One[PushOut],
    responses=error_responses(404, 409, 413, 422, 429),
    openapi_extra=PUSH_BODY,
)
async def push_items(
    type: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: Annotated[Principal, Depends(require(CREATE))],
    idempotency: IdempotencyDep,
) -> Any:
    """Push `{"item": {...}}` or `{"items": [...]}` to a push importer; processed by a run."""
    importer = await service.importer_for(session, type, principal.source_id)
    definition = service.push_definition(importer)
    await check_queue_room(request)
    limit = payload.byte_limit(settings.max_push_items, settings.max_upload_bytes)
    raw = await payload.read_limited(request.headers.get("content-length"), request.stream(), limit)
    body = payload.parse_push(raw, settings.max_push_items)
    items = body.items
    request_hash = fingerprint("push", type, payload.canonical_json(items))
    replayed = await idempotency.replay(session, principal.token_id, request_hash)
    if replayed is not None:
        return replayed

    source_id = principal.source_id if principal.source_id is not None else importer.source_id
    source = await service.push_source(session, source_id)
    if principal.source_id is not None and source is not None:
        paths = [body.path(i) for i in range(len(items))]
        service.check_source_urls(definition, items, source, paths)
    hooks.apply_hooks(definition, items)
    hooks.align_columns(definition, items)

    as_array = definition.format == "json"
    storage = storage_of(settings)
    stored = await payload.store_items(storage, items, as_array=as_array)
    try:
        run = await runs_service.create_run(
            session,
            importer,
            kind="push",
            user_id=principal.user_id,
            token_id=principal.token_id,
            source_id=source_id,
            original_filename=f"push-{type}.{'json' if as_array else 'ndjson'}",
            file_key=stored.key,
            file_sha256=stored.sha256,
            file_size=stored.size,
        )
        result = {"data": {"queued": len(items), "source_id": source_id, "run_id": run.id}}
        await idempotency.save(session, principal.token_id, request_hash, 202, result)
    except BaseException:
        await storage.delete(stored.key)
        raise
    split_after_commit(request, run.id)
    return result


@router.get("", response_model=Page[ItemOut])
async def list_items(
    request: Request,
    session: SessionDep,
    params: Annotated[PageParams, Depends(page_params)],
    principal: ViewDep,
    status_: Annotated[ItemStatus | None, Query(alias="status")] = None,
    type_: Annotated[str | None, Query(alias="type", description="Importer slug.")] = None,
    source: Annotated[QueryInt | None, Query(description="Source id.")] = None,
    run: Annotated[QueryInt | None, Query(description="Run id.")] = None,
    external_id: str | None = None,
    has_duplicates: bool | None = None,
    sort: Literal["id", "created_at", "updated_at"] = "id",
    order: Literal["asc", "desc"] = "desc",
) -> dict[str, Any]:
    """List items, newest first (filters: status, type, source, run, has_duplicates)."""
    stmt = service.list_query(
        scope_source_id=principal.source_id,
        status=status_,
        type_=type_,
        source_id=source,
        run_id=run,
        external_id=external_id,
        has_duplicates=has_duplicates,
        sort=sort,
        order=order,
    )
    return await paginate(session, request, stmt, params, service.to_resource)


# 405: a non-integer id is the push route's path (POST /items/{type}).
@router.get(
    "/{item_id:int}", response_model=One[ItemDetailOut], responses=error_responses(404, 405)
)
async def show_item(item_id: ItemId, session: SessionDep, principal: ViewDep) -> dict[str, Any]:
    """Show an item with its duplicate markers and transition history."""
    return {"data": await service.show(session, item_id, principal.source_id)}


async def _answer(session: AsyncSession, item: Item) -> dict[str, Any]:
    return {"data": service.to_resource(item, await service.history(session, item.id))}


@router.post(
    "/{item_id:int}/approve", response_model=One[ItemDetailOut], responses=TRANSITION_ERRORS
)
async def approve_item(
    item_id: ItemId,
    session: SessionDep,
    principal: ReviewDep,
    body: Annotated[ApproveIn | None, Body()] = None,
) -> dict[str, Any]:
    """Approve a pending item (→ approved)."""
    note = body.note if body else None
    item = await service.transition(session, item_id, "approve", principal, note=note)
    return await _answer(session, item)


@router.post(
    "/{item_id:int}/reject", response_model=One[ItemDetailOut], responses=TRANSITION_ERRORS
)
async def reject_item(
    item_id: ItemId,
    session: SessionDep,
    principal: ReviewDep,
    body: Annotated[RejectIn | None, Body()] = None,
) -> dict[str, Any]:
    """Reject a pending item (→ rejected), with an optional `reason`."""
    note = (body.reason or body.note) if body else None
    item = await service.transition(session, item_id, "reject", principal, note=note)
    return await _answer(session, item)


@router.post(
    "/{item_id:int}/request-changes", response_model=One[ItemDetailOut], responses=TRANSITION_ERRORS
)
async def request_changes(
    item_id: ItemId,
    session: SessionDep,
    principal: ReviewDep,
    body: Annotated[RequestChangesIn | None, Body()] = None,
) -> dict[str, Any]:
    """Send a pending item back for changes (→ changes_requested); `note` is required."""
    note = body.note if body else None
    item = await service.transition(session, item_id, "request-changes", principal, note=note)
    return await _answer(session, item)


@router.post(
    "/{item_id:int}/retarget", response_model=One[ItemDetailOut], responses=TRANSITION_ERRORS
)
async def retarget_item(
    item_id: ItemId,
    session: SessionDep,
    settings: SettingsDep,
    principal: ReviewDep,
    body: Annotated[RetargetIn | None, Body()] = None,
) -> dict[str, Any]:
    """Move an item to another type (any status but merged); recomputes its markers."""
    item = await service.retarget(
        session,
        item_id,
        principal,
        new_type=body.type if body else None,
        note=body.note if body else None,
        threshold=settings.near_duplicate_threshold,
    )
    return await _answer(session, item)


@router.post(
    "/{item_id:int}/promote", response_model=One[ItemDetailOut], responses=TRANSITION_ERRORS
)
async def promote_item(
    item_id: ItemId,
    session: SessionDep,
    principal: ReviewDep,
    body: Annotated[PromoteIn | None, Body()] = None,
) -> dict[str, Any]:
    """Write an approved item to the records store (→ merged) and link the record."""
    note = body.note if body else None
    item = await service.transition(session, item_id, "promote", principal, note=note)
    return await _answer(session, item)
