"""Stage valid rows as review items (importers or sources with manual approval).

Runs inside the chunk's transaction on its asyncpg connection, so staging commits (or not)
with the chunk's row log and counters: a chunk delivered twice stages its rows once.

- A row whose ``(source, type, external_id)`` matches an open item updates that item instead
  of adding one; if its content changed, the item goes back to ``pending`` (a curator's
  approval or change request was about the old content) and the change is recorded.
- Every staged item gets duplicate markers (``refresh_markers``).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from app.core.db import json_dumps
from app.importers.schemas import ImporterDefinition
from app.pipeline.chunks import ChunkRow
from app.pipeline.writer import content_hash

# Open items: the ones a new push of the same external id updates (the partial unique index).
CLOSED_STATUSES = ("merged", "rejected")
# Markers kept per kind and match, best first: enough to review, bounded for a flood of copies.
MAX_MARKERS = 10

_COLUMNS = (
    "type, status, source_id, importer_id, run_id, row_number, external_id, collection, key, "
    "title, data, original, content_hash"
)
_UNNEST = (
    "SELECT $1::text, 'pending', $2::int, $3::int, $4::int, t.row_number, t.external_id, "
    "$5::text, t.key, t.title, t.data, t.original, t.hash "
    "FROM unnest($6::int[], $7::text[], $8::text[], $9::text[], $10::jsonb[], $11::json[], "
    "$12::text[]) AS t(row_number, external_id, key, title, data, original, hash)"
)

INSERT_ITEMS = f"INSERT INTO items ({_COLUMNS}) {_UNNEST} RETURNING id"

UPSERT_ITEMS = f"""
INSERT INTO items AS i ({_COLUMNS}) {_UNNEST}
ON CONFLICT (coalesce(source_id, 0), type, external_id)
    WHERE external_id IS NOT NULL AND status NOT IN ('merged', 'rejected')
DO UPDATE SET
    status = CASE WHEN i.content_hash IS DISTINCT FROM EXCLUDED.content_hash
                  THEN 'pending' ELSE i.status END,
    importer_id = EXCLUDED.importer_id, run_id = EXCLUDED.run_id,
    row_number = EXCLUDED.row_number, collection = EXCLUDED.collection, key = EXCLUDED.key,
    title = EXCLUDED.title, data = EXCLUDED.data, original = EXCLUDED.original,
    content_hash = EXCLUDED.content_hash, updated_at = clock_timestamp()
-- A later push wins, and within one push a later row, whatever order chunks commit in.
WHERE (coalesce(i.run_id, 0), coalesce(i.row_number, 0)) < (EXCLUDED.run_id, EXCLUDED.row_number)
RETURNING id, external_id, status, content_hash
"""

INSERT_EVENTS = """
INSERT INTO item_events (item_id, actor_user_id, actor_token_id, from_status, to_status, note)
SELECT t.item_id, $1, $2, t.from_status, t.to_status, t.note
FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[])
    AS t(item_id, from_status, to_status, note)
