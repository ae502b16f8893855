"""Stage valid rows as review items (importers or sources with manual approval).

Runs inside the chunk's transaction on its asyncpg connection, so staging commits (or not)
with the chunk's row log and counters: a chunk delivered twice stages its rows once.

- An item's identity is its key (the record it becomes) or, for a keyless item, its
  ``(source, type, external_id)``; one item per identity is open (the partial unique indexes
  on items). A row whose identity has an open item updates that item instead of adding one:
  new content is a resubmission, which sends the item back to ``pending`` (a curator's
  approval or change request was about the old content) and is recorded as a transition;
  identical content leaves the item's status, history and version (``updated_at``) as they
  were. A merged or rejected item is closed: the row adds a new item.
- Every staged item gets duplicate markers (``refresh_markers``).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import asyncpg

from app.core.db import json_dumps
from app.importers.schemas import ImporterDefinition
from app.pipeline.chunks import ChunkRow
from app.records.store import columns_of, content_hash
from app.records.tables import quoted, table_name
from app.webhooks import outbox

# Open items: the ones a new push of the same identity updates (the partial unique indexes).
CLOSED_STATUSES = ("merged", "rejected")
_OPEN = f"status NOT IN ({', '.join(repr(status) for status in CLOSED_STATUSES)})"
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

# Per identity: its open items, locked (the lookup), and the insert of the rows none has. The
# insert does nothing for a row whose item another chunk added after the lookup (it waits
# for that chunk to commit), so two chunks never both add one; the next lookup finds it.
OPEN_BY_KEY = (
    "SELECT id, key AS identity, status, content_hash FROM items "
    f"WHERE type = $1 AND key = ANY($2::text[]) AND {_OPEN} ORDER BY id FOR UPDATE"
)
INSERT_BY_KEY = (
    f"INSERT INTO items ({_COLUMNS}) {_UNNEST} "
    f"ON CONFLICT (type, key) WHERE key IS NOT NULL AND {_OPEN} DO NOTHING "
    "RETURNING id, key AS identity"
)
OPEN_BY_EXTERNAL_ID = (
    "SELECT id, external_id AS identity, status, content_hash FROM items "
    "WHERE coalesce(source_id, 0) = coalesce($3::int, 0) AND type = $1 AND key IS NULL "
    f"AND external_id = ANY($2::text[]) AND {_OPEN} ORDER BY id FOR UPDATE"
)
INSERT_BY_EXTERNAL_ID = (
    f"INSERT INTO items ({_COLUMNS}) {_UNNEST} "
    "ON CONFLICT (coalesce(source_id, 0), type, external_id) "
    f"WHERE key IS NULL AND external_id IS NOT NULL AND {_OPEN} DO NOTHING "
    "RETURNING id, external_id AS identity"
)

# The locked open items take their rows. New content sends an item back to review and bumps
# its version; identical content only moves the item to the row that sent it again.
UPDATE_ITEMS = """
UPDATE items AS i SET
    status = CASE WHEN i.content_hash IS DISTINCT FROM t.hash THEN 'pending' ELSE i.status END,
    updated_at = CASE WHEN i.content_hash IS DISTINCT FROM t.hash
                      THEN clock_timestamp() ELSE i.updated_at END,
    run_id = $1::int, importer_id = $2::int, collection = $3::text,
    row_number = t.row_number, external_id = t.external_id, title = t.title, data = t.data,
    original = t.original, content_hash = t.hash
FROM unnest($4::bigint[], $5::int[], $6::text[], $7::text[], $8::jsonb[], $9::json[],
            $10::text[]) AS t(id, row_number, external_id, title, data, original, hash)
-- A later push wins, and within one push a later row, whatever order chunks commit in.
WHERE i.id = t.id
  AND (coalesce(i.run_id, 0), coalesce(i.row_number, 0)) < ($1::int, t.row_number)
