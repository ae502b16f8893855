"""The web console's pages (SPEC §5 `/console`): sign-in, review queue and items, runs, upload.

Every page and form goes through the API's own dependencies (``require(ability)``, which
accepts the session cookie and checks the CSRF token of form posts) and calls the same
services as the API: what a user sees and may press follows their abilities and source scope
as the API does. Rules live in the services; this module only renders their answers.
"""

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import sessions
from app.auth.dependencies import Principal, authenticate, require
from app.auth.models import Token, User
from app.auth.permissions import ADMIN, CREATE, REVIEW, VIEW
from app.console.templating import PREFIX, render
from app.core.db import raw_connection, unit_of_work
from app.core.deps import SessionDep, SettingsDep, check_queue_room, split_after_commit
from app.core.errors import Forbidden, IngestError, NotFound, Unauthenticated
from app.core.params import ItemId, RunId
from app.core.storage import storage_of
from app.importers import service as importers_service
from app.importers.models import Importer
from app.items import service as items_service
from app.items.models import Item
from app.items.schemas import ITEM_STATUSES
from app.runs import events as run_events
from app.runs import service as runs_service
from app.runs.models import FINISHED_STATUSES
from app.sources import service as sources_service

router = APIRouter(prefix=PREFIX, include_in_schema=False)

PER_PAGE = 25
FAILED_ROWS_SHOWN = 50
EVENTS_SHOWN = 200
# The queue's tabs: what waits for a curator first.
QUEUE_ORDER = ("pending", "processing", "approved", "changes_requested", "submitted")
QUEUE_STATUSES = (*QUEUE_ORDER, *(s for s in ITEM_STATUSES if s not in QUEUE_ORDER))
BULK_ACTIONS = ("approve", "reject")
NOTICES = {
    "approve": "Item approved.",
    "reject": "Item rejected.",
    "request-changes": "Changes requested.",
    "retarget": "Item retargeted.",
    "promote": "Item promoted: its record is written.",
    "cancel": "Cancellation request sent.",
}


@dataclass(frozen=True)
class Viewer:
    """Who is looking: the principal (abilities, source scope) and their account's email."""

    principal: Principal
    email: str

    @property
    def csrf(self) -> str:
        return self.principal.csrf_secret or ""

    def can(self, ability: str) -> bool:
        return self.principal.can(ability)

    @property
    def is_admin(self) -> bool:
        return self.principal.can(ADMIN)


def viewer_with(ability: str) -> Any:
    """Dependency: the signed-in viewer holding ``ability`` (401 → sign-in page, 403 → page)."""

    async def dependency(
        session: SessionDep, principal: Annotated[Principal, Depends(require(ability))]
    ) -> Viewer:
        email = await session.scalar(select(User.email).where(User.id == principal.user_id))
        return Viewer(principal, email or "")

    return Depends(dependency)


ViewerDep = Annotated[Viewer, viewer_with(VIEW)]
ReviewerDep = Annotated[Viewer, viewer_with(REVIEW)]
CreatorDep = Annotated[Viewer, viewer_with(CREATE)]


def local_target(target: str | None, default: str) -> str:
    """A redirect target from a form, only if it is a console path (no open redirect)."""
    if not target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith(f"{PREFIX}/"):
        return default
    return target


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {key: value for key, value in form.items() if isinstance(value, str)}


async def _page(
    session: AsyncSession, stmt: Select[Any], page: int
) -> tuple[list[Any], dict[str, int]]:
    total = await session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
    last = max(1, math.ceil((total or 0) / PER_PAGE))
    page = min(max(page, 1), last)
    rows = list((await session.scalars(stmt.limit(PER_PAGE).offset((page - 1) * PER_PAGE))).all())
    return rows, {"page": page, "last": last, "total": total or 0}


def _query(request: Request, **changes: Any) -> str:
    """The current page's URL with some query parameters changed (None removes one)."""
    params = dict(request.query_params)
    for key, value in changes.items():
        if value is None:
            params.pop(key, None)
        else:
            params[key] = str(value)
    return f"{request.url.path}?{urlencode(params)}" if params else request.url.path


# --- sign-in -----------------------------------------------------------------------------


@router.get("")
async def home(viewer: ViewerDep) -> Response:
    """Reviewers land on the review queue, everyone else on the runs."""
    page = "items" if viewer.can(REVIEW) else "runs"
    return RedirectResponse(f"{PREFIX}/{page}", status_code=303)