"""

# One statement per batch: exact markers (same content hash as a record of the collection or
# an open item of the type) and near ones (trigram similarity of titles above the threshold).
#
# Every lookup is served by an index. The records table has none over its JSON title fields,
# so records are reached through what is indexed:
# - exact: a record's key is a function of its data, so a record with the same content has
#   the same key and the unique (collection, key) index finds it. Only keyless (append) items
#   compare hashes across the collection.
# - near, records: the records promoted from items, found by the trigram index on items.title
#   (the merged item's title), plus the record with the item's own key (the one promoting it
#   would update). A record written straight by an auto run is thus near-matched only by its
#   key: comparing every record's title field costs a trigram computation per record and item
#   (measured: ~0.6 s per item against a 50,000-record collection).
# - near, items: the trigram index on items.title.
REFRESH_MARKERS = f"""
WITH targets AS (
    SELECT id, type, collection, key, title, content_hash FROM items WHERE id = ANY($1::bigint[])
), markers AS (
    SELECT t.id, coalesce(er.m, '[]') || coalesce(ei.m, '[]') || coalesce(nr.m, '[]')
                 || coalesce(ni.m, '[]') AS m
    FROM targets t
    LEFT JOIN LATERAL (
        SELECT jsonb_agg(jsonb_build_object('kind', 'exact', 'match', 'record', 'id', x.id,
                                            'score', 1.0) ORDER BY x.id) AS m
        FROM (
            (SELECT r.id FROM records r WHERE t.key IS NOT NULL AND r.collection = t.collection
                AND r.key = t.key AND r.content_hash = t.content_hash)
            UNION ALL
            (SELECT r.id FROM records r WHERE t.key IS NULL AND r.collection = t.collection
                AND r.content_hash = t.content_hash ORDER BY r.id LIMIT {MAX_MARKERS})
        ) x
    ) er ON true
    LEFT JOIN LATERAL (
        SELECT jsonb_agg(jsonb_build_object('kind', 'exact', 'match', 'item', 'id', x.id,
                                            'score', 1.0) ORDER BY x.id) AS m
        FROM (SELECT o.id FROM items o WHERE o.type = t.type
                AND o.content_hash = t.content_hash AND o.id <> t.id
                AND o.status NOT IN ('merged', 'rejected')
              ORDER BY o.id LIMIT {MAX_MARKERS}) x
    ) ei ON true
    LEFT JOIN LATERAL (
        SELECT jsonb_agg(jsonb_build_object('kind', 'near', 'match', 'record', 'id', x.id,
                                            'score', round(x.score::numeric, 3))
                         ORDER BY x.score DESC, x.id) AS m
        FROM (
            SELECT c.id, max(c.score) AS score FROM (
                SELECT r.id, similarity(o.title, t.title) AS score
                FROM items o JOIN records r ON r.id = o.record_id
                WHERE t.title IS NOT NULL AND t.title <> '' AND o.status = 'merged'
                  AND o.collection = t.collection
                  AND o.title % t.title AND similarity(o.title, t.title) > $3::real
                  AND r.content_hash IS DISTINCT FROM t.content_hash
                UNION ALL
                SELECT r.id, similarity(r.data ->> $2::text, t.title)
                FROM records r
                WHERE $2::text IS NOT NULL AND t.title IS NOT NULL AND t.key IS NOT NULL
                  AND r.collection = t.collection AND r.key = t.key
                  AND r.content_hash IS DISTINCT FROM t.content_hash
                  AND similarity(r.data ->> $2::text, t.title) > $3::real
            ) c
            GROUP BY c.id ORDER BY score DESC, c.id LIMIT {MAX_MARKERS}
        ) x
    ) nr ON true
    LEFT JOIN LATERAL (
        SELECT jsonb_agg(jsonb_build_object('kind', 'near', 'match', 'item', 'id', x.id,
                                            'score', round(x.score::numeric, 3))
                         ORDER BY x.score DESC, x.id) AS m
        FROM (SELECT o.id, similarity(o.title, t.title) AS score
              FROM items o
              WHERE t.title IS NOT NULL AND t.title <> '' AND o.type = t.type
                AND o.id <> t.id AND o.status NOT IN ('merged', 'rejected')
                AND o.content_hash IS DISTINCT FROM t.content_hash
                AND o.title % t.title AND similarity(o.title, t.title) > $3::real
              ORDER BY score DESC, o.id LIMIT {MAX_MARKERS}) x
    ) ni ON true
)
UPDATE items i SET duplicates = markers.m FROM markers WHERE i.id = markers.id
"""


@dataclass(slots=True)
class _Staged:
    row_number: int
    external_id: str | None
    key: str | None
    title: str | None
    data: str
    original: str
    hash: str


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json_dumps(value).strip('"')
    return text if text.strip() else None


def prepare(row: ChunkRow, definition: ImporterDefinition) -> _Staged:
    assert row.data is not None
    title_field, external_field = definition.title_field, definition.external_id_field
    return _Staged(
        row_number=row.row_number,
        external_id=_text(row.data.get(external_field)) if external_field else None,
        key=row.key,
        title=_text(row.data.get(title_field)) if title_field else None,
        data=json_dumps(row.data),
        original=json_dumps(row.original),
        hash=content_hash(row.data),
    )


def _arrays(rows: Sequence[_Staged]) -> list[list[Any]]:
    return [
        [r.row_number for r in rows],
        [r.external_id for r in rows],
        [r.key for r in rows],
        [r.title for r in rows],
        [r.data for r in rows],
        [r.original for r in rows],
        [r.hash for r in rows],
    ]


async def set_similarity_threshold(conn: asyncpg.Connection, threshold: float) -> None:
    """``%`` (the operator the trigram index serves) uses this threshold, for this transaction.
    JIT goes off too: the marker query's estimates invite it, and compiling it costs more than
    the index lookups it would speed up."""
    await conn.execute(
        "SELECT set_config('pg_trgm.similarity_threshold', $1, true), "
        "set_config('jit', 'off', true)",
        str(threshold),
    )


async def refresh_markers(
    conn: asyncpg.Connection,
    item_ids: Sequence[int],
    *,
    title_field: str | None,
    threshold: float,
) -> None:
    """Recompute the duplicate markers of ``item_ids`` (all of one importer)."""
    if not item_ids:
        return
    await set_similarity_threshold(conn, threshold)
    await conn.execute(REFRESH_MARKERS, list(item_ids), title_field, threshold)


async def record_events(
    conn: asyncpg.Connection,
    events: Sequence[tuple[int, str | None, str, str | None]],
    *,
    user_id: int | None,
    token_id: int | None,
) -> None:
    """Append transitions ``(item_id, from, to, note)`` to the items' history."""
    if not events:
        return
    await conn.execute(
        INSERT_EVENTS,
        user_id,
        token_id,
        [e[0] for e in events],
        [e[1] for e in events],
        [e[2] for e in events],
        [e[3] for e in events],
    )


