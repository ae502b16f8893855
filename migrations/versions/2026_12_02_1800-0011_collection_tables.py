"""Typed collection tables: a schema for them and the catalog of collections and their keys.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from app.core.config import get_settings

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "collections",
        sa.Column("name", sa.String(63, collation="C"), primary_key=True),
        sa.Column("key", postgresql.JSONB(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    )
    op.execute(f'CREATE SCHEMA IF NOT EXISTS "{get_settings().data_schema}"')


def downgrade() -> None:
    # The schema keeps the collections' data: dropping it is left to an operator.
    op.drop_table("collections")
