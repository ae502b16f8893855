"""Runs whose chunks go the columnar way (app.pipeline.frames) against the same runs applied
per row: one CSV uploaded to two importers that differ only in their collection and chunk
size (the columnar one's chunks are past `frames.MIN_ROWS`, the other's below), through a
real worker; counters, summaries, the rows API, the failed rows and the records must match.
Then the same for an unchanged re-upload and one that changes rows."""

import csv
import io
import random
from collections import Counter
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.pipeline import frames
from tests.conftest import CreateImporter, RunWorker, Upload
from tests.pipeline.test_pipeline import row_log, run_of
from tests.records.stored import stored

API = "/api/v1/ingest"
ROWS = frames.MIN_ROWS * 2 + 321
FIELDS: dict[str, Any] = {
    "email": {"type": "email", "required": True, "transform": ["trim", "lower"]},
    "name": {"type": "string", "required": True, "min_length": 2},
    "age": {"type": "integer", "min": 0, "max": 150, "null_if": ["NA"]},
    "score": {"type": "number"},
    "joined": {"type": "date", "format": "%Y-%m-%d"},
    "tags": {"type": "list", "separator": ";"},
    "active": {"type": "boolean"},
    "note": {"type": "string", "null_if": [""]},
}


def users_csv(seed: int, changed: bool = False) -> str:
    """Rows of every kind: plain, odd (spaces, Unicode, quotes, a formula escape), invalid,
    and keys repeated within a chunk and across chunks."""
    pick = random.Random(seed)
    lines = ["email,name,age,score,joined,tags,active,note"]
    for n in range(ROWS):
        who = pick.randrange(ROWS * 9 // 10)  # about one row in ten repeats a key
        email = f"user{who}@example.com" if n % 97 else f" User{who}@Example.COM "
        name = pick.choice(["Ada", "Grace Hopper", "Zoë", "'=cmd", "X", '"Quoted", name'])
        age = pick.choice(["36", "NA", "", "151", "4.0", "x", " 42 "])
        score = pick.choice(["1.5", "2", "-0", "1e3", "", "3.25", "nan"])
        joined = pick.choice(["2024-01-05", "2024-02-30", "", "2024-1-5"])
        tags = pick.choice(["a;b", "", " x ; y ;", 'quote";b'])
        active = pick.choice(["yes", "no", "TRUE", "0", "maybe", ""])
        note = f"note {n}" if changed and n % 3 == 0 else pick.choice(["", "plain", "line\nbreak"])
        cells = [email, name, age, score, joined, tags, active, note]
        lines.append(
            ",".join(
                f'"{c.replace(chr(34), chr(34) * 2)}"' if any(x in c for x in ',"\n') else c
                for c in cells
            )
        )
    return "\n".join(lines) + "\n"


def repeated_rows(content: str) -> set[int]:
    """The row numbers whose key (the email, trimmed and lowered) another row has too."""
    rows = list(csv.DictReader(io.StringIO(content, newline="")))
    keys = Counter(row["email"].strip().lower() for row in rows)
    return {n for n, row in enumerate(rows, 1) if keys[row["email"].strip().lower()] > 1}


def settled(summary: dict[str, int], repeated: set[int]) -> dict[str, int]:
    """The summary, with the outcomes of written rows as one sum where timing splits them."""
    if not repeated:
        return summary
    written = sum(summary.pop(outcome) for outcome in ("created", "updated", "unchanged"))
    return {**summary, "written": written}


def shown(row: dict[str, Any], repeated: set[int]) -> dict[str, Any]:
    """A rows API entry without its id (columnar rows have no entry of their own), and
    without its outcome where timing decides it."""
    entry = {**row, "id": None}
    if row["row_number"] in repeated and row["status"] == "success":
        entry["outcome"] = "written"
    return entry


def comparable_records(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        key: (record["data"], record["content_hash"], record["source_id"])
        for key, record in records.items()
    }


async def applied(
    client: httpx.AsyncClient, headers: dict[str, str], run_id: int
) -> list[dict[str, Any]]:
    """The data of the run's chunk_applied events, in chunk index order."""
    response = await client.get(
        f"{API}/{run_id}/events", params={"type": "chunk_applied", "per_page": 100}, headers=headers
    )
    assert response.status_code == 200, response.text
    return sorted((event["data"] for event in response.json()["data"]), key=lambda d: d["index"])


async def applied_columnar(
    client: httpx.AsyncClient, headers: dict[str, str], run_id: int
) -> list[bool]:
    """Per chunk, in index order: whether its chunk_applied event says it went columnar."""
    return [data["columnar"] for data in await applied(client, headers, run_id)]


async def failed_rows(
    client: httpx.AsyncClient, headers: dict[str, str], run_id: int
) -> tuple[str, Any]:
    """The failed-rows CSV and the error summary."""
    download = await client.get(f"{API}/{run_id}/failed-rows/download", headers=headers)
    summary = await client.get(f"{API}/{run_id}/errors/summary", headers=headers)
    assert download.status_code == summary.status_code == 200, download.text
    return download.text, summary.json()["data"]


async def assert_runs_match(
    contents: list[str],
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    headers: dict[str, str],
    session_factory: async_sessionmaker[AsyncSession],
    *,
    timed: bool,
    dry_run: bool = False,
) -> int:
    """Upload each content to the importers `columnar` and `per-row` and compare the runs;
    `timed`: the outcomes of rows whose key another row has depend on commit order. Returns
    the last columnar run's id."""
    runs: list[int] = []
    for content in contents:
        runs = []
        for slug in ("columnar", "per-row"):
            response = await upload(slug, content, dry_run=dry_run)
            assert response.status_code == 202, response.text
            runs.append(response.json()["data"]["id"])
        await run_worker()
        # Every chunk of the columnar run but its short last one went columnar; none other.
        assert await applied_columnar(client, headers, runs[0]) == [True, True, False]
        assert not any(await applied_columnar(client, headers, runs[1]))
        columnar, per_row = [await run_of(session_factory, run) for run in runs]
        assert columnar["status"] == per_row["status"]
        assert columnar["progress"] == per_row["progress"]
        assert columnar["progress"]["failed"] > 0
        # Under `update` a key of rows in two chunks is created by whichever chunk commits
        # first and updated by the other (the later row's data wins either way): those rows'
        # outcomes, and so the split of the summary between them, depend on timing.
        repeated = repeated_rows(content) if timed else set()
        assert settled(columnar["summary"], repeated) == settled(per_row["summary"], repeated)

        columnar_rows, per_row_rows = [await row_log(session_factory, run) for run in runs]
        assert [shown(row, repeated) for row in columnar_rows] == [
            shown(row, repeated) for row in per_row_rows
        ]
        assert await failed_rows(client, headers, runs[0]) == await failed_rows(
            client, headers, runs[1]
        )
        assert comparable_records(await stored(session_factory, "columnar")) == comparable_records(
            await stored(session_factory, "per_row")
        )
    return runs[0]


@pytest.mark.parametrize("on_duplicate", ["update", "skip", "fail"])
@pytest.mark.parametrize("log_rows", ["all", "failed"])
async def test_columnar_chunks_answer_as_chunks_applied_per_row(
    on_duplicate: str,
    log_rows: str,
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    common = {
        "key": ["email"],
        "fields": FIELDS,
        "on_duplicate": on_duplicate,
        "log_rows": log_rows,
    }
    await create_importer(slug="columnar", chunk_size=frames.MIN_ROWS, **common)
    await create_importer(slug="per-row", chunk_size=frames.MIN_ROWS - 1, **common)
    contents = [users_csv(1), users_csv(1), users_csv(1, changed=True)]
    await assert_runs_match(
        contents,
        upload,
        run_worker,
        client,
        admin_headers,
        session_factory,
        timed=on_duplicate == "update",
    )


async def test_columnar_dry_runs_answer_as_dry_runs_applied_per_row(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    """A dry run logs every row and writes nothing; its later chunks see no record of the
    earlier ones'."""
    common = {"key": ["email"], "fields": FIELDS, "log_rows": "failed"}
    await create_importer(slug="columnar", chunk_size=frames.MIN_ROWS, **common)
    await create_importer(slug="per-row", chunk_size=frames.MIN_ROWS - 1, **common)
    # Records for the dry run to compare with: the first rows, imported for real.
    first = "\n".join(users_csv(1).splitlines()[: frames.MIN_ROWS // 2]) + "\n"
    for slug in ("columnar", "per-row"):
        assert (await upload(slug, first)).status_code == 202
    await run_worker()
    await assert_runs_match(
        [users_csv(1, changed=True)],
        upload,
        run_worker,
        client,
        admin_headers,
        session_factory,
        timed=False,
        dry_run=True,
    )


def unique_keys(content: str) -> str:
    """The content with row n's key `user<n>@example.com`: no key in two rows (rows of one
    key in two chunks that commit concurrently leave update_if_newer's outcome to their
    order), the same keys in every such content."""
    rows = list(csv.reader(io.StringIO(content, newline="")))
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(rows[0])
    for n, row in enumerate(rows[1:]):
        writer.writerow([f"user{n}@example.com", *row[1:]])
    return out.getvalue()


async def test_columnar_runs_of_a_source_answer_as_per_row(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    """A source's run fails the rows whose record a run of no source wrote."""
    response = await client.post(
        f"{API}/sources",
        json={"name": "feed", "source_url": "https://feed.example.test/feed"},
        headers=admin_headers,
    )
    assert response.status_code == 201, response.text
    source = response.json()["data"]["id"]
    common = {"key": ["email"], "fields": FIELDS}
    # Records of no source, in both collections: the source's runs may not change them.
    first = "\n".join(users_csv(2).splitlines()[: frames.MIN_ROWS // 3]) + "\n"
    for collection in ("columnar", "per_row"):
        slug = f"seed-{collection.replace('_', '-')}"
        await create_importer(slug=slug, collection=collection, **common)
        assert (await upload(slug, first)).status_code == 202
    await run_worker()
    await create_importer(slug="columnar", chunk_size=frames.MIN_ROWS, source_id=source, **common)
    await create_importer(
        slug="per-row", chunk_size=frames.MIN_ROWS - 1, source_id=source, **common
    )
    contents = [users_csv(1), users_csv(1, changed=True)]
    last = await assert_runs_match(
        contents, upload, run_worker, client, admin_headers, session_factory, timed=True
    )
    _, summary = await failed_rows(client, admin_headers, last)
    foreign = [e for e in summary["error_summary"] if "belongs to another source" in e["message"]]
    assert foreign, summary


async def test_columnar_update_if_newer_answers_as_per_row(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    """update_if_newer skips the rows whose age is not past their record's."""
    common = {
        "key": ["email"],
        "fields": FIELDS,
        "on_duplicate": "update_if_newer",
        "compare_field": "age",
        "log_rows": "all",
    }
    await create_importer(slug="columnar", chunk_size=frames.MIN_ROWS, **common)
    await create_importer(slug="per-row", chunk_size=frames.MIN_ROWS - 1, **common)
    contents = [unique_keys(users_csv(seed)) for seed in (3, 4, 5)]
    last = await assert_runs_match(
        contents, upload, run_worker, client, admin_headers, session_factory, timed=False
    )
    run = await run_of(session_factory, last)
    assert run["summary"]["skipped"] > 0 and run["summary"]["updated"] > 0, run["summary"]


def keyed_by_id(content: str) -> str:
    """The content with a first column `id` (`user<n>`, from the email): a key of plain text
    whose cells are the key as they stand, so that rows may be known unchanged by their
    input hash; it repeats where the emails do."""
    rows = list(csv.reader(io.StringIO(content, newline="")))
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", *rows[0]])
    for row in rows[1:]:
        writer.writerow([row[0].strip().lower().split("@")[0], *row])
    return out.getvalue()


def quoted_all(content: str) -> str:
    """The same rows in other bytes: every cell quoted."""
    rows = list(csv.reader(io.StringIO(content, newline="")))
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL).writerows(rows)
    return out.getvalue()


async def test_rows_known_unchanged_by_their_input_answer_as_per_row(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    """A re-upload of the same rows in other bytes: the rows whose input hash their record
    holds (their key once in the chunk, in no earlier chunk) are unchanged without being
    validated, the columnar way as the per-row way; then a changed upload is validated where
    its rows changed."""
    common = {
        "key": ["id"],
        "fields": {"id": {"type": "string", "required": True}, **FIELDS},
        "log_rows": "all",
    }
    await create_importer(slug="columnar", chunk_size=frames.MIN_ROWS, **common)
    await create_importer(slug="per-row", chunk_size=frames.MIN_ROWS - 1, **common)
    first = keyed_by_id(users_csv(1))
    args = (upload, run_worker, client, admin_headers, session_factory)
    run = await assert_runs_match([first], *args, timed=True)
    assert not any(data["unvalidated"] for data in await applied(client, admin_headers, run))

    run = await assert_runs_match([quoted_all(first)], *args, timed=True)
    chunks = await applied(client, admin_headers, run)
    again = [data["unvalidated"] for data in chunks]
    # Rows that fail have no record, and a key met twice is validated: a part of the rows.
    assert all(0 < data["unvalidated"] <= data["rows"]["unchanged"] for data in chunks), chunks

    run = await assert_runs_match([keyed_by_id(users_csv(1, changed=True))], *args, timed=True)
    changed = [data["unvalidated"] for data in await applied(client, admin_headers, run)]
    assert all(0 < changed[n] < again[n] for n in range(3)), (changed, again)
