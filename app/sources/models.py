from datetime import datetime

from sqlalchemy import String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, TimestampMixin


class Source(TimestampMixin, Base):
    __tablename__ = "sources"
    __table_args__ = (UniqueConstraint("provider", "external_source_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    source_url: Mapped[str] = mapped_column(Text, unique=True)
    ingestion_type: Mapped[str] = mapped_column(String(20), default="api")
    provider: Mapped[str | None] = mapped_column(String(100))
    external_source_id: Mapped[str | None] = mapped_column(String(200))
    source_priority: Mapped[int] = mapped_column(default=0)
    # Bookkeeping, gating nothing: the initial import was started (or an operator says the
    # source is set up). Whether the source takes work is `status`. The column keeps its first
    # name, `is_active`, which read as if it were the status.
    onboarded: Mapped[bool] = mapped_column("is_active", default=False)
    approval_mode: Mapped[str] = mapped_column(String(10), default="auto")  # auto | manual
    # active | paused | error | syncing (app/sources/schemas.py says what each means).
    status: Mapped[str] = mapped_column(String(10), default="active")
    last_sync_started_at: Mapped[datetime | None]
    last_sync_finished_at: Mapped[datetime | None]
    last_sync_message: Mapped[str | None] = mapped_column(Text)
