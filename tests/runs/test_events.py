"""A run's event log: written by the worker in the transactions it records, read over
`GET /{run}/events` (paged, filtered, keyset `after` a cursor, in commit order) with the run's
own visibility."""

import asyncio
import os
import signal
from typing import Any

import httpx
import pytest
from arq import ArqRedis, Retry
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.db import unit_of_work
from app.core.storage import storage_of
from app.pipeline import splitter, writer
from app.runs import events
from app.worker.tasks import apply_chunk
from tests.conftest import CreateImporter, MakeToken, RunWorker, Upload
from tests.factories import USER_FIELDS
from tests.pipeline.test_pipeline import run_of
from tests.runs.conftest import API, MakeSource, set_importer_source, sql
from tests.worker.processes import start_worker, wait_for, workers
from tests.worker.test_leases import (
    finished,
    mixed_csv,
    start_holding_a_chunk,
)

Factory = async_sessionmaker[AsyncSession]


async def events_of(factory: Factory, run_id: int) -> list[dict[str, Any]]:
    rows = await sql(
        factory, "SELECT id, type, data FROM run_events WHERE run_id = :id ORDER BY id", id=run_id
    )
    return [{"id": row.id, "type": row.type, "data": row.data} for row in rows]


def of_type(events: list[dict[str, Any]], type: str) -> list[dict[str, Any]]:
    return [event["data"] for event in events if event["type"] == type]


async def split(settings: Settings, queue: ArqRedis, factory: Factory, run_id: int) -> None:
    await splitter.split_run(factory, queue, settings, run_id)


# --- what the worker writes ---------------------------------------------------------------------


