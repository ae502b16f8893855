"""The operator surface of runs: list, show, rows, events, cancel, retry, error summary,
failed rows.

Paths use the ``int`` converter, so the fixed paths beside them (``/importers``, ``/upload``...)
never match here.
"""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Header, Query, Request, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sse_starlette import EventSourceResponse

from app.auth.dependencies import Principal, require
from app.auth.permissions import CREATE, VIEW
from app.core.db import raw_connection
from app.core.deps import SessionDep, SettingsDep, check_queue_room, split_after_commit
from app.core.errors import error_responses
from app.core.idempotency import IdempotencyDep, fingerprint
from app.core.pagination import One, Page, PageParams, build_page, page_params, paginate
from app.core.params import RunId
from app.core.storage import storage_of
from app.runs import events, live, service
from app.runs.events import EventType
from app.runs.models import FINISHED_STATUSES
from app.runs.schemas import RetryIn, RowOut, RowStatus, RunListItemOut, RunOut, RunStatus

# 422: a parameter out of range, or a NUL anywhere in the query (app/core/params.py).
router = APIRouter(tags=["runs"], responses=error_responses(401, 403, 422))

RunSort = Literal["id", "created_at", "status", "completed_at"]


class MessageOut(BaseModel):
    message: str


class SummaryEntry(BaseModel):
    message: str
    count: int


class ErrorSummaryOut(BaseModel):
    total_failed_rows: int
    error_summary: list[SummaryEntry]
    validation_summary: list[SummaryEntry]


CSV_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The failed rows as CSV: the original columns, then `_error_message` "
        "and `_row_number`.",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    }
}


@router.get("/", response_model=Page[RunListItemOut])
async def list_runs(
    request: Request,
    session: SessionDep,
    params: Annotated[PageParams, Depends(page_params)],
    principal: Annotated[Principal, Depends(require(VIEW))],
    status: Annotated[RunStatus | None, Query(description="Only runs in this status.")] = None,
    importer: Annotated[str | None, Query(description="Only runs of this importer.")] = None,
    sort: Annotated[RunSort, Query(description="Sort field.")] = "id",
    order: Annotated[Literal["asc", "desc"], Query(description="Sort direction.")] = "desc",
) -> dict[str, Any]:
    """List runs, newest first; filter by status and importer."""
    stmt = service.list_query(
        source_id=principal.source_id, status=status, importer=importer, sort=sort, order=order
    )
    return await paginate(session, request, stmt, params, service.to_list_item)


@router.get("/{run:int}", response_model=One[RunOut], responses=error_responses(404))
async def show_run(
    run: RunId,
    session: SessionDep,
    settings: SettingsDep,
    principal: Annotated[Principal, Depends(require(VIEW))],
) -> dict[str, Any]:
    """Show a run with its progress, summary and first rows."""
    found = await service.get_run(session, run, source_id=principal.source_id)
    rows = await service.first_rows(session, found, settings.max_show_rows, storage_of(settings))
    return {"data": service.to_resource(found, rows)}


@router.get("/{run:int}/rows", response_model=Page[RowOut], responses=error_responses(404))
async def list_rows(
    run: RunId,
    request: Request,
    session: SessionDep,
    params: Annotated[PageParams, Depends(page_params)],
    principal: Annotated[Principal, Depends(require(VIEW))],
    settings: SettingsDep,
    status: Annotated[RowStatus | None, Query(description="Only rows in this status.")] = None,
) -> dict[str, Any]:
    """List a run's rows in row order; filter by status."""
    found = await service.get_run(session, run, source_id=principal.source_id)
    offset = (params.page - 1) * params.per_page
    rows, total = await service.rows_page(
        session, found, status, offset, params.per_page, storage_of(settings)
    )
    return build_page(request, rows, total, params)


class EventOut(BaseModel):
    id: int
    # Where a follower continues from (`after=`, SSE `id:`): opaque, compare nothing to it.
    cursor: str
    type: EventType
    at: str
    data: dict[str, Any]


@router.get("/{run:int}/events", response_model=Page[EventOut], responses=error_responses(404))
async def list_events(
    run: RunId,
    request: Request,
    session: SessionDep,
    params: Annotated[PageParams, Depends(page_params)],
    principal: Annotated[Principal, Depends(require(VIEW))],
    type: Annotated[
        list[EventType] | None, Query(description="Only events of these types (repeatable).")
    ] = None,
    after: Annotated[
        str | None,
        Query(
            pattern=events.CURSOR_PATTERN,
            description="Keyset paging: events above this event's `cursor` (the next link "
            "continues from the page's last one). A plain event id is still accepted.",
        ),
    ] = None,
) -> dict[str, Any]:
    """List a run's events (its append-only log) in commit order; filter by type."""
    found = await service.get_run(session, run, source_id=principal.source_id)
    position = events.parse_after(after) if after is not None else None
    conn = await raw_connection(session)
    return await events.list_page(
        conn,
        request,
        found.id,
        params,
        types=type,
        after=position,
        settled=found.status in FINISHED_STATUSES,
    )


