"""The splitter's byte-range cuts (app.pipeline.splitter `_Cuts`): an importer that leaves
chunk sizes to the service against the same file split row by row (`chunk_size` below
`frames.MIN_ROWS`), through a real worker. The file has what a cut can get wrong: quoted
fields with separators, doubled quotes and line breaks, CRLF, a stray quote inside a field
(its block is read the per-row way), a blank line, and keys repeated across chunks."""

import csv
import io
import itertools
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.pipeline import frames, splitter
from app.pipeline.readers.csv_reader import CsvSlice, parse_slice
from tests.conftest import CreateImporter, RunWorker, Upload
from tests.pipeline.test_columnar_runs import (
    FIELDS,
    applied_columnar,
    comparable_records,
    failed_rows,
    repeated_rows,
    settled,
    shown,
    users_csv,
)
from tests.pipeline.test_frames import CELLS
from tests.pipeline.test_pipeline import row_log, run_of
from tests.records.stored import stored

API = "/api/v1/ingest"
BLOCK = 64 * 1024


def tricky_csv(seed: int, crlf: bool) -> str:
    """`users_csv` with a row holding a stray quote (`5'10"`, literal to the csv reader) and
    a blank line in the middle, in LF or CRLF."""
    lines = users_csv(seed).split("\n")
    lines.insert(len(lines) // 3, "stray@example.com,Tall 5'10\" man,40,1,2024-01-01,a,yes,x")
    lines.insert(len(lines) * 2 // 3, "")
    return ("\r\n" if crlf else "\n").join(lines)


async def ledger(factory: async_sessionmaker[AsyncSession], run_id: int) -> list[Any]:
    async with factory() as session:
        return list(
            await session.execute(
                text(
                    "SELECT first_row, row_count, byte_start, byte_end FROM run_chunks "
                    "WHERE run_id = :id ORDER BY index"
                ),
                {"id": run_id},
            )
        )


async def split_finished(
    client: httpx.AsyncClient, headers: dict[str, str], run_id: int
) -> dict[str, Any]:
    response = await client.get(
        f"{API}/{run_id}/events", params={"type": "split_finished"}, headers=headers
    )
    assert response.status_code == 200, response.text
    (event,) = response.json()["data"]
    data: dict[str, Any] = event["data"]
    return data


@pytest.mark.parametrize(
    ("on_duplicate", "crlf"), [("update", False), ("skip", True), ("fail", False)]
)
async def test_chunks_cut_from_blocks_answer_as_rows_split_one_by_one(
    on_duplicate: str,
    crlf: bool,
    monkeypatch: pytest.MonkeyPatch,
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    # Blocks of 64 KiB (about 1100 rows): the file makes a few, one with the stray quote, one
    # with the blank line; those two are read row by row.
    monkeypatch.setattr(splitter, "CHUNK_BYTES", BLOCK)
    common = {"key": ["email"], "fields": FIELDS, "on_duplicate": on_duplicate}
    await create_importer(slug="auto", **common)
    await create_importer(slug="per-row", chunk_size=frames.MIN_ROWS - 1, **common)
    content = tricky_csv(7, crlf)
    runs = []
    for slug in ("auto", "per-row"):
        response = await upload(slug, content)
        assert response.status_code == 202, response.text
        runs.append(response.json()["data"]["id"])
    await run_worker()

    auto, per_row = [await run_of(session_factory, run) for run in runs]
    assert auto["status"] == per_row["status"] == "completed_with_errors"
    assert auto["progress"] == per_row["progress"]
    assert auto["progress"]["total"] == len(list(csv.DictReader(io.StringIO(content, newline=""))))
    repeated = repeated_rows(content) if on_duplicate == "update" else set()
    assert settled(auto["summary"], repeated) == settled(per_row["summary"], repeated)
    auto_rows, per_row_rows = [await row_log(session_factory, run) for run in runs]
    assert [shown(row, repeated) for row in auto_rows] == [
        shown(row, repeated) for row in per_row_rows
    ]
    assert await failed_rows(client, admin_headers, runs[0]) == await failed_rows(
        client, admin_headers, runs[1]
    )
    assert comparable_records(await stored(session_factory, "auto")) == comparable_records(
        await stored(session_factory, "per_row")
    )

    # The ranges follow one another, row numbers too; all but the two flawed blocks' chunks
    # were cut from blocks.
    chunks = await ledger(session_factory, runs[0])
    for before, after in itertools.pairwise(chunks):
        assert after.byte_start == before.byte_end
        assert after.first_row == before.first_row + before.row_count
    assert sum(c.row_count for c in chunks) == auto["progress"]["total"]
    finished = await split_finished(client, admin_headers, runs[0])
    assert finished["chunks"] == len(chunks) >= 5
    assert finished["blocks"] == len(chunks) - 2


async def test_a_chunk_size_is_an_upper_bound_the_cuts_keep_exactly(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(slug="capped", key=["email"], fields=FIELDS, chunk_size=2600)
    content = users_csv(3)
    response = await upload("capped", content)
    assert response.status_code == 202, response.text
    run_id = response.json()["data"]["id"]
    await run_worker()
    run = await run_of(session_factory, run_id)
    assert run["status"] == "completed_with_errors"
    chunks = await ledger(session_factory, run_id)
    total = run["progress"]["total"]
    assert [c.row_count for c in chunks] == [2600] * (total // 2600) + [total % 2600]
    assert (await split_finished(client, admin_headers, run_id))["blocks"] == len(chunks)
    assert await applied_columnar(client, admin_headers, run_id) == [True, True, False]


# Rows of a few cells that CSV quoting must get right, now and then with a flaw.
@st.composite
def csv_file(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    rows = draw(st.lists(st.lists(CELLS, min_size=3, max_size=3), min_size=1, max_size=60))
    out = io.StringIO()
    csv.writer(out, lineterminator=draw(st.sampled_from(["\n", "\r\n"]))).writerows(rows)
    body = out.getvalue()
    flaw = draw(st.sampled_from(["", "", "", 'a"b,c,d\n', "\n", '"open', "x\n"]))
    at = draw(st.integers(0, len(body)))
    return (body[:at] + flaw + body[at:]).encode(), ["c0", "c1", "c2"]


@settings(max_examples=300, deadline=None)
@given(case=csv_file(), target=st.integers(8, 200))
def test_a_block_the_cuts_take_ends_where_a_row_ends_and_holds_the_csv_readers_rows(
    case: tuple[bytes, list[str]], target: int
) -> None:
    data, columns = case
    whole = parse_slice(
        data, columns, CsvSlice("utf-8", ",", 0, len(data)), at_end=True, breaks_before=lambda: 0
    )
    cuts = splitter._Cuts(io.BytesIO(data), ",", 10_000)
    cuts.target = target
    block = cuts.block(0)
    if not cuts.well_quoted(block):
        return
    frame = frames.read(block, columns, ",", "utf-8")
    if frame is None:
        return
    # The rows of the block are the file's first rows, as the csv reader reads them...
    assert [list(row) for row in frame.rows()] == [cells for cells, _ in whole[: frame.height]]
    # ...and the rest of the file, read from the cut, holds the rest of them.
    rest = parse_slice(
        data[len(block) :],
        columns,
        CsvSlice("utf-8", ",", len(block), len(data)),
        at_end=True,
        breaks_before=lambda: block.count(b"\n"),
    )
    assert rest == whole[frame.height :]


@pytest.mark.parametrize(
    ("block", "taken"),
    [
        (b'a,"b,c"\n"d""e",f\n', True),
        (b'a,"b\nc",d\n', True),
        (b"a,b\n", True),
        (b"a,5'10\",c\n", False),  # a quote inside an unquoted field is text
        (b'a,"b" c,d\n', False),  # text after a closing quote
        (b'a, "b",c\n', False),  # a space before the opening quote
    ],
)
def test_the_cuts_take_a_block_only_where_every_quote_is_a_quoted_fields(
    block: bytes, taken: bool
) -> None:
    assert splitter._Cuts(io.BytesIO(b""), ",", 10).well_quoted(block) is taken


async def test_a_file_with_quotes_inside_unquoted_fields_is_split_row_by_row_and_right(
    monkeypatch: pytest.MonkeyPatch,
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    monkeypatch.setattr(splitter, "CHUNK_BYTES", BLOCK)
    fields = {"email": {"type": "email"}, "height": {"type": "string"}}
    await create_importer(slug="heights", key=["email"], fields=fields)
    rows = 6000  # about 40 bytes a row: a few blocks, each with quotes inside fields
    content = "email,height\n" + "".join(f"u{n}@example.com,5'{n % 12}\"\n" for n in range(rows))
    response = await upload("heights", content)
    assert response.status_code == 202, response.text
    run_id = response.json()["data"]["id"]
    await run_worker()
    run = await run_of(session_factory, run_id)
    assert run["status"] == "completed"
    assert run["progress"]["total"] == run["progress"]["successful"] == rows
    finished = await split_finished(client, admin_headers, run_id)
    assert finished["blocks"] == 0
    assert len(await ledger(session_factory, run_id)) == finished["chunks"]
    records = await stored(session_factory, "heights")
    assert records["u13@example.com"]["data"]["height"] == "5'1\""


async def test_blank_lines_ending_a_file_leave_its_last_block_to_the_cuts(
    monkeypatch: pytest.MonkeyPatch,
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    monkeypatch.setattr(splitter, "CHUNK_BYTES", BLOCK)
    await create_importer(slug="auto", key=["email"], fields=FIELDS)
    content = users_csv(5) + "\n\r\n\n"
    response = await upload("auto", content)
    assert response.status_code == 202, response.text
    run_id = response.json()["data"]["id"]
    await run_worker()
    run = await run_of(session_factory, run_id)
    assert run["progress"]["total"] == len(list(csv.DictReader(io.StringIO(content, newline=""))))
    finished = await split_finished(client, admin_headers, run_id)
    assert finished["blocks"] == finished["chunks"] == len(await ledger(session_factory, run_id))