RETURNING i.id
"""

INSERT_EVENTS = """
INSERT INTO item_events (item_id, actor_user_id, actor_token_id, from_status, to_status, note)
SELECT t.item_id, $1, $2, t.from_status, t.to_status, t.note
FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[])
    AS t(item_id, from_status, to_status, note)
"""


# One statement per batch: exact markers (same content hash as a record of the collection or
# an open item of the type) and near ones (trigram similarity of titles above the threshold:
# the title column of the collection's table, and the titles of open items, each served by
# its trigram index).
@cache
def _markers_sql(table: str | None, title: str | None) -> str:
    """The marker refresh for items of one collection: `table` is its table (None: it has
    none, so no records), `title` the quoted text column that holds record titles (None:
    records are not compared by title)."""
    nothing = "SELECT NULL::bigint AS id, NULL::real AS score WHERE false"
    exact_records = (
        f"""(SELECT r._id AS id FROM {table} r WHERE t.key IS NOT NULL AND r._key = t.key
                AND r._content_hash = t.content_hash)
            UNION ALL
            (SELECT r._id FROM {table} r WHERE t.key IS NULL
                AND r._content_hash = t.content_hash ORDER BY r._id LIMIT {MAX_MARKERS})"""
        if table is not None
        else nothing
    )
    near_records = (
        f"""SELECT r._id AS id, similarity(r.{title}, t.title) AS score FROM {table} r
              WHERE t.title IS NOT NULL AND t.title <> '' AND r.{title} % t.title
                AND similarity(r.{title}, t.title) > $2::real
                AND r._content_hash IS DISTINCT FROM t.content_hash
              ORDER BY score DESC, r._id LIMIT {MAX_MARKERS}"""
        if table is not None and title is not None
        else nothing
    )
    return f"""
WITH targets AS (
    SELECT id, type, key, title, content_hash FROM items WHERE id = ANY($1::bigint[])
), markers AS (
    SELECT t.id, coalesce(er.m, '[]') || coalesce(ei.m, '[]') || coalesce(nr.m, '[]')
                 || coalesce(ni.m, '[]') AS m
    FROM targets t
    LEFT JOIN LATERAL (
        SELECT jsonb_agg(jsonb_build_object('kind', 'exact', 'match', 'record', 'id', x.id,
                                            'score', 1.0) ORDER BY x.id) AS m
        FROM ({exact_records}) x
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
        FROM ({near_records}) x
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
                AND o.title % t.title AND similarity(o.title, t.title) > $2::real
              ORDER BY score DESC, o.id LIMIT {MAX_MARKERS}) x
    ) ni ON true
)
UPDATE items i SET duplicates = markers.m FROM markers WHERE i.id = markers.id
"""


# A transition to record: (item id, from status, to status, note).
Event = tuple[int, str | None, str, str | None]


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


def _arrays(rows: Sequence[_Staged], *, with_key: bool = True) -> list[list[Any]]:
    return [
        [r.row_number for r in rows],
        [r.external_id for r in rows],
        *([[r.key for r in rows]] if with_key else []),
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
    collection: str,
    title_field: str | None,
    threshold: float,
) -> None:
    """Recompute the duplicate markers of ``item_ids`` (all of one importer)."""
    if not item_ids:
        return
    columns = await columns_of(conn, collection)
    if columns is None:
        sql = _markers_sql(None, None)
    else:
        title = None
        if title_field is not None and columns.get(title_field) == "text":
            title = quoted(title_field)
        sql = _markers_sql(table_name(collection), title)
    await set_similarity_threshold(conn, threshold)
    await conn.execute(sql, list(item_ids), threshold)


async def record_events(
    conn: asyncpg.Connection,
    events: Sequence[Event],
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


async def _stage_by_identity(
    conn: asyncpg.Connection,
    rows: dict[str, _Staged],
    *,
    by_key: bool,
    head: tuple[str, int | None, int | None, int, str],
) -> tuple[list[int], list[Event]]:
    """Stage ``rows`` (by identity: their key, or ``by_key`` False their external id): each
    updates its identity's open item, or adds one."""
    slug, source_id, importer_id, run_id, collection = head
    find, insert = (
        (OPEN_BY_KEY, INSERT_BY_KEY) if by_key else (OPEN_BY_EXTERNAL_ID, INSERT_BY_EXTERNAL_ID)
    )
    scope = () if by_key else (source_id,)
    ids: list[int] = []
    events: list[Event] = []
    left = dict(rows)
    # A row the insert skipped met an item committed since the lookup: the next round
    # updates it. Each round places every row another chunk does not race it for again.
    while left:
        found = await conn.fetch(find, slug, sorted(left), *scope)
        if found:
            batch = [left.pop(item["identity"]) for item in found]
            updated = {
                r["id"]
                for r in await conn.fetch(
                    UPDATE_ITEMS,
                    run_id,
                    importer_id,
                    collection,
                    [item["id"] for item in found],
                    *_arrays(batch, with_key=False),
                )
            }
            for item, staged in zip(found, batch, strict=True):
                if item["id"] not in updated:  # it holds a later row already
                    continue
                ids.append(item["id"])
                if item["content_hash"] != staged.hash:
                    note = f"Resubmitted by run {run_id}."
                    events.append((item["id"], item["status"], "pending", note))
        if left:
            # In identity order, as every chunk inserts: two chunks adding the same items
            # wait for one another in one order, never in a cycle.
            batch = [left[identity] for identity in sorted(left)]
            for r in await conn.fetch(insert, *head, *_arrays(batch)):
                del left[r["identity"]]
                ids.append(r["id"])
                events.append((r["id"], None, "pending", f"Staged by run {run_id}."))
    return ids, events


