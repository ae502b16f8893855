"""Run events in commit order: each event records the id of the transaction that wrote it
(``xid``, a 64-bit xid8 that never wraps), so followers read only events whose transaction has
finished before every transaction still running and go by (xid, id): an event committed late
with a smaller id can no longer fall behind a follower's cursor (app.runs.events).

Rows already there are committed: they all get xid 0, older than any transaction, and keep
their id order. Adding the column with a constant default is a catalogue change (no rewrite);
the default becomes the inserting transaction's id afterwards.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03 15:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE run_events ADD COLUMN xid xid8 NOT NULL DEFAULT '0'")
    op.execute("ALTER TABLE run_events ALTER COLUMN xid SET DEFAULT pg_current_xact_id()")
    # A run's events in (xid, id) order, and a cursor's "above (xid, id)", from one index; it
    # replaces the (run_id, id) one, whose remaining use (a plain id cursor) is a pkey lookup.
    op.create_index("ix_run_events_run_id_xid_id", "run_events", ["run_id", "xid", "id"])
    op.drop_index("ix_run_events_run_id_id", table_name="run_events")
    # What /metrics folds in at each scrape, above its cursor, across runs (app.core.metrics):
    # one entry per chunk and per split, nothing per row.
    op.create_index(
        "ix_run_events_work_xid_id",
        "run_events",
        ["xid", "id"],
        postgresql_where="type IN ('chunk_applied', 'split_finished')",
    )


def downgrade() -> None:
    op.drop_index("ix_run_events_work_xid_id", table_name="run_events")
    op.create_index("ix_run_events_run_id_id", "run_events", ["run_id", "id"])
    op.drop_index("ix_run_events_run_id_xid_id", table_name="run_events")
    op.execute("ALTER TABLE run_events DROP COLUMN xid")
