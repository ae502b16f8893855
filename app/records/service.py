from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import NotFound
from app.core.timefmt import iso
from app.records.models import Record


def list_query(
    collection: str, *, key: str | None = None, source_id: int | None = None
) -> Select[Any]:
    stmt = select(Record).where(Record.collection == collection)
    if key is not None:
        stmt = stmt.where(Record.key == key)
    if source_id is not None:
        stmt = stmt.where(Record.source_id == source_id)
    return stmt.order_by(Record.id.desc())


async def get(
    session: AsyncSession, collection: str, key: str, *, source_id: int | None = None
) -> Record:
    record: Record | None = await session.scalar(
        list_query(collection, key=key, source_id=source_id)
    )
    if record is None:
        raise NotFound(f"Record '{key}' not found in collection '{collection}'.")
    return record


def to_resource(record: Record) -> dict[str, Any]:
    return {
        "id": record.id,
        "collection": record.collection,
        "key": record.key,
        "data": record.data,
        "content_hash": record.content_hash,
        "source_id": record.source_id,
        "last_run_id": record.last_run_id,
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
    }
