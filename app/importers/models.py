from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, TimestampMixin


class Importer(TimestampMixin, Base):
    __tablename__ = "importers"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(100), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    # The validated definition of SPEC §3, as JSON (source headers included: they are
    # write-only at the API, never returned).
    definition: Mapped[dict[str, Any]] = mapped_column(JSONB)
    source_id: Mapped[int | None] = mapped_column(
        ForeignKey("sources.id", ondelete="SET NULL"), index=True
    )
    origin: Mapped[str] = mapped_column(String(10), default="api")  # api | file
    # Start of the last cron slot a scheduled run was started for: a conditional
    # UPDATE on it makes each slot start exactly once, however many workers tick.
    last_scheduled_at: Mapped[datetime | None]
