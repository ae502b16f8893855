"""One open review item per (type, key): a key pushed again while its item is open updates that
item. Staging used to match only external ids, so keyed items without one piled up; the
latest of each key (the one a resubmission would have left) stays open, the others are
closed as rejected, each with a transition saying why.

Where an item has a key, the key is its identity (it names the record it becomes): the
external-id index now covers only keyless items, so the two never disagree about which open
item a push updates.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-22 19:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN = "status NOT IN ('merged', 'rejected')"

CLOSE_DUPLICATES = f"""
WITH ranked AS (
    SELECT id, status,
           first_value(id) OVER w AS keeper,
           row_number() OVER w AS rank
    FROM items
    WHERE key IS NOT NULL AND {OPEN}
    WINDOW w AS (PARTITION BY type, key
                 ORDER BY coalesce(run_id, 0) DESC, coalesce(row_number, 0) DESC, id DESC)
), closed AS (
    UPDATE items i SET status = 'rejected', updated_at = clock_timestamp()
    FROM ranked r
    WHERE i.id = r.id AND r.rank > 1
    RETURNING i.id, r.status AS from_status, r.keeper
)
INSERT INTO item_events (item_id, from_status, to_status, note)
SELECT id, from_status, 'rejected',
       'Closed as a duplicate: item ' || keeper || ' is the open item of this key.'
FROM closed
"""


def _external_index(where: str) -> None:
    op.create_index(
        "uq_items_open_external",
        "items",
        [sa.literal_column("coalesce(source_id, 0)"), "type", "external_id"],
        unique=True,
        postgresql_where=sa.text(where),
    )


def upgrade() -> None:
    op.execute(CLOSE_DUPLICATES)
    op.create_index(
        "uq_items_open_key",
        "items",
        ["type", "key"],
        unique=True,
        postgresql_where=sa.text(f"key IS NOT NULL AND {OPEN}"),
    )
    op.drop_index("uq_items_open_external", table_name="items")
    _external_index(f"key IS NULL AND external_id IS NOT NULL AND {OPEN}")


def downgrade() -> None:
    # The closed duplicates stay closed.
    op.drop_index("uq_items_open_external", table_name="items")
    _external_index(f"external_id IS NOT NULL AND {OPEN}")
    op.drop_index("uq_items_open_key", table_name="items")
