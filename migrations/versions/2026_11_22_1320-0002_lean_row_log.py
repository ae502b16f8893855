"""Leaner hot-path tables: no foreign key on the row log, partial status index, no
records (collection, last_run_id) index.

The row log is written by binary COPY at the pipeline's full speed; its foreign key to runs
checked and KEY SHARE-locked the run row once per inserted row, halving COPY throughput.
Runs are deleted only with their importer or by `ingest prune`, which remove their rows
explicitly. Most logged rows are successes, which no query looks up by status, so the status
index covers only the others. The (collection, last_run_id) index served no query.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 13:20:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint("fk_run_rows_run_id_runs", "run_rows", type_="foreignkey")
    op.drop_index("ix_run_rows_run_id_status", table_name="run_rows")
    op.create_index(
        "ix_run_rows_run_id_status",
        "run_rows",
        ["run_id", "status", "row_number"],
        postgresql_where=sa.text("status <> 'success'"),
    )
    op.drop_index("ix_records_collection_last_run", table_name="records")


def downgrade() -> None:
    op.create_index(
        "ix_records_collection_last_run", "records", ["collection", "last_run_id"]
    )
    op.drop_index("ix_run_rows_run_id_status", table_name="run_rows")
    op.create_index("ix_run_rows_run_id_status", "run_rows", ["run_id", "status", "row_number"])
    op.execute("DELETE FROM run_rows WHERE run_id NOT IN (SELECT id FROM runs)")
    op.create_foreign_key(
        "fk_run_rows_run_id_runs", "run_rows", "runs", ["run_id"], ["id"], ondelete="CASCADE"
    )
