"""Items: the push front door's checks, listing, and the review transitions of SPEC §6.

Every transition is one conditional UPDATE on the item's status *and* ``updated_at`` as seen
when the request read it: of two concurrent transitions exactly one matches, the other finds
no row and gets 409. ``updated_at`` makes it a version, so a retarget (which keeps the status)
and a re-push of the item's content (which bumps it) race the same way.
"""

from typing import Any

from sqlalchemy import Select, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.dependencies import Principal
from app.auth.models import User
from app.core.db import raw_connection
from app.core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from app.core.timefmt import iso
from app.importers.models import Importer
from app.importers.schemas import ImporterDefinition
from app.items import hooks
from app.items.models import Item, ItemEvent
from app.items.staging import prepare, refresh_markers
from app.pipeline.chunks import ChunkRow
from app.pipeline.mapping import MissingColumns, plan_columns
from app.pipeline.validation import RowValidator
from app.records.store import Table, Write, columns_of, content_hash, selected
from app.records.store import to_resource as records_resource
from app.records.tables import table_name
from app.sources.models import Source
from app.sources.urls import same_source_url
from app.webhooks import outbox

# action -> (statuses it is allowed from, status it leads to)
TRANSITIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "approve": (("pending", "processing"), "approved"),
    "reject": (("pending", "processing"), "rejected"),
    "request-changes": (("pending", "processing"), "changes_requested"),
    "promote": (("approved",), "merged"),
}
SORTABLE = {"id": Item.id, "created_at": Item.created_at, "updated_at": Item.updated_at}


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, errors={field: [message]})


# --- push -------------------------------------------------------------------------------


async def importer_for(session: AsyncSession, slug: str, scope_source_id: int | None) -> Importer:
    """The importer ``slug`` as a token sees it: a source-bound token reaches importers of its
    source and importers bound to no source (the shared ``event``, ``place``... types)."""
    importer = await session.scalar(select(Importer).where(Importer.slug == slug))
    if importer is None or (
        scope_source_id is not None and importer.source_id not in (None, scope_source_id)
    ):
        raise NotFound(f"Importer '{slug}' not found.")
    return importer


def push_definition(importer: Importer) -> ImporterDefinition:
    definition = ImporterDefinition.model_validate(importer.definition)
    if definition.source.type != "push":
        raise _invalid(
            "type",
            f"Importer '{importer.slug}' takes no pushed items (its source is "
            f"{definition.source.type}).",
        )
    if definition.format not in ("auto", "ndjson", "json"):
        raise _invalid(
            "type",
            f"Importer '{importer.slug}' reads {definition.format}; a push importer's format "
            "must be auto, json or ndjson.",
        )
    return definition


async def push_source(session: AsyncSession, source_id: int | None) -> Source | None:
    """The source a push is for; 409 while it is paused."""
    if source_id is None:
        return None
    source = await session.get(Source, source_id)
    if source is None:
        return None
    if source.status == "paused":
        raise Conflict(
            f"Source {source.id} ({source.name}) is paused: it takes no items until it is resumed."
        )
    return source


def check_source_urls(
    definition: ImporterDefinition,
    items: list[dict[str, Any]],
    source: Source,
    paths: list[str],
) -> None:
    """A source-bound token pushes only its own source's items (403 otherwise).

    The check reads what the importer will map: every key of an item that header matching
    folds onto the ``source_url`` field (``Source_URL``, ``source-url``, an alias in its
    ``from``...) must name the token's source, compared in canonical form. The item then
    carries the source's own URL under the field's first name and under no other spelling,
    so the same feed always gives the same record key. An item without one is the source's
    own."""
    spec = definition.fields.get("source_url")
    names = {hooks.fold(name) for name in (spec.from_ if spec and spec.from_ else ["source_url"])}
    primary = spec.from_[0] if spec and spec.from_ else "source_url"
    for item, path in zip(items, paths, strict=True):
        spellings = {key for key in item if hooks.fold(key) in names}
        for key in spellings:
            value = item[key]
            if value is None or value == "":
                continue
            if not isinstance(value, str) or not same_source_url(value, source.source_url):
                raise Forbidden(
                    f"The {path}.{key} does not match the token's source "
                    f"({source.source_url}). Nothing was stored."
                )
        # In place and where the agent put it: the item's column order is kept.
        rebuilt: dict[str, Any] = {}
        for key, value in item.items():
            if key not in spellings:
                rebuilt[key] = value
            elif primary not in rebuilt:
                rebuilt[primary] = source.source_url
        rebuilt.setdefault(primary, source.source_url)
        item.clear()
        item.update(rebuilt)