@router.get("/sign-in")
async def sign_in_form(request: Request) -> Response:
    return render(request, "sign_in.html", {"viewer": None, "error": None})


def _same_origin(request: Request) -> bool:
    """A sign-in posted from another site's page is refused (login CSRF): browsers send
    ``Origin`` with every form post."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    parts = urlsplit(origin)
    return parts.netloc == request.url.netloc and parts.scheme == request.url.scheme


@router.post("/sign-in")
async def sign_in(request: Request, settings: SettingsDep) -> Response:
    if not _same_origin(request):
        raise Forbidden("Sign in from the console's own page.")
    raw_token = (await _form(request)).get("token", "").strip()
    factory = request.app.state.session_factory
    try:
        async with unit_of_work(factory) as session:
            principal = await authenticate(session, raw_token)
            token = await session.get(Token, principal.token_id)
            assert token is not None
            await sessions.end(session, request.cookies.get(sessions.COOKIE))
            raw, _ = await sessions.start(
                session,
                principal.token_id,
                token.expires_at,
                timedelta(hours=settings.console_session_hours),
            )
    except Unauthenticated:
        error = (
            "That token was not accepted: it is mistyped, expired or revoked. Paste the whole "
            "token (it starts with ingest_), or ask an admin for a new one."
        )
        return render(request, "sign_in.html", {"viewer": None, "error": error}, 401)
    response = RedirectResponse(PREFIX, status_code=303)
    response.set_cookie(
        sessions.COOKIE,
        raw,
        max_age=int(settings.console_session_hours * 3600),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/sign-out")
async def sign_out(request: Request, session: SessionDep, viewer: ViewerDep) -> Response:
    await sessions.end(session, request.cookies.get(sessions.COOKIE))
    response = RedirectResponse(f"{PREFIX}/sign-in", status_code=303)
    response.delete_cookie(sessions.COOKIE, path="/")
    return response


# --- review queue --------------------------------------------------------------------------


@router.get("/items")
async def queue(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    status: str | None = None,
    type: str | None = None,
    source: Annotated[str | None, Query()] = None,
    duplicates: str | None = None,
    q: str | None = None,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
) -> Response:
    counts = await items_service.status_counts(session, viewer.principal.source_id)
    status = status if status in (*QUEUE_STATUSES, "all") else "pending"
    source_id = int(source) if source and source.isdigit() and len(source) < 10 else None
    has_duplicates = {"yes": True, "no": False}.get(duplicates or "")
    stmt = items_service.list_query(
        scope_source_id=viewer.principal.source_id,
        status=None if status == "all" else status,
        type_=type or None,
        source_id=source_id,
        has_duplicates=has_duplicates,
        search=(q or "").strip() or None,
        order="asc" if status == "pending" else "desc",
    )
    items, paging = await _page(session, stmt, page)
    context = {
        "viewer": viewer,
        "items": [items_service.to_resource(item) for item in items],
        "paging": paging,
        "counts": counts,
        "statuses": QUEUE_STATUSES,
        "total_all": sum(counts.values()),
        "filters": {
            "status": status,
            "type": type or "",
            "source": source_id,
            "duplicates": duplicates or "",
            "q": q or "",
        },
        "types": await _types(session, viewer),
        "sources": await _sources(session, viewer),
        "page_url": lambda n: _query(request, page=n),
        "here": _query(request),
        "bulk": None,
    }
    return render(request, "queue.html", context)


async def _types(session: AsyncSession, viewer: Viewer) -> list[str]:
    found = await session.scalars(
        items_service.visible(
            select(Item.type).distinct().order_by(Item.type), viewer.principal.source_id
        )
    )
    return list(found)


async def _importers(session: AsyncSession, viewer: Viewer) -> list[Importer]:
    stmt: Select[Any] = importers_service.list_query(viewer.principal.source_id)
    return list((await session.scalars(stmt)).all())


async def _sources(session: AsyncSession, viewer: Viewer) -> list[Any]:
    stmt = sources_service.list_query(
        scope_source_id=viewer.principal.source_id, sort="id", order="asc"
    )
    return list((await session.scalars(stmt.limit(500))).all())


@router.post("/items/bulk")
async def bulk(request: Request, session: SessionDep, viewer: ReviewerDep) -> Response:
    form = await request.form()
    action = str(form.get("action") or "")
    if action not in BULK_ACTIONS:
        raise NotFound("Choose approve or reject.")
    ids = [int(v) for v in form.getlist("ids") if isinstance(v, str) and v.isdigit()][:100]
    reason = str(form.get("reason") or "") or None
    results = []
    for item_id in ids:
        try:
            async with session.begin_nested():
                await items_service.transition(
                    session, item_id, action, viewer.principal, note=reason
                )
            results.append({"id": item_id, "ok": True, "message": NOTICES[action]})
        except IngestError as exc:
            results.append({"id": item_id, "ok": False, "message": exc.message})
    back = local_target(str(form.get("next") or ""), f"{PREFIX}/items")
    context = {"viewer": viewer, "results": results, "action": action, "back": back}
    return render(request, "bulk.html", context)


# --- item page -----------------------------------------------------------------------------


def allowed_actions(status: str, principal: Principal) -> list[str]:
    """The actions SPEC §6 allows from ``status`` (the service's own table), for a reviewer."""
    if not principal.can(REVIEW):
        return []
    found = [a for a, (froms, _) in items_service.TRANSITIONS.items() if status in froms]
    if status != "merged":
        found.append("retarget")
    return found


def _differences(data: dict[str, Any], other: dict[str, Any]) -> list[dict[str, Any]]:
    """Field by field, the differing first; fields empty on both sides are left out."""
    fields = list(data) + [field for field in other if field not in data]
    fields = [f for f in fields if data.get(f) is not None or other.get(f) is not None]
    fields.sort(key=lambda f: data.get(f) == other.get(f))
    return [
        {
            "field": field,
            "mine": data.get(field),
            "theirs": other.get(field),
            "differs": data.get(field) != other.get(field),
        }
        for field in fields
    ]


async def _item_page(
    request: Request,
    session: AsyncSession,
    viewer: Viewer,
    item_id: int,
    *,
    error: IngestError | None = None,
    failed_action: str | None = None,
) -> Response:
    item = await items_service.get(session, item_id, scope_source_id=viewer.principal.source_id)
    resource = items_service.to_resource(item, await items_service.history(session, item.id))
    matches = await items_service.matches(session, item, viewer.principal.source_id)
    for match in matches:
        matched = match["matched"]
        match["rows"] = _differences(item.data, matched["data"]) if matched else []
    importers = await _importers(session, viewer)
    notice = NOTICES.get(request.query_params.get("done", ""))
    context = {
        "viewer": viewer,
        "item": resource,
        "matches": matches,
        "actions": allowed_actions(item.status, viewer.principal),
        "types": [i.slug for i in importers if i.slug != item.type],
        "error": error.message if error else None,
        "error_errors": error.errors if error else None,
        "failed_action": failed_action,
        "notice": None if error else notice,
        "back": local_target(request.query_params.get("back"), f"{PREFIX}/items"),
    }
    return render(request, "item.html", context, error.status_code if error else 200)


@router.get("/items/{item_id:int}")
async def item_page(
    item_id: ItemId, request: Request, session: SessionDep, viewer: ViewerDep
) -> Response:
    return await _item_page(request, session, viewer, item_id)


@router.post("/items/{item_id:int}/{action}")
async def item_action(
    item_id: ItemId,
    action: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    viewer: ReviewerDep,
) -> Response:
    if action not in (*items_service.TRANSITIONS, "retarget"):
        raise NotFound(f"No action {action!r} on items.")
    form = await _form(request)
    note = form.get("reason") or form.get("note")
    try:
        # A savepoint: an action that fails half-way (a promote refused after its claim)
        # leaves nothing behind, and the page shows why.
        async with session.begin_nested():
            if action == "retarget":
                await items_service.retarget(
                    session,
                    item_id,
                    viewer.principal,
                    new_type=form.get("type"),
                    note=note,
                    threshold=settings.near_duplicate_threshold,
                )
            else:
                await items_service.transition(
                    session, item_id, action, viewer.principal, note=note
                )
    except (NotFound, Forbidden):
        raise
    except IngestError as exc:
        return await _item_page(request, session, viewer, item_id, error=exc, failed_action=action)
    target = f"{PREFIX}/items/{item_id}?done={action}"
    return RedirectResponse(local_target(form.get("next"), target), status_code=303)


# --- runs ----------------------------------------------------------------------------------


@router.get("/runs")
async def runs_page(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    status: str | None = None,
    importer: str | None = None,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
) -> Response:
    status = status if status in runs_service.RUN_STATUSES else None
    stmt = runs_service.list_query(
        source_id=viewer.principal.source_id, status=status, importer=importer or None
    )
    runs, paging = await _page(session, stmt, page)
    importers = await _importers(session, viewer)
    context = {
        "viewer": viewer,
        "runs": [runs_service.to_list_item(run) for run in runs],
        "paging": paging,
        "statuses": runs_service.RUN_STATUSES,
        "importers": [i.slug for i in importers],
        "filters": {"status": status or "", "importer": importer or ""},
        "page_url": lambda n: _query(request, page=n),
    }
    return render(request, "runs.html", context)


async def _run_page(
    request: Request,
    session: AsyncSession,
    viewer: Viewer,
    run_id: int,
    *,
    error: IngestError | None = None,
) -> Response:
    settings = request.app.state.settings
    run = await runs_service.get_run(session, run_id, source_id=viewer.principal.source_id)
    finished = run.status in FINISHED_STATUSES
    failed_rows: list[dict[str, Any]] = []
    summary = None
    if run.failed:
        summary = await runs_service.error_summary(session, run.id)
        failed_rows, _ = await runs_service.rows_page(
            session, run, "failed", 0, FAILED_ROWS_SHOWN, storage_of(settings)
        )
    conn = await raw_connection(session)
    rows, _ = await run_events.read(conn, run.id, None, EVENTS_SHOWN, settled=finished)
    context = {
        "viewer": viewer,
        "run": runs_service.to_list_item(run),
        "finished": finished,
        "error_summary": summary,
        "failed_rows": failed_rows,
        "failed_columns": _columns(failed_rows),
        "events": [run_events.to_resource(row) for row in rows],
        "can_create": viewer.can(CREATE),
        "error": error.message if error else None,
        "notice": None if error else NOTICES.get(request.query_params.get("done", "")),
        "api": request.app.state.settings.api_prefix,
    }
    return render(request, "run.html", context, error.status_code if error else 200)


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        for name in row.get("data") or {}:
            if name not in columns:
                columns.append(name)
    return columns[:12]


@router.get("/runs/{run:int}")
async def run_page(
    run: RunId, request: Request, session: SessionDep, viewer: ViewerDep
) -> Response:
    return await _run_page(request, session, viewer, run)


@router.post("/runs/{run:int}/cancel")
async def cancel(run: RunId, request: Request, session: SessionDep, viewer: CreatorDep) -> Response:
    found = await runs_service.get_run(session, run, source_id=viewer.principal.source_id)
    try:
        async with session.begin_nested():
            await runs_service.cancel_run(session, found)
    except IngestError as exc:
        return await _run_page(request, session, viewer, run, error=exc)
    return RedirectResponse(f"{PREFIX}/runs/{run}?done=cancel", status_code=303)


@router.post("/runs/{run:int}/retry")
async def retry(run: RunId, request: Request, session: SessionDep, viewer: CreatorDep) -> Response:
    principal = viewer.principal
    parent = await runs_service.get_run(session, run, source_id=principal.source_id)
    dry_run = (await _form(request)).get("dry_run", "") in ("1", "true", "on")
    try:
        await check_queue_room(request)
        async with session.begin_nested():
            created = await runs_service.create_retry(
                session,
                parent.id,
                source_id=principal.source_id,
                user_id=principal.user_id,
                token_id=principal.token_id,
                dry_run=dry_run,
            )
    except IngestError as exc:
        return await _run_page(request, session, viewer, run, error=exc)
    split_after_commit(request, created.id)
    return RedirectResponse(f"{PREFIX}/runs/{created.id}", status_code=303)


# --- upload --------------------------------------------------------------------------------


@router.get("/upload")
async def upload_page(request: Request, session: SessionDep, viewer: CreatorDep) -> Response:
    importers = [
        importer
        for importer in await _importers(session, viewer)
        if importers_service.definition_of(importer).source.type == "upload"
    ]
    context = {
        "viewer": viewer,
        "importers": importers,
        "chosen": request.query_params.get("importer", ""),
        "api": request.app.state.settings.api_prefix,
    }
    return render(request, "upload.html", context)