STREAM_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events: the run's events (`event:` its type, `id:` its "
        "cursor, "
        "data as `GET /{run}/events` lists it), `progress` (status and counters) at the start "
        "and on every change, and once the run has finished `end` (the run resource), after "
        "which the stream closes. `Last-Event-ID` resumes after that event.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


@router.get(
    "/{run:int}/stream",
    response_class=EventSourceResponse,
    responses={**STREAM_RESPONSE, **error_responses(404)},
)
async def stream_run(
    run: RunId,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: Annotated[Principal, Depends(require(VIEW))],
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            pattern=events.CURSOR_PATTERN,
            description="Resume: only events above this cursor (what a reconnecting "
            "EventSource sends; a plain event id is still accepted).",
        ),
    ] = None,
) -> EventSourceResponse:
    """Follow a run live (Server-Sent Events): its events, progress, and its end."""
    found = await service.get_run(session, run, source_id=principal.source_id)
    after = events.parse_after(last_event_id) if last_event_id is not None else None
    # Resolved here: an unknown event id is a 400, not a stream that closes at once.
    position = await events.resolve(await raw_connection(session), found.id, after)
    stream = live.follow(
        request.app.state.session_factory,
        request.app.state.events_hub,
        found.id,
        after=position,
        recheck_s=settings.stream_recheck_seconds,
        max_rows=settings.max_show_rows,
        storage=storage_of(settings),
    )
    return EventSourceResponse(stream, ping=settings.stream_ping_seconds)


@router.post("/{run:int}/cancel", response_model=MessageOut, responses=error_responses(404, 409))
async def cancel_run(
    run: RunId, session: SessionDep, principal: Annotated[Principal, Depends(require(CREATE))]
) -> dict[str, Any]:
    """Cancel an unfinished run: no new chunk starts (409 when it already finished)."""
    found = await service.get_run(session, run, source_id=principal.source_id)
    await service.cancel_run(session, found)
    return {"message": "Cancellation request sent."}


@router.post(
    "/{run:int}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=One[RunOut],
    responses=error_responses(400, 404, 409, 422, 429),
)
async def retry_run(
    run: RunId,
    request: Request,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(CREATE))],
    idempotency: IdempotencyDep,
    body: Annotated[RetryIn | None, Body()] = None,
) -> Any:
    """Start a new run with exactly the failed rows of this run (400 when it has none)."""
    parent = await service.get_run(session, run, source_id=principal.source_id)
    await check_queue_room(request)
    dry_run = bool(body and body.dry_run)
    request_hash = fingerprint("retry", str(parent.id), str(dry_run))
    replayed = await idempotency.replay(session, principal.token_id, request_hash)
    if replayed is not None:
        return replayed
    created = await service.create_retry(
        session,
        parent.id,
        source_id=principal.source_id,
        user_id=principal.user_id,
        token_id=principal.token_id,
        dry_run=dry_run,
    )
    result = {"data": service.to_resource(created)}
    await idempotency.save(session, principal.token_id, request_hash, 202, result)
    split_after_commit(request, created.id)
    return result


@router.get(
    "/{run:int}/errors/summary",
    response_model=One[ErrorSummaryOut],
    responses=error_responses(404),
)
async def error_summary(
    run: RunId, session: SessionDep, principal: Annotated[Principal, Depends(require(VIEW))]
) -> dict[str, Any]:
    """Failed rows grouped by error and by field message, most frequent first."""
    found = await service.get_run(session, run, source_id=principal.source_id)
    return {"data": await service.error_summary(session, found.id)}


@router.get(
    "/{run:int}/failed-rows/download",
    response_class=StreamingResponse,
    responses={**CSV_RESPONSE, **error_responses(404)},
)
async def download_failed_rows(
    run: RunId,
    request: Request,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(VIEW))],
) -> StreamingResponse:
    """Download the failed rows as CSV, to fix and upload again (404 when there are none)."""
    found = await service.get_run(session, run, source_id=principal.source_id)
    export = await service.failed_rows_export(session, found)
    return StreamingResponse(
        service.failed_rows_csv(request.app.state.session_factory, export),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{export.filename}"'},
    )
