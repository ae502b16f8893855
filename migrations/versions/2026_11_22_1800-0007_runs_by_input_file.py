"""Runs of an importer by their input file's SHA-256: the splitter looks for an earlier run of
the same file to reuse its chunk ledger, once per run.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22 18:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_runs_importer_id_file_sha256",
        "runs",
        ["importer_id", "file_sha256"],
        postgresql_where=sa.text("file_sha256 IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_runs_importer_id_file_sha256", table_name="runs")
