"""Reading a collection's table in tests, as the records API shows its records."""

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.db import raw_connection
from app.records.store import columns_of, selected, to_resource
from app.records.tables import table_name


async def stored(
    factory: async_sessionmaker[AsyncSession], collection: str
) -> dict[str, dict[str, Any]]:
    """The collection's records by key (resources as the records API shows them), in key
    order; empty when the collection has no table."""
    async with factory() as session:
        conn = await raw_connection(session)
        columns = await columns_of(conn, collection)
        if columns is None:
            return {}
        rows = await conn.fetch(
            f"SELECT {selected(columns)} FROM {table_name(collection)} ORDER BY _key"
        )
        return {row["_key"]: to_resource(collection, columns, row) for row in rows}


async def stored_data(
    factory: async_sessionmaker[AsyncSession], collection: str
) -> dict[str, dict[str, Any]]:
    """The collection's records' data by key."""
    return {key: record["data"] for key, record in (await stored(factory, collection)).items()}
