"""A review item keeps its original row as json, not jsonb: json keeps the input's column
order (jsonb reorders keys), which is the order a reviewer expects to read the row in. The
original is only stored and shown whole, never queried inside.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22 18:30:00
"""
from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE items ALTER COLUMN original TYPE json USING original::json")


def downgrade() -> None:
    op.execute("ALTER TABLE items ALTER COLUMN original TYPE jsonb USING original::jsonb")
