"""Typed collection tables: a schema for them and the catalog of collections and their keys.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 18:00:00
"""

import json
import logging
import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from app.core.config import get_settings

log = logging.getLogger("alembic.runtime.migration")

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
    _rename_collections()


def table_name_of(collection: str) -> str:
    """A collection name as a table name: lower case, [a-z0-9_] only, a letter first."""
    name = re.sub(r"[^a-z0-9_]+", "_", collection.lower()).strip("_") or "collection"
    return (name if name[0].isalpha() else f"c_{name}")[:63]


def _rename_collections() -> None:
    """Collection names become table names: one that cannot be is renamed in its importers,
    records and items, and said so in the log. Two that would take the same name, or a field
    name the tables reserve (a leading `_`), stop the migration: an operator decides."""
    conn = op.get_bind()
    importers = conn.execute(sa.text("SELECT id, slug, definition FROM importers")).all()
    names = {row.definition["collection"] for row in importers}
    names |= set(conn.execute(sa.text("SELECT DISTINCT collection FROM records")).scalars())
    names |= set(conn.execute(sa.text("SELECT DISTINCT collection FROM items")).scalars())
    reserved = [
        f"{row.slug}.{field}" for row in importers for field in row.definition["fields"]
        if field.startswith("_")
    ]
    if reserved:
        raise RuntimeError(
            "Field names starting with '_' are reserved for the collection tables' own "
            f"columns; rename these fields first: {', '.join(reserved)}."
        )
    renames = {name: table_name_of(name) for name in names if table_name_of(name) != name}
    taken: dict[str, str] = {}
    for name in sorted(names):
        target = renames.get(name, name)
        if target in taken:
            raise RuntimeError(
                f"The collections {taken[target]!r} and {name!r} would both become the table "
                f"{target!r}; rename one of them first."
            )
        taken[target] = name
    for old, new in renames.items():
        log.warning("collection %r is renamed %r: collection names are table names now", old, new)
        for table in ("records", "items"):
            conn.execute(
                sa.text(f"UPDATE {table} SET collection = :new WHERE collection = :old"),
                {"new": new, "old": old},
            )
    for row in importers:
        old = row.definition["collection"]
        if old in renames:
            definition = {**row.definition, "collection": renames[old]}
            conn.execute(
                sa.text("UPDATE importers SET definition = CAST(:d AS jsonb) WHERE id = :id"),
                {"d": json.dumps(definition), "id": row.id},
            )


def downgrade() -> None:
    # The schema keeps the collections' data: dropping it is left to an operator.
    op.drop_table("collections")