def _default_threshold() -> float:
    from app.core.config import get_settings

    return get_settings().near_duplicate_threshold


async def stage_rows(
    conn: asyncpg.Connection,
    *,
    run_id: int,
    definition: ImporterDefinition,
    source_id: int | None,
    rows: Sequence[ChunkRow],
    threshold: float | None = None,
) -> None:
    """Stage ``rows`` as ``pending`` items, inside the chunk's transaction."""
    if not rows:
        return
    run = await conn.fetchrow(
        "SELECT importer_id, user_id, token_id FROM runs WHERE id = $1", run_id
    )
    importer_id = run["importer_id"] if run else None
    user_id, token_id = (run["user_id"], run["token_id"]) if run else (None, None)

    # Within one chunk the last row of an external id wins, as it would pushed one by one
    # (and one statement may not update a row twice).
    keyed: dict[str, _Staged] = {}
    fresh: list[_Staged] = []
    for row in rows:
        staged = prepare(row, definition)
        if staged.external_id is None:
            fresh.append(staged)
        else:
            keyed.pop(staged.external_id, None)
            keyed[staged.external_id] = staged

    head = (definition.slug, source_id, importer_id, run_id, definition.collection)
    events: list[tuple[int, str | None, str, str | None]] = []
    ids: list[int] = []
    staged_note = f"Staged by run {run_id}."
    if fresh:
        inserted = await conn.fetch(INSERT_ITEMS, *head, *_arrays(fresh))
        ids += [r["id"] for r in inserted]
        events += [(r["id"], None, "pending", staged_note) for r in inserted]
    if keyed:
        batch = list(keyed.values())
        # The open items these rows will update, locked, to tell what each update changed.
        before = {
            r["external_id"]: r
            for r in await conn.fetch(
                "SELECT id, external_id, status, content_hash FROM items "
                "WHERE coalesce(source_id, 0) = coalesce($1::int, 0) AND type = $2 "
                "AND external_id = ANY($3::text[]) AND status NOT IN ('merged', 'rejected') "
                "FOR UPDATE",
                source_id,
                definition.slug,
                list(keyed),
            )
        }
        for r in await conn.fetch(UPSERT_ITEMS, *head, *_arrays(batch)):
            ids.append(r["id"])
            old = before.get(r["external_id"])
            if old is None or old["id"] != r["id"]:
                events.append((r["id"], None, "pending", staged_note))
            elif old["content_hash"] != r["content_hash"]:
                events.append(
                    (r["id"], old["status"], "pending", f"Updated by run {run_id}: new content.")
                )
    await record_events(conn, events, user_id=user_id, token_id=token_id)
    await refresh_markers(
        conn,
        ids,
        title_field=definition.title_field,
        threshold=_default_threshold() if threshold is None else threshold,
    )