# --- reading ----------------------------------------------------------------------------


def visible(stmt: Select[Any], scope_source_id: int | None) -> Select[Any]:
    return stmt if scope_source_id is None else stmt.where(Item.source_id == scope_source_id)


def list_query(
    *,
    scope_source_id: int | None = None,
    status: str | None = None,
    type_: str | None = None,
    source_id: int | None = None,
    run_id: int | None = None,
    external_id: str | None = None,
    has_duplicates: bool | None = None,
    search: str | None = None,
    sort: str = "id",
    order: str = "desc",
) -> Select[tuple[Item]]:
    stmt = visible(select(Item), scope_source_id)
    if search:
        # Title or key containing the text, case-insensitively (LIKE's wildcards taken literally).
        pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        stmt = stmt.where(Item.title.ilike(pattern) | Item.key.ilike(pattern))
    for column, value in (
        (Item.status, status),
        (Item.type, type_),
        (Item.source_id, source_id),
        (Item.run_id, run_id),
        (Item.external_id, external_id),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    if has_duplicates is not None:
        count = func.jsonb_array_length(Item.duplicates)
        stmt = stmt.where(count > 0 if has_duplicates else count == 0)
    by = SORTABLE[sort]
    if order == "asc":
        return stmt.order_by(by.asc(), Item.id.asc())
    return stmt.order_by(by.desc(), Item.id.desc())


async def status_counts(session: AsyncSession, scope_source_id: int | None) -> dict[str, int]:
    """How many items this principal sees in each status."""
    stmt = select(Item.status, func.count()).group_by(Item.status)
    if scope_source_id is not None:
        stmt = stmt.where(Item.source_id == scope_source_id)
    return {status: count for status, count in (await session.execute(stmt)).all()}


async def matches(
    session: AsyncSession, item: Item, scope_source_id: int | None
) -> list[dict[str, Any]]:
    """The item's duplicate markers, each with what it matched (the record of the item's
    collection, or the other item) when this principal may see it, else ``None``."""
    found: list[dict[str, Any]] = []
    conn = None
    columns: dict[str, str] | None = None
    for marker in item.duplicates:
        matched: dict[str, Any] | None = None
        if marker.get("match") == "item":
            other = await session.scalar(
                visible(select(Item).where(Item.id == marker.get("id")), scope_source_id)
            )
            if other is not None:
                matched = to_resource(other)
        elif marker.get("match") == "record":
            if conn is None:
                conn = await raw_connection(session)
                columns = await columns_of(conn, item.collection)
            if columns is not None:
                row = await conn.fetchrow(
                    f"SELECT {selected(columns)} FROM {table_name(item.collection)} "
                    "WHERE _id = $1 AND ($2::int IS NULL OR _source_id = $2::int)",
                    marker.get("id"),
                    scope_source_id,
                )
                if row is not None:
                    matched = records_resource(item.collection, columns, row)
        found.append({**marker, "matched": matched})
    return found


async def get(session: AsyncSession, item_id: int, *, scope_source_id: int | None = None) -> Item:
    stmt = visible(select(Item).where(Item.id == item_id), scope_source_id)
    item: Item | None = await session.scalar(stmt.execution_options(populate_existing=True))
    if item is None:
        raise NotFound(f"Item {item_id} not found.")
    return item


async def history(session: AsyncSession, item_id: int) -> list[dict[str, Any]]:
    rows = (
        await session.execute(
            select(ItemEvent, User.email)
            .outerjoin(User, User.id == ItemEvent.actor_user_id)
            .where(ItemEvent.item_id == item_id)
            .order_by(ItemEvent.id)
        )
    ).all()
    return [
        {
            "id": event.id,
            "from": event.from_status,
            "to": event.to_status,
            "note": event.note,
            "actor": {
                "user_id": event.actor_user_id,
                "token_id": event.actor_token_id,
                "email": email,
            },
            "created_at": iso(event.created_at),
        }
        for event, email in rows
    ]


def to_resource(item: Item, events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    resource = {
        "id": item.id,
        "type": item.type,
        "status": item.status,
        "source_id": item.source_id,
        "importer_id": item.importer_id,
        "run_id": item.run_id,
        "row_number": item.row_number,
        "external_id": item.external_id,
        "collection": item.collection,
        "key": item.key,
        "title": item.title,
        "data": item.data,
        "original": item.original,
        "content_hash": item.content_hash,
        "duplicates": item.duplicates,
        "has_duplicates": bool(item.duplicates),
        "record_id": item.record_id,
        "note": item.note,
        "created_at": iso(item.created_at),
        "updated_at": iso(item.updated_at),
    }
    if events is not None:
        resource["events"] = events
    return resource


async def show(session: AsyncSession, item_id: int, scope_source_id: int | None) -> dict[str, Any]:
    item = await get(session, item_id, scope_source_id=scope_source_id)
    return to_resource(item, await history(session, item.id))


# --- transitions ------------------------------------------------------------------------


def _forbidden(action: str, item: Item, allowed: str) -> ValidationFailed:
    message = (
        f"Item {item.id} cannot be {_PAST[action]}: its status is {item.status} "
        f"({action} is allowed from {allowed})."
    )
    return ValidationFailed(message, errors={"status": [message]})


_PAST = {
    "approve": "approved",
    "reject": "rejected",
    "request-changes": "sent back for changes",
    "promote": "promoted",
    "retarget": "retargeted",
}


async def _claim(session: AsyncSession, item: Item, values: dict[str, Any], action: str) -> None:
    """The conditional UPDATE: applies only if the item is as this request read it."""
    claimed = await session.scalar(
        update(Item)
        .where(
            Item.id == item.id,
            Item.status == item.status,
            Item.updated_at == item.updated_at,
        )
        .values(**values, updated_at=func.clock_timestamp())
        .returning(Item.id)
        .execution_options(synchronize_session=False)
    )
    if claimed is None:
        now = await session.scalar(
            select(Item.status).where(Item.id == item.id).execution_options(populate_existing=True)
        )
        raise Conflict(
            f"Item {item.id} was changed by another request while this {action} was in flight "
            f"(its status is now {now}); reload it and try again."
        )


async def _record(
    session: AsyncSession,
    item_id: int,
    actor: Principal,
    from_status: str,
    to_status: str,
    note: str | None,
) -> None:
    await session.execute(
        insert(ItemEvent).values(
            item_id=item_id,
            actor_user_id=actor.user_id,
            actor_token_id=actor.token_id,
            from_status=from_status,
            to_status=to_status,
            note=note,
        )
    )


def _clean(note: str | None) -> str | None:
    return note.strip() or None if note is not None else None


async def transition(
    session: AsyncSession,
    item_id: int,
    action: str,
    actor: Principal,
    *,
    note: str | None = None,
) -> Item:
    """approve, reject, request-changes or promote (see TRANSITIONS)."""
    allowed, to_status = TRANSITIONS[action]
    note = _clean(note)
    if action == "request-changes" and note is None:
        raise _invalid("note", "The note field is required.")
    item = await get(session, item_id, scope_source_id=actor.source_id)
    if item.status not in allowed:
        raise _forbidden(action, item, ", ".join(allowed))
    from_status = item.status
    values: dict[str, Any] = {"status": to_status}
    if note is not None:
        values["note"] = note
    await _claim(session, item, values, action)
    if action == "promote":
        await _promote(session, item)
    await _record(session, item.id, actor, from_status, to_status, note)
    await outbox.item_transitioned(session, item.id, to_status)
    return await get(session, item.id)


async def _promote(session: AsyncSession, item: Item) -> None:
    """Write the canonical record through the pipeline's own writer and link it."""
    key = item.key
    if key is None:  # an append importer: its records' keys are made, as the writer does
        key = (
            f"{item.run_id}:{item.row_number}"
            if item.run_id is not None and item.row_number is not None
            else f"item:{item.id}"
        )
    digest = item.content_hash or content_hash(item.data)
    conn = await raw_connection(session)
    table = await Table.load(conn, item.collection, item.data)
    owner = (await table.known(conn, [key])).get(key)
    if owner is not None and item.source_id is not None and owner.source_id != item.source_id:
        raise Conflict(
            f"Record '{key}' of {item.collection} belongs to another source: an item of "
            f"source {item.source_id} cannot change it."
        )
    write = Write(item.data, digest, item.row_number or 0, None)
    await table.write(conn, item.source_id, item.run_id, {key: write})
    record = await conn.fetchrow(
        f"SELECT _id AS id, _content_hash AS content_hash, _last_row_number AS last_row_number "
        f"FROM {table.name} WHERE _key = $1",
        key,
    )
    await session.execute(
        update(Item)
        .where(Item.id == item.id)
        .values(record_id=record["id"], key=key)
        .execution_options(synchronize_session=False)
    )


async def retarget(
    session: AsyncSession,
    item_id: int,
    actor: Principal,
    *,
    new_type: str | None,
    note: str | None,
    threshold: float,
) -> Item:
    """Move an item to another importer's type: its data is re-validated from what was
    pushed, its canonical link cleared and its duplicate markers recomputed. The status stays."""
    new_type = (new_type or "").strip()
    if not new_type:
        raise _invalid("type", "The type field is required.")
    item = await get(session, item_id, scope_source_id=actor.source_id)
    if item.status == "merged":
        raise _forbidden("retarget", item, "any status but merged")
    if new_type == item.type:
        raise _invalid("type", f"Item {item.id} is already of type {new_type}.")
    try:
        importer = await importer_for(session, new_type, actor.source_id)
    except NotFound as exc:
        raise _invalid("type", "The selected type is invalid.") from exc
    definition = ImporterDefinition.model_validate(importer.definition)

    original = dict(item.original if item.original is not None else item.data)
    hooks.apply_hooks(definition, [original])
    try:
        validator = RowValidator(definition, plan_columns(definition, list(original)))
    except MissingColumns as exc:
        raise _invalid("type", f"Item {item.id} cannot become a {new_type}: {exc}.") from exc
    result = validator.validate(original)
    if result.errors or result.data is None:
        errors = {f"data.{field}": messages for field, messages in (result.errors or {}).items()}
        first = next(iter(errors.values()), ["The given data was invalid."])[0]
        raise ValidationFailed(f"Item {item.id} is not a valid {new_type}: {first}", errors=errors)
    staged = prepare(
        ChunkRow(item.row_number or 0, original, result.data, result.key, None), definition
    )

    old_type, status = item.type, item.status
    try:
        async with session.begin_nested():
            await _claim(
                session,
                item,
                {
                    "type": definition.slug,
                    "importer_id": importer.id,
                    "collection": definition.collection,
                    "key": staged.key,
                    "title": staged.title,
                    "external_id": staged.external_id,
                    "data": result.data,
                    "content_hash": staged.hash,
                    "record_id": None,
                    "duplicates": [],
                    **({"note": _clean(note)} if _clean(note) else {}),
                },
                "retarget",
            )
    except IntegrityError as exc:
        # One open item per key, or for keyless items per (source, external id): staging.py.
        same = (
            f"key {staged.key!r}"
            if staged.key is not None
            else f"external id {staged.external_id!r} for this source"
        )
        raise Conflict(
            f"An open item of type {new_type} with {same} already exists; review that one instead."
        ) from exc
    text = f"Retargeted from {old_type} to {new_type}."
    note = _clean(note)
    await _record(session, item.id, actor, status, status, f"{text} {note}" if note else text)
    await refresh_markers(
        await raw_connection(session),
        [item.id],
        collection=definition.collection,
        title_field=definition.title_field,
        threshold=threshold,
    )
    return await get(session, item.id)
