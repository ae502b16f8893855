from datetime import datetime

from sqlalchemy import String, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base


class Collection(Base):
    """A collection's table is ``INGEST_DATA_SCHEMA.<name>`` (app.records.tables); this row
    keeps the key its importers agree on (None while only `append` importers wrote it)."""

    __tablename__ = "collections"

    name: Mapped[str] = mapped_column(String(63, collation="C"), primary_key=True)
    key: Mapped[list[str] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