async def foreign_open_keys(
    conn: asyncpg.Connection, type_: str, keys: list[str], source_id: int
) -> set[str]:
    """Of `keys`, those whose open item of `type_` belongs to a source other than
    `source_id` (or to none): a run of that source may not resubmit them. A key holding
    NUL names no item (its row fails on it)."""
    keys = [key for key in keys if "\x00" not in key]
    if not keys:
        return set()
    rows = await conn.fetch(
        f"SELECT key FROM items WHERE type = $1 AND key = ANY($2::text[]) AND {_OPEN} "
        "AND source_id IS DISTINCT FROM $3::int",
        type_,
        keys,
        source_id,
    )
    return {row["key"] for row in rows}


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

    # Within one chunk the last row of an identity wins, as it would pushed one by one.
    by_key: dict[str, _Staged] = {}
    by_external_id: dict[str, _Staged] = {}
    fresh: list[_Staged] = []
    for row in rows:
        staged = prepare(row, definition)
        if staged.key is not None:
            by_key[staged.key] = staged
        elif staged.external_id is not None:
            by_external_id[staged.external_id] = staged
        else:
            fresh.append(staged)

    head = (definition.slug, source_id, importer_id, run_id, definition.collection)
    ids: list[int] = []
    events: list[Event] = []
    if fresh:
        inserted = await conn.fetch(INSERT_ITEMS, *head, *_arrays(fresh))
        ids += [r["id"] for r in inserted]
        events += [(r["id"], None, "pending", f"Staged by run {run_id}.") for r in inserted]
    for identified, keyed in ((by_key, True), (by_external_id, False)):
        if identified:
            staged_ids, staged_events = await _stage_by_identity(
                conn, identified, by_key=keyed, head=head
            )
            ids += staged_ids
            events += staged_events
    await record_events(conn, events, user_id=user_id, token_id=token_id)
    await refresh_markers(
        conn,
        ids,
        collection=definition.collection,
        title_field=definition.title_field,
        threshold=_default_threshold() if threshold is None else threshold,
    )
    await outbox.items_staged(conn, [event[0] for event in events])
