"""The console's admin pages: importers, sources (create, pause/resume/sync, issue a token
shown once) and tokens (revoke). Same services, bodies and abilities as the API's routes.

The lists are admin pages; the detail pages of an importer and a source need only
``ingest:view``, as the API's ``GET /importers/{slug}`` and ``GET /sources/{id}`` do, and show
the admin's actions (and a source's tokens, which only an admin may list) to admins only."""

from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import service as auth_service
from app.auth.models import Token
from app.auth.permissions import ADMIN, CREATE
from app.console.router import Viewer, ViewerDep, local_target, viewer_with
from app.console.templating import PREFIX, render
from app.core.deps import SessionDep, check_queue_room, split_after_commit
from app.core.errors import IngestError, ValidationFailed, validation_errors
from app.core.params import SourceId, TokenId
from app.importers import service as importers_service
from app.importers.models import Importer
from app.items import service as items_service
from app.runs import service as runs_service
from app.runs.models import Run
from app.sources import service as sources_service
from app.sources.models import Source
from app.sources.schemas import SourceCreate, SourceTokenCreate

router = APIRouter(prefix=f"{PREFIX}/admin", include_in_schema=False)

AdminDep = Annotated[Viewer, viewer_with(ADMIN)]
SHOWN = 200
RECENT_RUNS = 10
NOTICES = {
    "created": "Source created.",
    "paused": "Source paused: its pushes get 409 and no scheduled run starts.",
    "resumed": "Source resumed.",
    "synced": "Sync started: its runs are listed below.",
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


def _source_url(source_id: int) -> str:
    return f"{PREFIX}/admin/sources/{source_id}"


async def _recent_runs(session: AsyncSession, stmt: Select[Any]) -> list[dict[str, Any]]:
    runs: list[Run] = list((await session.scalars(stmt.limit(RECENT_RUNS))).all())
    return [runs_service.to_list_item(run) for run in runs]


def _plain(value: Any) -> str:
    """A rule's value as written: ``0``, not the ``0.0`` the definition stores; ``false``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _rules(spec: dict[str, Any]) -> list[str]:
    """A field's checks and clean-ups as short phrases, from the definition the API shows."""
    found = [
        f"{label} {_plain(spec[key])}"
        for key, label in (
            ("min", "min"),
            ("max", "max"),
            ("min_length", "min length"),
            ("max_length", "max length"),
            ("pattern", "pattern"),
            ("format", "format"),
        )
        if key in spec
    ]
    if "in" in spec:
        found.append("one of " + ", ".join(map(str, spec["in"])))
    if "default" in spec:
        found.append(f"default {_plain(spec['default'])}")
    if spec.get("null_if"):
        found.append("empty if " + ", ".join(spec["null_if"]))
    if spec.get("transform"):
        found.append(" → ".join(spec["transform"]))
    if spec.get("type") == "list":
        found.append(f"separator {spec['separator']!r}")
    return found


@router.get("/importers")
async def importers_page(request: Request, session: SessionDep, viewer: AdminDep) -> Response:
    stmt: Select[Any] = importers_service.list_query(viewer.principal.source_id)
    found: list[Importer] = list((await session.scalars(stmt)).all())
    rows = [(i, importers_service.definition_of(i)) for i in found]
    return render(request, "admin_importers.html", {"viewer": viewer, "importers": rows})


@router.get("/importers/{slug}")
async def importer_page(
    slug: str, request: Request, session: SessionDep, viewer: ViewerDep
) -> Response:
    scope = viewer.principal.source_id
    importer = await importers_service.get_by_slug(session, slug, source_id=scope)
    # As the API shows it: source headers left out, a source URL's credentials masked.
    resource = importers_service.to_resource(importer)
    definition = resource["definition"]
    fields = [(name, spec, _rules(spec)) for name, spec in definition["fields"].items()]
    runs = await _recent_runs(
        session, runs_service.list_query(source_id=scope, importer=importer.slug)
    )
    context = {
        "viewer": viewer,
        "importer": resource,
        "d": definition,
        "fields": fields,
        "threshold": _plain(definition["failure_threshold"]),
        "runs": runs,
        "can_upload": definition["source"]["type"] == "upload" and viewer.can(CREATE),
        "api": request.app.state.settings.api_prefix,
    }
    return render(request, "admin_importer.html", context)


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


async def _source_page(
    request: Request,
    session: AsyncSession,
    viewer: Viewer,
    source_id: int,
    *,
    error: IngestError | None = None,
    issued: dict[str, Any] | None = None,
) -> Response:
    await sources_service.settle_syncs(session)
    source = await sources_service.get(
        session, source_id, scope_source_id=viewer.principal.source_id
    )
    stmt: Select[Any] = importers_service.list_query(source.id)
    importers: list[Importer] = list((await session.scalars(stmt)).all())
    tokens: list[Token] = []
    if viewer.is_admin:  # listing tokens is an admin's (GET /tokens)
        stmt = auth_service.list_query(source.id)
        tokens = list((await session.scalars(stmt.limit(SHOWN))).unique().all())
    context = {
        "viewer": viewer,
        "source": sources_service.to_resource(source),
        "importers": [(i, importers_service.definition_of(i)) for i in importers],
        "runs": await _recent_runs(session, runs_service.list_query(source_id=source.id)),
        "item_counts": await items_service.status_counts(session, source.id),
        "tokens": [auth_service.to_resource(t) for t in tokens],
        "here": _source_url(source.id),
        "error": error.message if error else None,
        "issued": issued,
        "notice": None if error else NOTICES.get(request.query_params.get("done", "")),
    }
    status = error.status_code if error else (201 if issued else 200)
    return render(request, "admin_source.html", context, status)


@router.get("/sources/{source_id:int}")
async def source_page(
    source_id: SourceId, request: Request, session: SessionDep, viewer: ViewerDep
) -> Response:
    return await _source_page(request, session, viewer, source_id)


def _back(form: dict[str, str], default: str) -> str:
    """The console page a form came from (its ``next`` field), without a query."""
    return urlsplit(local_target(form.get("next"), default)).path


@router.post("/sources/{source_id:int}/{action}")
async def source_action(
    source_id: SourceId, action: str, request: Request, session: SessionDep, viewer: AdminDep
) -> Response:
    principal = viewer.principal
    back = _back(await _form(request), f"{PREFIX}/admin/sources")
    on_page = back == _source_url(source_id)
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
        if on_page:
            return await _source_page(request, session, viewer, source_id, error=exc)
        return await _sources_page(request, session, viewer, error=exc)
    if issued is not None:
        # Shown on this answer only: the token is stored as a hash.
        if on_page:
            return await _source_page(request, session, viewer, source_id, issued=issued)
        return await _sources_page(request, session, viewer, issued=issued)
    if action == "sync":
        split_after_commit(request, *(run.id for run in runs))
        target = f"{back}?done=synced" if on_page else f"{PREFIX}/runs"
        return RedirectResponse(target, status_code=303)
    done = "paused" if action == "pause" else "resumed"
    return RedirectResponse(f"{back}?done={done}", status_code=303)


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
async def revoke_token(
    token_id: TokenId, request: Request, session: SessionDep, viewer: AdminDep
) -> Response:
    await auth_service.revoke_token(session, token_id, scope_source_id=viewer.principal.source_id)
    back = _back(await _form(request), f"{PREFIX}/admin/tokens")
    return RedirectResponse(f"{back}?done=revoked", status_code=303)