async def test_a_run_through_a_worker_logs_each_step_once_in_order(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    session_factory: Factory,
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=10)
    content = mixed_csv()  # 60 rows: 5 invalid, 5 repeating earlier keys
    run_id = (await upload("users", content, filename="users.csv")).json()["data"]["id"]

    await run_worker()

    run = await run_of(session_factory, run_id)
    assert run["status"] == "completed_with_errors"
    events = await events_of(session_factory, run_id)
    ids = [event["id"] for event in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    types = [event["type"] for event in events]
    assert types[:2] == ["created", "split_started"] and types[-1] == "finalized"
    # In commit order: the first chunk is stored (and may be applied) before the split ends.
    assert sorted(types[2:-1]) == ["chunk_applied"] * 6 + ["split_finished"]
    assert events[0]["data"] == {
        "kind": "upload",
        "importer": "users",
        "dry_run": False,
        "parent_run_id": None,
    }
    assert events[1]["data"]["attempt"] == 1 and events[1]["data"]["worker"]
    assert of_type(events, "split_finished") == [
        {
            "rows": 60,
            "chunks": 6,
            "bytes": len(content.encode()),
            "reused_from": None,
            "blocks": 0,  # chunks of 10 rows are read row by row
        }
    ]
    applied = of_type(events, "chunk_applied")
    assert sorted(chunk["index"] for chunk in applied) == list(range(6))
    assert all(chunk["status"] == "done" and chunk["attempt"] == 1 for chunk in applied)
    assert all(chunk["worker"] and chunk["duration_ms"] >= 0 for chunk in applied)
    # The chunks' outcome counts add up to the run's summary and counters.
    totals: dict[str, int] = {}
    for chunk in applied:
        for outcome, count in chunk["rows"].items():
            totals[outcome] = totals.get(outcome, 0) + count
    summary = run["summary"]
    assert {k: v for k, v in totals.items() if k != "failed"} == summary
    assert totals["failed"] == run["progress"]["failed"] == 5
    assert sum(totals.values()) == run["progress"]["processed"] == 60
    assert events[-1]["data"] == {"status": "completed_with_errors", "summary": summary}


async def test_a_run_cancelled_before_it_starts_logs_the_request_and_its_end(
    create_importer: CreateImporter,
    upload: Upload,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_factory: Factory,
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    run_id = (await upload("users", mixed_csv())).json()["data"]["id"]

    response = await client.post(f"{API}/{run_id}/cancel", headers=admin_headers)
    assert response.status_code == 200, response.text

    events = await events_of(session_factory, run_id)
    assert [event["type"] for event in events] == ["created", "cancel_requested", "finalized"]
    assert events[1]["data"] == {"status": "cancelled"}
    assert events[2]["data"]["status"] == "cancelled"


async def test_a_run_cancelled_mid_way_logs_the_request_and_ends_cancelled(
    create_importer: CreateImporter,
    upload: Upload,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    settings: Settings,
    queue: ArqRedis,
    run_worker: RunWorker,
    session_factory: Factory,
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=10)
    run_id = (await upload("users", mixed_csv())).json()["data"]["id"]
    await split(settings, queue, session_factory, run_id)
    await writer.apply_chunk(session_factory, storage_of(settings), run_id, 0)

    response = await client.post(f"{API}/{run_id}/cancel", headers=admin_headers)
    assert response.status_code == 200, response.text
    await run_worker()

    events = await events_of(session_factory, run_id)
    assert of_type(events, "cancel_requested") == [{"status": "processing"}]
    # Only the chunk applied before the cancel: the others were dropped, not applied.
    assert [chunk["index"] for chunk in of_type(events, "chunk_applied")] == [0]
    assert events[-1]["type"] == "finalized" and events[-1]["data"]["status"] == "cancelled"


async def test_a_run_that_fails_logs_failed_with_its_message(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    session_factory: Factory,
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    run_id = (await upload("users", "Name,Age\nAda,36\n")).json()["data"]["id"]

    await run_worker()

    run = await run_of(session_factory, run_id)
    assert run["status"] == "failed"
    events = await events_of(session_factory, run_id)
    assert [event["type"] for event in events] == ["created", "split_started", "failed"]
    assert events[-1]["data"] == {"message": run["error_message"]}
    assert "Missing key column" in run["error_message"]


async def test_a_redelivered_chunk_logs_one_chunk_applied(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    settings: Settings,
    session_factory: Factory,
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=10)
    run_id = (await upload("users", mixed_csv())).json()["data"]["id"]
    await run_worker()

    for index in range(6):
        await writer.apply_chunk(session_factory, storage_of(settings), run_id, index)

    applied = of_type(await events_of(session_factory, run_id), "chunk_applied")
    assert sorted(chunk["index"] for chunk in applied) == list(range(6))


async def test_a_chunk_that_raises_logs_its_retries_none_applied_until_its_rows_fail(
    create_importer: CreateImporter,
    upload: Upload,
    settings: Settings,
    queue: ArqRedis,
    session_factory: Factory,
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=10)
    run_id = (await upload("users", mixed_csv())).json()["data"]["id"]
    await split(settings, queue, session_factory, run_id)
    # Chunk 1's byte range no longer holds its rows: applying it raises inside its
    # transaction, which rolls back.
    await sql(
        session_factory,
        "UPDATE run_chunks SET byte_end = byte_start + 5 WHERE run_id = :id AND index = 1",
        id=run_id,
    )
    with pytest.raises(Exception, match="no longer has its rows"):
        await writer.apply_chunk(session_factory, storage_of(settings), run_id, 1)
    assert of_type(await events_of(session_factory, run_id), "chunk_applied") == []

    ctx = {"session_factory": session_factory, "settings": settings, "queue": queue}
    for _ in range(settings.max_attempts - 1):
        with pytest.raises(Retry):
            await apply_chunk(ctx, run_id, 1)
    events = await events_of(session_factory, run_id)
    retried = of_type(events, "chunk_retried")
    assert [(r["index"], r["attempt"]) for r in retried] == [
        (1, attempt) for attempt in range(1, settings.max_attempts)
    ]
    assert all("no longer has its rows" in r["reason"] for r in retried)
    assert of_type(events, "chunk_applied") == []

    await apply_chunk(ctx, run_id, 1)  # the last attempt gives up: its rows fail

    applied = of_type(await events_of(session_factory, run_id), "chunk_applied")
    assert [(c["index"], c["status"], c["rows"]["failed"]) for c in applied] == [(1, "failed", 10)]
    assert applied[0]["attempt"] == settings.max_attempts


async def test_a_chunk_of_a_killed_worker_logs_its_lease_taken_over(
    create_importer: CreateImporter,
    upload: Upload,
    settings: Settings,
    session_factory: Factory,
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=10)
    run_id = (await upload("users", mixed_csv())).json()["data"]["id"]
    with workers() as procs:
        held = await start_holding_a_chunk(settings, session_factory, run_id, procs)
        dead = (
            await sql(
                session_factory,
                "SELECT claimed_by FROM run_chunks WHERE run_id = :id AND index = :index",
                id=run_id,
                index=held[0][0],
            )
        )[0][0]
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].wait(10)

        procs.append(start_worker(settings))
        await wait_for(lambda: finished(session_factory, run_id), "the run to finish")

    events = await events_of(session_factory, run_id)
    reclaimed = of_type(events, "lease_reclaimed")
    assert {"what": "chunk", "index": held[0][0], "previous": dead, "attempt": 2} in reclaimed
    applied = of_type(events, "chunk_applied")
    assert sorted(chunk["index"] for chunk in applied) == list(range(6))
    taken_over = [chunk for chunk in applied if chunk["index"] == held[0][0]]
    assert taken_over[0]["attempt"] == 2 and taken_over[0]["worker"] != dead


# --- GET /{run}/events --------------------------------------------------------------------------


@pytest.fixture
async def finished_run(
    create_importer: CreateImporter, upload: Upload, run_worker: RunWorker
) -> int:
    """A run of 6 chunks through a worker: 10 events."""
    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=10)
    run_id: int = (await upload("users", mixed_csv())).json()["data"]["id"]
    await run_worker()
    return run_id


async def test_events_are_listed_in_cursor_order_by_page(
    finished_run: int, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    url = f"{API}/{finished_run}/events"
    first = await client.get(url, params={"per_page": 4}, headers=admin_headers)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["meta"] == {"current_page": 1, "per_page": 4, "total": 10, "last_page": 3}
    # By writing transaction, then id: the first two are the run's own, before any chunk.
    assert [e["type"] for e in body["data"]][:2] == ["created", "split_started"]
    assert set(body["data"][0]) == {"id", "cursor", "type", "at", "data"}
    assert body["data"][0]["at"].endswith("Z")
    assert body["links"]["prev"] is None and "page=2" in body["links"]["next"]

    second = (await client.get(body["links"]["next"], headers=admin_headers)).json()
    last = (await client.get(body["links"]["last"], headers=admin_headers)).json()
    assert len(last["data"]) == 2 and last["links"]["next"] is None
    paged = [e for page in (body, second, last) for e in page["data"]]
    everything = (await client.get(url, params={"per_page": 100}, headers=admin_headers)).json()
    assert paged == everything["data"]
    positions = [tuple(map(int, e["cursor"].split("-"))) for e in paged]
    assert positions == sorted(positions) and len(set(positions)) == 10


async def test_events_filtered_by_one_or_several_types(
    finished_run: int, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    url = f"{API}/{finished_run}/events"
    one = (await client.get(url, params={"type": "chunk_applied"}, headers=admin_headers)).json()
    assert one["meta"]["total"] == 6
    assert {e["type"] for e in one["data"]} == {"chunk_applied"}

    params = [("type", "created"), ("type", "finalized")]
    two = (await client.get(url, params=params, headers=admin_headers)).json()
    assert [e["type"] for e in two["data"]] == ["created", "finalized"]


async def test_an_unknown_event_type_is_422_naming_the_parameter(
    finished_run: int, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.get(
        f"{API}/{finished_run}/events", params={"type": "exploded"}, headers=admin_headers
    )
    assert response.status_code == 422, response.text
    body = response.json()
    # The parameter, and which of its values: `type=created&type=exploded` names `type.1`.
    assert list(body["errors"]) == ["type.0"]
    assert "'chunk_applied'" in body["message"] and body["message"].startswith("Input should be")


async def test_events_after_an_id_continue_by_keyset_with_a_next_link(
    finished_run: int, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    url = f"{API}/{finished_run}/events"
    everything = (await client.get(url, params={"per_page": 100}, headers=admin_headers)).json()
    ids = [e["id"] for e in everything["data"]]
    assert len(ids) == 10

    page = (
        await client.get(url, params={"after": ids[2], "per_page": 3}, headers=admin_headers)
    ).json()
    assert [e["id"] for e in page["data"]] == ids[3:6]
    seen = [e["id"] for e in page["data"]]
    while page["links"]["next"] is not None:
        page = (await client.get(page["links"]["next"], headers=admin_headers)).json()
        seen += [e["id"] for e in page["data"]]
    assert seen == ids[3:]
    assert page["data"] and page["links"]["prev"] is None

    # Nothing after the last: an empty page, no next link (follow later with the same id).
    tail = (await client.get(url, params={"after": ids[-1]}, headers=admin_headers)).json()
    assert tail["data"] == [] and tail["links"]["next"] is None


async def test_events_after_a_cursor_continue_by_keyset_and_the_cursor_is_the_next_link(
    finished_run: int, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    url = f"{API}/{finished_run}/events"
    everything = (await client.get(url, params={"per_page": 100}, headers=admin_headers)).json()
    cursors = [e["cursor"] for e in everything["data"]]
    assert len(set(cursors)) == 10

    page = (
        await client.get(url, params={"after": cursors[2], "per_page": 3}, headers=admin_headers)
    ).json()
    assert [e["cursor"] for e in page["data"]] == cursors[3:6]
    assert page["links"]["next"].endswith(f"after={cursors[5]}")
    # A plain id (what clients sent before cursors) continues from the same event.
    legacy_id = everything["data"][2]["id"]
    legacy = await client.get(
        url, params={"after": legacy_id, "per_page": 3}, headers=admin_headers
    )
    assert legacy.json()["data"] == page["data"]


@pytest.mark.parametrize("after", ["99999", "nope", "1-x", f"{2**64}-1"])
async def test_an_after_that_is_no_cursor_nor_an_event_of_the_run_is_refused(
    finished_run: int, client: httpx.AsyncClient, admin_headers: dict[str, str], after: str
) -> None:
    response = await client.get(
        f"{API}/{finished_run}/events", params={"after": after}, headers=admin_headers
    )
    assert response.status_code in (400, 422), response.text
    assert "after" in response.text or "cursor" in response.text or "event" in response.text


async def test_a_follower_never_skips_an_event_committed_after_a_later_one(
    create_importer: CreateImporter,
    upload: Upload,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_factory: Factory,
) -> None:
    """T1 inserts an event (the smaller id) and stays open; T2 inserts one and commits. A
    follower reading then must not move past T1's event: after T1 commits it sees both."""
    await create_importer(key=["email"], fields=USER_FIELDS)
    run_id = (await upload("users", mixed_csv())).json()["data"]["id"]  # pending: not split
    url = f"{API}/{run_id}/events"
    seen: list[dict[str, Any]] = []
    cursor: str | None = None

    async def follow() -> None:
        nonlocal cursor
        params = {"per_page": 100} if cursor is None else {"per_page": 100, "after": cursor}
        response = await client.get(url, params=params, headers=admin_headers)
        assert response.status_code == 200, response.text
        page = response.json()["data"]
        seen.extend(page)
        cursor = page[-1]["cursor"] if page else cursor

    async with unit_of_work(session_factory) as t1:
        await events.add(t1, run_id, "chunk_retried", index=0, attempt=1, reason="t1")
        async with unit_of_work(session_factory) as t2:
            await events.add(t2, run_id, "chunk_retried", index=1, attempt=1, reason="t2")
        # T2 committed, T1 still open: T2's event is held back behind T1.
        await follow()
        assert [e["data"].get("reason") for e in seen if e["type"] == "chunk_retried"] == []
    # Both committed: the follower continues from its cursor and gets both, in commit order.
    # (Polled: an unrelated transaction open elsewhere on the server may hold them back too.)
    async with asyncio.timeout(10):
        while len([e for e in seen if e["type"] == "chunk_retried"]) < 2:
            await follow()
    retried = [e for e in seen if e["type"] == "chunk_retried"]
    assert [e["data"]["reason"] for e in retried] == ["t1", "t2"]
    assert retried[0]["id"] < retried[1]["id"]
    assert [e["type"] for e in seen] == ["created", "chunk_retried", "chunk_retried"]
    assert len({e["id"] for e in seen}) == len(seen)


async def test_another_sources_run_events_are_404_for_a_source_bound_token(
    finished_run: int,
    client: httpx.AsyncClient,
    make_token: MakeToken,
    make_source: MakeSource,
    session_factory: Factory,
) -> None:
    mine, theirs = await make_source("mine"), await make_source("theirs")
    await set_importer_source(session_factory, "users", theirs)
    await sql(session_factory, "UPDATE runs SET source_id = :s", s=theirs)
    url = f"{API}/{finished_run}/events"

    bound = {"Authorization": f"Bearer {await make_token(source_id=mine)}"}
    response = await client.get(url, headers=bound)
    assert response.status_code == 404, response.text
    assert response.json() == {"message": f"Run {finished_run} not found."}

    own = {"Authorization": f"Bearer {await make_token(source_id=theirs)}"}
    assert (await client.get(url, headers=own)).json()["meta"]["total"] == 10


async def test_events_need_the_view_ability(
    finished_run: int, client: httpx.AsyncClient, make_token: MakeToken
) -> None:
    token = await make_token(role="admin", abilities=["ingest:create"])
    response = await client.get(
        f"{API}/{finished_run}/events", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 403, response.text


async def test_a_split_whose_lease_expired_logs_its_lease_taken_over(
    create_importer: CreateImporter, upload: Upload, session_factory: Factory
) -> None:
    from app.worker import leases

    await create_importer(key=["email"], fields=USER_FIELDS)
    run_id = (await upload("users", mixed_csv())).json()["data"]["id"]
    assert await leases.claim_split(session_factory, "old", 30, run_id) is not None
    assert await leases.claim_split(session_factory, "new", 30, run_id) is None  # still held
    # As the lease of a worker that froze runs out (tests/worker/test_leases.py does the same).
    await sql(
        session_factory,
        "UPDATE runs SET split_lease_until = now() - interval '1 second' WHERE id = :id",
        id=run_id,
    )
    taken = await leases.claim_split(session_factory, "new", 30, run_id)

    assert taken is not None and taken[0].attempt == 2
    reclaimed = of_type(await events_of(session_factory, run_id), "lease_reclaimed")
    assert reclaimed == [{"what": "split", "index": None, "previous": "old", "attempt": 2}]
