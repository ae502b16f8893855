"""Importer persistence: the API and the YAML loader both go through here."""

from typing import Any

from pydantic import ValidationError
from sqlalchemy import Select, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import Conflict, Forbidden, NotFound, ValidationFailed, validation_errors
from app.core.url_secrets import restore_url
from app.importers.models import Importer
from app.importers.schemas import ImporterDefinition
from app.records import tables


def parse_definition(data: Any) -> ImporterDefinition:
    """Validate a raw definition, turning pydantic errors into a 422 with field paths."""
    try:
        return ImporterDefinition.model_validate(data)
    except ValidationError as exc:
        errors = validation_errors(exc.errors())
        first = next(iter(errors.items()))
        raise ValidationFailed(f"{first[0]}: {first[1][0]}", errors=errors) from exc


def definition_of(importer: Importer) -> ImporterDefinition:
    return ImporterDefinition.model_validate(importer.definition)


def visible(stmt: Select[Any], source_id: int | None) -> Select[Any]:
    return stmt if source_id is None else stmt.where(Importer.source_id == source_id)


def list_query(source_id: int | None = None) -> Select[tuple[Importer]]:
    return visible(select(Importer), source_id).order_by(Importer.slug)


async def get_by_slug(
    session: AsyncSession, slug: str, *, source_id: int | None = None
) -> Importer:
    importer: Importer | None = await session.scalar(
        visible(select(Importer).where(Importer.slug == slug), source_id)
    )
    if importer is None:
        raise NotFound(f"Importer '{slug}' not found.")
    return importer


def check_source_scope(definition: ImporterDefinition, source_id: int | None) -> None:
    """A source-bound token may only define importers of its own source."""
    if source_id is not None and definition.source_id != source_id:
        raise Forbidden("This token may only manage importers of its own source.")


def _stored(definition: ImporterDefinition) -> dict[str, Any]:
    return definition.model_dump(mode="json", by_alias=True)


def _restore_url_secrets(definition: ImporterDefinition, stored_url: str | None) -> None:
    """The API shows a source url's credentials masked: a mask sent back keeps the stored
    secret (same origin only); a mask with nothing to restore is a 422, not a password."""
    if definition.source.url is None:
        return
    try:
        definition.source.url = restore_url(definition.source.url, stored_url)
    except ValueError as exc:
        raise ValidationFailed(str(exc), errors={"source.url": [str(exc)]}) from exc


async def create(
    session: AsyncSession, definition: ImporterDefinition, origin: str = "api"
) -> Importer:
    exists = await session.scalar(select(Importer.id).where(Importer.slug == definition.slug))
    if exists is not None:
        raise ValidationFailed(
            "The slug has already been taken.",
            errors={"slug": ["The slug has already been taken."]},
        )
    _restore_url_secrets(definition, None)
    await tables.ensure_table(session, definition)
    importer = Importer(
        slug=definition.slug,
        name=definition.name,
        definition=_stored(definition),
        source_id=definition.source_id,
        origin=origin,
    )
    session.add(importer)
    await session.flush()
    await session.refresh(importer)
    return importer


async def update(
    session: AsyncSession, importer: Importer, definition: ImporterDefinition
) -> Importer:
    if definition.slug != importer.slug:
        raise Conflict("The slug of an importer cannot change.")
    # Headers are write-only: an update that leaves them out keeps the stored ones.
    stored = definition_of(importer).source
    if not definition.source.headers:
        definition.source.headers = stored.headers
    _restore_url_secrets(definition, stored.url)
    await tables.ensure_table(session, definition)
    importer.name = definition.name
    importer.definition = _stored(definition)
    importer.source_id = definition.source_id
    await session.flush()
    await session.refresh(importer)  # server-side updated_at
    return importer


async def delete(session: AsyncSession, importer: Importer) -> None:
    """Delete the importer; its runs cascade, and their row logs (no foreign key) go here."""
    await session.execute(
        text("DELETE FROM run_rows WHERE run_id IN (SELECT id FROM runs WHERE importer_id = :id)"),
        {"id": importer.id},
    )
    await session.delete(importer)
    await session.flush()


async def upsert_from_file(session: AsyncSession, definition: ImporterDefinition) -> None:
    await tables.ensure_table(session, definition)
    stmt = insert(Importer).values(
        slug=definition.slug,
        name=definition.name,
        definition=_stored(definition),
        source_id=definition.source_id,
        origin="file",
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[Importer.slug],
        set_={
            "name": stmt.excluded.name,
            "definition": stmt.excluded.definition,
            "source_id": stmt.excluded.source_id,
            "origin": "file",
        },
    )
    await session.execute(stmt)


def to_resource(importer: Importer) -> dict[str, Any]:
    definition = definition_of(importer)
    return {
        "id": importer.id,
        "slug": importer.slug,
        "name": importer.name,
        "origin": importer.origin,
        "source_id": importer.source_id,
        "definition": definition.public(),
        "created_at": importer.created_at,
        "updated_at": importer.updated_at,
    }
