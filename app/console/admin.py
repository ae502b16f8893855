"""The console's admin pages: importers, sources (create, pause/resume/sync, issue a token
shown once) and tokens (revoke). Same services, bodies and abilities as the API's routes."""

from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import service as auth_service
from app.auth.models import Token
from app.auth.permissions import ADMIN
from app.console.router import Viewer, viewer_with
from app.console.templating import PREFIX, render
from app.core.deps import SessionDep, check_queue_room, split_after_commit
from app.core.errors import IngestError, ValidationFailed, validation_errors
from app.core.params import SourceId, TokenId
from app.importers import service as importers_service
from app.importers.models import Importer
from app.runs.models import Run
from app.sources import service as sources_service
from app.sources.models import Source
from app.sources.schemas import SourceCreate, SourceTokenCreate

router = APIRouter(prefix=f"{PREFIX}/admin", include_in_schema=False)

AdminDep = Annotated[Viewer, viewer_with(ADMIN)]
SHOWN = 200
NOTICES = {
    "created": "Source created.",
    "paused": "Source paused: its pushes get 409 and no scheduled run starts.",
    "resumed": "Source resumed.",
    "revoked": "Token revoked: it and its console sessions no longer work.",
}


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str) and k != "csrf_token"}


def _body(model: Any, fields: dict[str, Any]) -> Any:
    """A form as the API's request body, with the API's 422 when it does not validate."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        errors = validation_errors(exc.errors())
        raise ValidationFailed(next(iter(errors.values()))[0], errors=errors) from exc


@router.get("/importers")
async def importers_page(request: Request, session: SessionDep, viewer: AdminDep) -> Response:
    stmt: Select[Any] = importers_service.list_query(viewer.principal.source_id)
    found: list[Importer] = list((await session.scalars(stmt)).all())
    rows = [(i, importers_service.definition_of(i)) for i in found]
    return render(request, "admin_importers.html", {"viewer": viewer, "importers": rows})


async def _sources_page(
    request: Request,
    session: AsyncSession,
    viewer: Viewer,
    *,
    error: IngestError | None = None,
    issued: dict[str, Any] | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    await sources_service.settle_syncs(session)
    stmt: Select[Any] = sources_service.list_query(
        scope_source_id=viewer.principal.source_id, sort="id", order="asc"
    )
    sources: list[Source] = list((await session.scalars(stmt.limit(SHOWN))).all())
    context = {
        "viewer": viewer,
        "sources": sources,
        "error": error.message if error else None,
        "issued": issued,
        "form": form or {},
        "notice": NOTICES.get(request.query_params.get("done", "")),
    }
    status = error.status_code if error else (201 if issued else 200)
    return render(request, "admin_sources.html", context, status)


@router.get("/sources")
async def sources_page(request: Request, session: SessionDep, viewer: AdminDep) -> Response:
    return await _sources_page(request, session, viewer)


@router.post("/sources")
async def create_source(request: Request, session: SessionDep, viewer: AdminDep) -> Response:
    form = await _form(request)
    fields = {k: v for k, v in form.items() if v != ""}
    try:
        body = _body(SourceCreate, fields)
        async with session.begin_nested():
            await sources_service.create(
                session,
                body.model_dump(exclude_unset=True),
                is_admin=True,
                scope_source_id=viewer.principal.source_id,
            )
    except IngestError as exc:
        return await _sources_page(request, session, viewer, error=exc, form=form)
    return RedirectResponse(f"{PREFIX}/admin/sources?done=created", status_code=303)


@router.post("/sources/{source_id:int}/{action}")
async def source_action(
    source_id: SourceId, action: str, request: Request, session: SessionDep, viewer: AdminDep
) -> Response:
    principal = viewer.principal
    source = await sources_service.get(
        session, source_id, scope_source_id=principal.source_id, for_update=True
    )
    issued = None
    runs: list[Run] = []
    try:
        async with session.begin_nested():
            if action in ("pause", "resume"):
                await sources_service.set_paused(session, source, action == "pause")
            elif action == "sync":
                await check_queue_room(request)
                runs = await sources_service.start_sync(
                    session, source, user_id=principal.user_id, token_id=principal.token_id
                )
            elif action == "tokens":
                issued = await sources_service.issue_agent_token(
                    session, source, SourceTokenCreate()
                )
            else:
                raise ValidationFailed(f"No action {action!r} on sources.")
    except IngestError as exc:
        return await _sources_page(request, session, viewer, error=exc)
    if issued is not None:
        # Shown on this answer only: the token is stored as a hash.
        return await _sources_page(request, session, viewer, issued=issued)
    if action == "sync":
        split_after_commit(request, *(run.id for run in runs))
        return RedirectResponse(f"{PREFIX}/runs", status_code=303)
    done = "paused" if action == "pause" else "resumed"
    return RedirectResponse(f"{PREFIX}/admin/sources?done={done}", status_code=303)


@router.get("/tokens")
async def tokens_page(request: Request, session: SessionDep, viewer: AdminDep) -> Response:
    stmt: Select[Any] = auth_service.list_query(viewer.principal.source_id)
    tokens: list[Token] = list((await session.scalars(stmt.limit(SHOWN))).unique().all())
    context = {
        "viewer": viewer,
        "tokens": [auth_service.to_resource(t) for t in tokens],
        "notice": NOTICES.get(request.query_params.get("done", "")),
    }
    return render(request, "admin_tokens.html", context)


@router.post("/tokens/{token_id:int}/revoke")
async def revoke_token(token_id: TokenId, session: SessionDep, viewer: AdminDep) -> Response:
    await auth_service.revoke_token(session, token_id, scope_source_id=viewer.principal.source_id)
    return RedirectResponse(f"{PREFIX}/admin/tokens?done=revoked", status_code=303)
