from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, text
from sqlalchemy.dialects.postgresql import JSON, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, TimestampMixin

OPEN_ITEM_STATUSES = ("submitted", "processing", "pending", "approved", "changes_requested")


class Item(TimestampMixin, Base):
    """A staged record waiting for review."""

    __tablename__ = "items"
    __table_args__ = (
        # One open item per identity, which a push of it again updates (staging.py): the
        # key (the record the item becomes), or for a keyless item its (source, external id).
        Index(
            "uq_items_open_key",
            "type",
            "key",
            unique=True,
            postgresql_where=text("key IS NOT NULL AND status NOT IN ('merged', 'rejected')"),
        ),
        Index(
            "uq_items_open_external",
            text("coalesce(source_id, 0)"),
            "type",
            "external_id",
            unique=True,
            postgresql_where=text(
                "key IS NULL AND external_id IS NOT NULL AND status NOT IN ('merged', 'rejected')"
            ),
        ),
        Index("ix_items_status_id", "status", "id"),
        Index("ix_items_type_content_hash", "type", "content_hash"),
        Index(
            "ix_items_title_trgm",
            "title",
            postgresql_using="gin",
            postgresql_ops={"title": "gin_trgm_ops"},
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    type: Mapped[str] = mapped_column(String(100))  # the importer slug
    status: Mapped[str] = mapped_column(String(20), default="submitted")
    source_id: Mapped[int | None] = mapped_column(
        ForeignKey("sources.id", ondelete="SET NULL"), index=True
    )
    importer_id: Mapped[int | None] = mapped_column(ForeignKey("importers.id", ondelete="SET NULL"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    row_number: Mapped[int | None]
    external_id: Mapped[str | None] = mapped_column(Text)
    collection: Mapped[str] = mapped_column(String(100))
    key: Mapped[str | None] = mapped_column(Text)
    title: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # json, not jsonb: kept as sent, in the input's column order.
    original: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    content_hash: Mapped[str | None] = mapped_column(String(32))
    duplicates: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, server_default=text("'[]'::jsonb")
    )
    record_id: Mapped[int | None] = mapped_column(BigInteger)  # canonical link once merged
    note: Mapped[str | None] = mapped_column(Text)


class ItemEvent(Base):
    __tablename__ = "item_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    actor_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    actor_token_id: Mapped[int | None] = mapped_column(ForeignKey("tokens.id", ondelete="SET NULL"))
    from_status: Mapped[str | None] = mapped_column(String(20))
    to_status: Mapped[str] = mapped_column(String(20))
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
