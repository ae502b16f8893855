"""A run's row log, as the rows API shows it: every row in row order, with its status and
outcome.

A failed row keeps an entry of its own in `run_rows`, with its original data and errors
(retries, the failed-rows CSV and the error summary read them). The other rows of a CSV
chunk are recorded in one string on the chunk, `run_chunks.outcomes`: a code per row, in row
order, `-` for a row with an entry of its own. That costs a chunk one column instead of one
`run_rows` entry per row; the rows' data is read back from the run's input file, and their
`id` is null (no entry). Rows of other chunks (payloads: XLSX, JSON, retries) and of dry
runs keep an entry each, with their data.
"""

from collections.abc import Mapping
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.params import INT4_MAX

# Outcome -> its code in `run_chunks.outcomes`.
CODES = {"created": "c", "updated": "u", "unchanged": "n", "staged": "t", "skipped": "s"}
OWN_ENTRY = "-"
OUTCOMES = {code: outcome for outcome, code in CODES.items()}
# The codes of each status filter (None: every status).
_STATUS_CODES = {None: "cunts", "success": "cunt", "skipped": "s", "failed": ""}


def encode(first_row: int, row_count: int, codes: Mapping[int, str]) -> str:
    """A chunk's outcomes: the code of each of its rows by row number, `-` for the others."""
    return "".join(
        codes.get(number, OWN_ENTRY) for number in range(first_row, first_row + row_count)
    )


def _entry(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "row_number": row.row_number,
        "status": row.status,
        "outcome": row.outcome,
        "data": row.data,
        "errors": row.errors,
    }


def _coded(row_number: int, code: str) -> dict[str, Any]:
    return {
        "id": None,
        "row_number": row_number,
        "status": "skipped" if code == "s" else "success",
        "outcome": OUTCOMES[code],
        "data": None,
        "errors": None,
    }


_ENTRY_COLUMNS = "id, row_number, status, outcome, data, errors"
_STATUS = "(CAST(:status AS text) IS NULL OR status = :status)"


async def page(
    session: AsyncSession, run_id: int, status: str | None, offset: int, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """The run's rows at positions [offset, offset + limit) in row order, and how many rows
    there are (both of `status` only, when given)."""
    params = {"id": run_id, "status": status, "codes": _STATUS_CODES[status]}
    entries = int(
        await session.scalar(
            text(f"SELECT count(*) FROM run_rows WHERE run_id = :id AND {_STATUS}"), params
        )
        or 0
    )
    # Per coded chunk, in row order: its coded rows and its rows with entries (of `status`).
    chunks = (
        await session.execute(
            text(
                "SELECT first_row, row_count, length(outcomes) - "
                "length(translate(outcomes, :codes, '')) AS coded, "
                f"(SELECT count(*) FROM run_rows r WHERE r.run_id = c.run_id AND {_STATUS} "
                "AND r.row_number >= c.first_row AND r.row_number < c.first_row + c.row_count"
                ") AS entries FROM run_chunks c WHERE c.run_id = :id AND c.outcomes IS NOT NULL "
                "ORDER BY first_row"
            ),
            params,
        )
    ).all()
    total = entries + sum(chunk.coded for chunk in chunks)
    if not chunks or entries > sum(chunk.entries for chunk in chunks):
        # Entries outside the coded chunks (every row has one, or a chunk was logged row by
        # row): merge over all rows.
        return await _window(session, params, 0, INT4_MAX, offset, limit), total
    # Only the chunks that hold the page are read.
    before, lo, hi, skip = 0, None, 0, 0
    for chunk in chunks:
        size = chunk.coded + chunk.entries
        if lo is None and before + size > offset:
            lo, skip = chunk.first_row, offset - before
        if lo is not None:
            hi = chunk.first_row + chunk.row_count
            if before + size >= offset + limit:
                break
        before += size
    if lo is None:  # past the last row
        return [], total
    return await _window(session, params, lo, hi, skip, limit), total


async def _window(
    session: AsyncSession, params: dict[str, Any], lo: int, hi: int, offset: int, limit: int
) -> list[dict[str, Any]]:
    """Of the rows numbered in [lo, hi), entries and coded rows merged in row order, those at
    [offset, offset + limit)."""
    found = await session.execute(
        text(
            f"SELECT {_ENTRY_COLUMNS}, NULL AS code FROM run_rows "
            f"WHERE run_id = :id AND {_STATUS} AND row_number >= :lo AND row_number < :hi "
            "UNION ALL "
            "SELECT NULL, c.first_row + o.i - 1, NULL, NULL, NULL, NULL, o.code "
            "FROM run_chunks c CROSS JOIN LATERAL "
            "unnest(string_to_array(c.outcomes, NULL)) WITH ORDINALITY AS o(code, i) "
            "WHERE c.run_id = :id AND c.outcomes IS NOT NULL AND c.first_row < :hi "
            "AND c.first_row + c.row_count > :lo AND strpos(:codes, o.code) > 0 "
            "ORDER BY row_number LIMIT :limit OFFSET :offset"
        ),
        {**params, "lo": lo, "hi": hi, "limit": limit, "offset": offset},
    )
    return [_coded(row.row_number, row.code) if row.code else _entry(row) for row in found]
