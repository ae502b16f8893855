"""Sources: CRUD, pause/resume, sync (a run per URL importer) and the agent tokens of a source.

A source's sync state is settled lazily: a sync marks the source ``syncing``; the next read
after its runs have all finished records how they ended (``active`` or ``error``), in one
conditional UPDATE. The pipeline needs no knowledge of sources for that.
"""

from datetime import timedelta
from typing import Any

from sqlalchemy import Select, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import service as auth_service
from app.auth.models import User
from app.core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from app.core.timefmt import iso
from app.importers.models import Importer
from app.runs import service as runs_service
from app.runs.models import Run
from app.sources.models import Source
from app.sources.schemas import SourceTokenCreate

SORTABLE = {
    "id": Source.id,
    "name": Source.name,
    "source_priority": Source.source_priority,
    "created_at": Source.created_at,
    "updated_at": Source.updated_at,
}

_UNIQUE_MESSAGES = {
    "uq_sources_source_url": ("source_url", "The source url has already been taken."),
    "uq_sources_provider_external_source_id": (
        "external_source_id",
        "The external source id has already been taken for this provider.",
    ),
}


# What PUT may set to null; every other field keeps a value.
_NULLABLE = frozenset({"provider", "external_source_id"})


def _invalid(errors: dict[str, list[str]]) -> ValidationFailed:
    first = next(iter(errors.values()))[0]
    return ValidationFailed(first, errors=errors)


def visible(stmt: Select[Any], scope_source_id: int | None) -> Select[Any]:
    """A source-bound token sees its own source only."""
    return stmt if scope_source_id is None else stmt.where(Source.id == scope_source_id)


