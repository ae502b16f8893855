"""A compact row log: a CSV chunk records the outcome of each of its rows in one string; and
every failed row's errors in one shape.

`run_chunks.outcomes` holds one character per row of a byte-range chunk, in row order (see
app.runs.rowlog); only failed rows keep an entry of their own in `run_rows`. Runs logged
before keep their per-row entries, and both are read alike.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("run_chunks", sa.Column("outcomes", sa.Text(), nullable=True))
    # Rows that failed for a NUL character held their field messages alone: they get the
    # shape every failed row has, {"message", "validation"}.
    op.execute(
        """
UPDATE run_rows SET errors = json_build_object('message', 'The given data was invalid.',
                                               'validation', errors)
WHERE status = 'failed' AND json_typeof(errors) = 'object' AND NOT (errors::jsonb ? 'message')
"""
    )


def downgrade() -> None:
    # Rows recorded compactly get their entries back (without data: it is read from the
    # input file, as for any successful row of a CSV chunk).
    op.execute(
        """
INSERT INTO run_rows (run_id, row_number, status, outcome)
SELECT c.run_id, c.first_row + o.i - 1,
       CASE o.code WHEN 's' THEN 'skipped' ELSE 'success' END,
       CASE o.code WHEN 'c' THEN 'created' WHEN 'u' THEN 'updated' WHEN 'n' THEN 'unchanged'
                   WHEN 't' THEN 'staged' WHEN 's' THEN 'skipped' END
FROM run_chunks c
CROSS JOIN LATERAL unnest(string_to_array(c.outcomes, NULL)) WITH ORDINALITY AS o(code, i)
WHERE c.outcomes IS NOT NULL AND o.code <> '-'
ON CONFLICT DO NOTHING
"""
    )
    op.drop_column("run_chunks", "outcomes")
