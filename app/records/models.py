from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base


class Record(Base):
    __tablename__ = "records"
    __table_args__ = (Index("uq_records_collection_key", "collection", "key", unique=True),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # Byte order (COLLATE "C"): keys are identifiers, and it is the cheapest order to compare.
    collection: Mapped[str] = mapped_column(String(100, collation="C"))
    key: Mapped[str] = mapped_column(Text(collation="C"))
    # json, not jsonb: canonical JSON stored as written (cheaper per write).
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    content_hash: Mapped[str] = mapped_column(String(32))
    # The hash of the input cells and importer definition that produced `data` (null when a
    # reviewer's promotion wrote it): a row re-sent with the same one is unchanged.
    input_hash: Mapped[str | None] = mapped_column(String(32))
    source_id: Mapped[int | None] = mapped_column(ForeignKey("sources.id", ondelete="SET NULL"))
    # Deliberately no foreign key: pruning old runs must not touch records.
    last_run_id: Mapped[int | None]
    last_row_number: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    updated_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


class Collection(Base):
    """A collection's table is ``INGEST_DATA_SCHEMA.<name>`` (app.records.tables); this row
    keeps the key its importers agree on (None while only `append` importers wrote it)."""

    __tablename__ = "collections"

    name: Mapped[str] = mapped_column(String(63, collation="C"), primary_key=True)
    key: Mapped[list[str] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