def list_query(
    *,
    scope_source_id: int | None = None,
    status: str | None = None,
    provider: str | None = None,
    ingestion_type: str | None = None,
    onboarded: bool | None = None,
    approval_mode: str | None = None,
    sort: str = "id",
    order: str = "desc",
) -> Select[tuple[Source]]:
    stmt = visible(select(Source), scope_source_id)
    for column, value in (
        (Source.status, status),
        (Source.provider, provider),
        (Source.ingestion_type, ingestion_type),
        (Source.onboarded, onboarded),
        (Source.approval_mode, approval_mode),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    by = SORTABLE[sort]
    ordered = by.asc() if order == "asc" else by.desc()
    # The id breaks ties so pages never overlap.
    tiebreak = Source.id.asc() if order == "asc" else Source.id.desc()
    return stmt.order_by(ordered, tiebreak)


async def get(
    session: AsyncSession,
    source_id: int,
    *,
    scope_source_id: int | None = None,
    for_update: bool = False,
) -> Source:
    stmt = visible(select(Source).where(Source.id == source_id), scope_source_id)
    if for_update:
        stmt = stmt.with_for_update()
    source: Source | None = await session.scalar(stmt)
    if source is None:
        raise NotFound(f"Source {source_id} not found.")
    return source


async def _check_rules(session: AsyncSession, values: dict[str, Any], own_id: int | None) -> None:
    """required_with and the two unique rules, reported together as field messages."""
    errors: dict[str, list[str]] = {}
    if values.get("external_source_id") and not values.get("provider"):
        errors["provider"] = ["The provider field is required when external source id is present."]
    taken = select(Source.id).where(Source.id != own_id) if own_id else select(Source.id)
    if await session.scalar(taken.where(Source.source_url == values["source_url"])):
        errors.setdefault("source_url", []).append(_UNIQUE_MESSAGES["uq_sources_source_url"][1])
    if values.get("external_source_id") and values.get("provider"):
        clash = await session.scalar(
            taken.where(
                Source.provider == values["provider"],
                Source.external_source_id == values["external_source_id"],
            )
        )
        if clash:
            field, message = _UNIQUE_MESSAGES["uq_sources_provider_external_source_id"]
            errors.setdefault(field, []).append(message)
    if errors:
        raise _invalid(errors)


async def _flush(session: AsyncSession) -> None:
    """Flush; a unique index that a concurrent request won is still a 422, not a 500."""
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError as exc:
        for constraint, (field, message) in _UNIQUE_MESSAGES.items():
            if constraint in str(exc.orig):
                raise _invalid({field: [message]}) from exc
        raise


async def create(
    session: AsyncSession,
    fields: dict[str, Any],
    *,
    is_admin: bool,
    scope_source_id: int | None,
) -> Source:
    if scope_source_id is not None:
        raise Forbidden("A source-bound token cannot create sources.")
    approval_mode = fields.get("approval_mode") or "auto"
    if approval_mode != "auto" and not is_admin:
        raise Forbidden("Only an admin may set a source's approval mode.")
    values: dict[str, Any] = {
        "ingestion_type": "api",
        "source_priority": 0,
        "onboarded": False,
        **{k: v for k, v in fields.items() if v is not None},
        "approval_mode": approval_mode,
        "status": "active",
    }
    await _check_rules(session, values, None)
    source = Source(**values)
    session.add(source)
    await _flush(session)
    await session.refresh(source)
    return source


async def update(
    session: AsyncSession, source: Source, fields: dict[str, Any], *, is_admin: bool
) -> Source:
    """Apply the fields given; ``null`` clears ``provider`` or ``external_source_id``."""
    if (
        "approval_mode" in fields
        and fields["approval_mode"] not in (None, source.approval_mode)
        and not is_admin
    ):
        raise Forbidden("Only an admin may change a source's approval mode.")
    nulls = [k for k, v in fields.items() if v is None and k not in _NULLABLE]
    if nulls:
        raise _invalid({k: [f"The {k.replace('_', ' ')} field is required."] for k in nulls})
    changes = dict(fields)
    current = {
        "source_url": source.source_url,
        "provider": source.provider,
        "external_source_id": source.external_source_id,
    }
    await _check_rules(session, {**current, **changes}, source.id)
    for name, value in changes.items():
        setattr(source, name, value)
    source.updated_at = func.now()
    await _flush(session)
    await session.refresh(source)
    return source


async def delete(session: AsyncSession, source: Source) -> None:
    """Delete a source. Its tokens are revoked first: the foreign key only nulls their
    ``source_id``, which would otherwise turn a source-bound token into an unbound one."""
    await auth_service.revoke_source_tokens(session, source.id)
    await session.delete(source)
    await session.flush()


async def set_paused(session: AsyncSession, source: Source, paused: bool) -> Source:
    """Pause or resume; idempotent. A paused source starts no scheduled run and takes no push."""
    if paused and source.status != "paused":
        source.status = "paused"
    elif not paused and source.status == "paused":
        source.status = "active"
    else:
        return source
    source.updated_at = func.now()
    await session.flush()
    await session.refresh(source)
    return source


async def settle_syncs(session: AsyncSession) -> None:
    """Finish the sync of every ``syncing`` source whose sync runs have all ended."""
    await session.execute(
        text(
            """
            WITH ended AS (
                SELECT s.id,
                       coalesce(max(r.completed_at), now()) AS finished,
                       count(r.id) AS runs,
                       count(r.id) FILTER (WHERE r.status = 'failed') AS failed,
                       min(r.id) FILTER (WHERE r.status = 'failed') AS first_failed
                FROM sources s
                LEFT JOIN runs r ON r.source_id = s.id AND r.kind = 'url'
                     AND r.created_at >= s.last_sync_started_at
                WHERE s.status = 'syncing'
                GROUP BY s.id
                HAVING count(r.id) FILTER (WHERE r.status IN ('pending', 'processing')) = 0
            )
            UPDATE sources s
            SET status = CASE WHEN ended.failed > 0 THEN 'error' ELSE 'active' END,
                last_sync_finished_at = ended.finished,
                last_sync_message = CASE
                    WHEN ended.failed > 0 THEN format(
                        '%s of %s run(s) failed; run %s: %s', ended.failed, ended.runs,
                        ended.first_failed,
                        (SELECT coalesce(error_message, 'failed') FROM runs
                         WHERE id = ended.first_failed))
                    ELSE format('%s run(s) finished.', ended.runs) END,
                updated_at = now()
            FROM ended WHERE s.id = ended.id
            """
        )
    )


async def url_importers(session: AsyncSession, source_id: int) -> list[Importer]:
    return list(
        (
            await session.scalars(
                select(Importer)
                .where(
                    Importer.source_id == source_id,
                    Importer.definition["source"]["type"].astext == "url",
                )
                .order_by(Importer.slug)
            )
        ).all()
    )


async def start_sync(
    session: AsyncSession,
    source: Source,
    *,
    user_id: int,
    token_id: int,
    initial: bool = False,
) -> list[Run]:
    """A pending run for every URL importer of the source; the caller enqueues them after
    commit. ``initial`` (``/import``) also marks the source onboarded."""
    await settle_syncs(session)
    await session.refresh(source, with_for_update=True)
    label = "initial import" if initial else "sync"
    if source.status == "paused":
        raise Conflict(f"Source {source.id} is paused: resume it before starting a {label}.")
    if source.status == "syncing":
        raise Conflict(
            f"Source {source.id} is already syncing (since {iso(source.last_sync_started_at)})."
        )
    importers = await url_importers(session, source.id)
    if not importers:
        message = f"Source {source.id} has no URL importer to run."
        raise ValidationFailed(message, errors={"source": [message]})
    runs = [
        await runs_service.create_run(
            session,
            importer,
            kind="url",
            user_id=user_id,
            token_id=token_id,
            source_id=source.id,
        )
        for importer in importers
    ]
    source.status = "syncing"
    source.last_sync_started_at = func.now()
    source.last_sync_finished_at = None
    ids = ", ".join(str(run.id) for run in runs)
    source.last_sync_message = f"{label.capitalize()} started: run(s) {ids}."
    if initial:
        source.onboarded = True
    source.updated_at = func.now()
    await session.flush()
    await session.refresh(source)
    return runs


def agent_email(source_id: int) -> str:
    return f"agent+source-{source_id}@ingest.local"


async def issue_agent_token(
    session: AsyncSession, source: Source, body: SourceTokenCreate
) -> dict[str, Any]:
    """A ``service``-role token bound to ``source``; the plaintext is in the result once."""
    email = body.user_email.strip() if body.user_email else agent_email(source.id)
    user = await session.scalar(select(User).where(User.email == email))
    if user is None:
        user = await auth_service.get_or_create_user(
            session, email, "service", name=f"{source.name} agent"[:200]
        )
    elif user.role != "service":
        message = (
            f"The user {email} has the role {user.role!r}; a source token belongs to a "
            "service user."
        )
        raise ValidationFailed(message, errors={"user_email": [message]})
    issued = await auth_service.issue_token(
        session,
        user,
        body.name or f"{source.name} agent"[:200],
        body.abilities,
        source_id=source.id,
        expires_in=timedelta(days=body.expires_in_days) if body.expires_in_days else None,
    )
    return {**auth_service.to_resource(issued.token), "token": issued.plaintext}


def to_resource(source: Source) -> dict[str, Any]:
    return {
        "id": source.id,
        "name": source.name,
        "source_url": source.source_url,
        "ingestion_type": source.ingestion_type,
        "provider": source.provider,
        "external_source_id": source.external_source_id,
        "source_priority": source.source_priority,
        "onboarded": source.onboarded,
        "approval_mode": source.approval_mode,
        "status": source.status,
        "last_sync_started_at": iso(source.last_sync_started_at),
        "last_sync_finished_at": iso(source.last_sync_finished_at),
        "last_sync_message": source.last_sync_message,
        "created_at": iso(source.created_at),
        "updated_at": iso(source.updated_at),
    }
