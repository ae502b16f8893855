"""Records: keys and collections compare in byte order (COLLATE "C"), and data is json.

A key is an identifier, not prose: byte order is all it needs, and it is the cheapest order
for Postgres to compare in. Every chunk looks its keys up in the records index, and every new
record is inserted into it; under a linguistic collation each comparison calls strcoll.

A record's data is written as canonical JSON (sorted keys, as its content hash is computed)
and read back whole; nothing queries inside it but `->` on one field. json stores that text
as it is; jsonb parsed it into its binary form on every write, a fifth of Postgres' work per
record written.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 17:00:00
"""
from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rewrites the table and rebuilds its indexes.
    op.execute(
        'ALTER TABLE records ALTER COLUMN collection TYPE varchar(100) COLLATE "C", '
        'ALTER COLUMN key TYPE text COLLATE "C", ALTER COLUMN data TYPE json USING data::json'
    )


def downgrade() -> None:
    op.execute(
        'ALTER TABLE records ALTER COLUMN collection TYPE varchar(100) COLLATE "default", '
        'ALTER COLUMN key TYPE text COLLATE "default", '
        "ALTER COLUMN data TYPE jsonb USING data::jsonb"
    )
