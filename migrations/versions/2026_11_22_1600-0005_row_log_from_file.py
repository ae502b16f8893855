"""The row log keeps no copy of a CSV row that did not fail: its data is read back from the
run's stored input file, which is kept exactly as long as the row log (`ingest prune` removes
both). Failed rows keep their data: retries and the failed-rows download read it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 16:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column("run_rows", "data", existing_type=sa.JSON(), nullable=True)


def downgrade() -> None:
    op.execute("UPDATE run_rows SET data = '{}' WHERE data IS NULL")
    op.alter_column("run_rows", "data", existing_type=sa.JSON(), nullable=False)
