from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, Sequence, String, Text, text
from sqlalchemy.dialects.postgresql import ARRAY, JSON, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, TimestampMixin

FINISHED_STATUSES = ("completed", "completed_with_errors", "failed", "cancelled")


class Run(TimestampMixin, Base):
    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_importer_id_created", "importer_id", "id"),
        Index("ix_runs_status_id", "status", "id"),
        # An earlier run of the same input file (the splitter reuses its chunk ledger).
        Index(
            "ix_runs_importer_id_file_sha256",
            "importer_id",
            "file_sha256",
            postgresql_where=text("file_sha256 IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    importer_id: Mapped[int] = mapped_column(ForeignKey("importers.id", ondelete="CASCADE"))
    importer_slug: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(24), default="pending")
    kind: Mapped[str] = mapped_column(String(10), default="upload")  # upload|url|push|retry|cli
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    token_id: Mapped[int | None] = mapped_column(ForeignKey("tokens.id", ondelete="SET NULL"))
    source_id: Mapped[int | None] = mapped_column(
        ForeignKey("sources.id", ondelete="SET NULL"), index=True
    )
    parent_run_id: Mapped[int | None] = mapped_column(
        ForeignKey("runs.id", ondelete="SET NULL"), index=True
    )
    dry_run: Mapped[bool] = mapped_column(default=False)

    original_filename: Mapped[str | None] = mapped_column(Text)
    file_key: Mapped[str | None] = mapped_column(Text)
    file_sha256: Mapped[str | None] = mapped_column(String(64))
    file_size: Mapped[int | None] = mapped_column(BigInteger)
    # The input's columns in their original order (JSONB objects do not keep key order).
    columns: Mapped[list[str] | None] = mapped_column(JSONB)

    total: Mapped[int] = mapped_column(default=0)
    processed: Mapped[int] = mapped_column(default=0)
    successful: Mapped[int] = mapped_column(default=0)
    failed: Mapped[int] = mapped_column(default=0)
    skipped: Mapped[int] = mapped_column(default=0)
    summary: Mapped[dict[str, int] | None] = mapped_column(JSONB)
    error_message: Mapped[str | None] = mapped_column(Text)

    cancel_requested: Mapped[bool] = mapped_column(default=False)
    # Chunks written so far by the splitter; chunks_total stays NULL until splitting ends.
    chunks_written: Mapped[int] = mapped_column(default=0)
    chunks_total: Mapped[int | None]
    chunks_done: Mapped[int] = mapped_column(default=0)
    # The split's lease (see app.worker.leases): which worker splits, until when, how often
    # it was claimed, and the last attempt's error.
    split_claimed_by: Mapped[str | None] = mapped_column(Text)
    split_lease_until: Mapped[datetime | None]
    split_attempt: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    split_last_error: Mapped[str | None] = mapped_column(Text)

    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]


class RunChunk(Base):
    """The exactly-once ledger: one row per chunk, and whether it has been applied.

    A CSV chunk is a byte range of the run's input file (``byte_start``, ``byte_end``); any
    other chunk's rows live in a payload file (see ``app.pipeline.chunks``)."""

    __tablename__ = "run_chunks"
    __table_args__ = (
        Index("ix_run_chunks_pending", "run_id", postgresql_where=text("status = 'pending'")),
    )

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(10), default="pending")  # pending|done|cancelled
    first_row: Mapped[int]
    row_count: Mapped[int]
    byte_start: Mapped[int | None] = mapped_column(BigInteger)
    byte_end: Mapped[int | None] = mapped_column(BigInteger)
    # Rows of a byte-range chunk whose key an earlier row of the run had.
    duplicate_rows: Mapped[list[int] | None] = mapped_column(ARRAY(Integer))
    # Claims so far (see app.worker.leases); the worker holding the chunk, until when.
    attempts: Mapped[int] = mapped_column(default=0)
    claimed_by: Mapped[str | None] = mapped_column(Text)
    lease_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    # A CSV chunk's row log: one outcome code per row, in row order (app.runs.rowlog).
    outcomes: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    applied_at: Mapped[datetime | None]


class RunRow(Base):
    __tablename__ = "run_rows"
    __table_args__ = (
        # Successes are most rows and are never looked up by status.
        Index(
            "ix_run_rows_run_id_status",
            "run_id",
            "status",
            "row_number",
            postgresql_where=text("status <> 'success'"),
        ),
    )

    # Generated, unindexed: rows are found by (run_id, row_number), the primary key.
    id: Mapped[int] = mapped_column(
        BigInteger, Sequence("run_rows_id_seq"), server_default=text("nextval('run_rows_id_seq')")
    )
    # No foreign key: checking it per COPYed row halved the row log's write speed.
    # Runs are deleted with their importer or by `ingest prune`, which delete these rows.
    run_id: Mapped[int] = mapped_column(primary_key=True)
    row_number: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(10))  # success | failed | skipped
    outcome: Mapped[str | None] = mapped_column(String(10))
    record_key: Mapped[str | None] = mapped_column(Text)
    # json, not jsonb: stored as sent (cheaper per row, and in the input's column order).
    # Null for a row of a CSV chunk that did not fail: read back from the input file.
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    errors: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class RunEvent(Base):
    """One entry of a run's append-only event log (app.runs.events writes and reads it)."""

    __tablename__ = "run_events"
    # Not mapped: ``xid xid8`` (the writing transaction, by default; migration 0015) and the
    # index on (run_id, xid, id). Events are written and read in SQL (app.runs.events).

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    data: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("uq_idempotency_keys_scope", "token_id", "key", unique=True),)

    id: Mapped[int] = mapped_column(primary_key=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("tokens.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int]
    response: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"), index=True)


class Worker(Base):
    """A live (or lately live) worker process: its heartbeat and the leases it holds."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(Text, primary_key=True)  # host:pid:random
    host: Mapped[str] = mapped_column(Text)
    pid: Mapped[int]
    started_at: Mapped[datetime]
    last_beat: Mapped[datetime]
    jobs: Mapped[int] = mapped_column(default=0, server_default=text("0"))
