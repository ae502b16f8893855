"""Two shortcuts of the pipeline: records.input_hash, and CSV chunks as byte ranges.

records.input_hash is the hash of the input cells that produced a record, under its importer
definition. A re-sent row whose input hash equals its record's is unchanged without being
validated: the same cells under the same definition always give the same typed data.

run_chunks.byte_start/byte_end: a CSV chunk is a byte range of the uploaded file, parsed by
the chunk job itself, instead of rows copied into a payload file by the (sequential) splitter.
run_chunks.duplicate_rows: the rows of such a chunk whose key an earlier row of the run had.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 15:30:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("records", sa.Column("input_hash", sa.String(length=32), nullable=True))
    op.add_column("run_chunks", sa.Column("byte_start", sa.BigInteger(), nullable=True))
    op.add_column("run_chunks", sa.Column("byte_end", sa.BigInteger(), nullable=True))
    op.add_column(
        "run_chunks", sa.Column("duplicate_rows", sa.ARRAY(sa.Integer()), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("run_chunks", "duplicate_rows")
    op.drop_column("run_chunks", "byte_end")
    op.drop_column("run_chunks", "byte_start")
    op.drop_column("records", "input_hash")
