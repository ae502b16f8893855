"""Leases in the ledger: a split or chunk is claimed by a worker for a while, renewed while it
lives, and taken over when the lease expires; workers keep a heartbeat row.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("run_chunks", sa.Column("claimed_by", sa.Text(), nullable=True))
    op.add_column("run_chunks", sa.Column("lease_until", sa.DateTime(timezone=True)))
    op.add_column("run_chunks", sa.Column("last_error", sa.Text(), nullable=True))
    op.add_column("runs", sa.Column("split_claimed_by", sa.Text(), nullable=True))
    op.add_column("runs", sa.Column("split_lease_until", sa.DateTime(timezone=True)))
    op.add_column(
        "runs", sa.Column("split_attempt", sa.Integer(), nullable=False, server_default="0")
    )
    op.add_column("runs", sa.Column("split_last_error", sa.Text(), nullable=True))
    op.create_table(
        "workers",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_beat", sa.DateTime(timezone=True), nullable=False),
        sa.Column("jobs", sa.Integer(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("workers")
    op.drop_column("runs", "split_last_error")
    op.drop_column("runs", "split_attempt")
    op.drop_column("runs", "split_lease_until")
    op.drop_column("runs", "split_claimed_by")
    op.drop_column("run_chunks", "last_error")
    op.drop_column("run_chunks", "lease_until")
    op.drop_column("run_chunks", "claimed_by")
