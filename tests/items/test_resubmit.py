"""A key pushed again while its item is open updates that item (SPEC §6): new data, a
"Resubmitted" transition, fresh duplicate markers, and never a second open item for the key,
not even when two runs stage it at once. A closed item (merged, rejected) is not reopened."""

import asyncio
from typing import Any

import asyncpg
import httpx
import pytest
from arq import ArqRedis
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core import migrate
from app.core.config import Settings
from app.core.storage import storage_of
from app.items import staging
from app.pipeline import splitter, writer
from tests.conftest import CreateImporter, MakeToken, RunWorker
from tests.items.conftest import PREFIX, Headers, Push, bearer
from tests.items.test_staging import items_of, show
from tests.servers import recreate_database

# Keyed by `code`, with no external id: the key alone says which item a push is about.
TIP = {
    "slug": "tip",
    "collection": "tips",
    "source": {"type": "push"},
    "approval": "manual",
    "key": ["code"],
    "title_field": "title",
    "fields": {
        "code": {"type": "string", "required": True},
        "title": {"type": "string", "required": True},
        "body": {"type": "string"},
    },
}


def tip(code: str = "t-1", body: str = "Before 9 it is empty.", **extra: Any) -> dict[str, Any]:
    return {"code": code, "title": "Take the 28 tram early", "body": body, **extra}


@pytest.fixture
async def agent(create_importer: CreateImporter, make_token: MakeToken) -> Headers:
    await create_importer(**TIP)
    token = await make_token(
        role="service", abilities=["ingest:view", "ingest:create"], email="agent@example.test"
    )
    return bearer(token)


def transitions(item: dict[str, Any]) -> list[tuple[str | None, str, str | None]]:
    return [(e["from"], e["to"], e["note"]) for e in item["events"]]


async def pushed(push: Push, run_worker: RunWorker, item: dict[str, Any], agent: Headers) -> int:
    response = await push("tip", item, agent)
    assert response.status_code == 202, response.text
    await run_worker()
    run_id: int = response.json()["data"]["run_id"]
    return run_id


async def test_a_key_pushed_again_updates_its_open_item(
    client: httpx.AsyncClient,
    agent: Headers,
    push: Push,
    run_worker: RunWorker,
    curator_headers: Headers,
) -> None:
    first = await pushed(push, run_worker, tip(), agent)
    second = await pushed(push, run_worker, tip(body="After 9 it is packed."), agent)

    [item] = await items_of(client, curator_headers)
    shown = await show(client, curator_headers, item["id"])
    assert (shown["status"], shown["run_id"]) == ("pending", second)
    assert shown["data"]["body"] == shown["original"]["body"] == "After 9 it is packed."
    assert transitions(shown) == [
        (None, "pending", f"Staged by run {first}."),
        ("pending", "pending", f"Resubmitted by run {second}."),
    ]
    assert shown["events"][-1]["actor"]["email"] == "agent@example.test"


async def test_a_resubmitted_item_gets_its_duplicate_markers_recomputed(
    client: httpx.AsyncClient,
    agent: Headers,
    push: Push,
    run_worker: RunWorker,
    curator_headers: Headers,
) -> None:
    await pushed(push, run_worker, tip("t-1"), agent)
    await pushed(push, run_worker, tip("t-2") | {"title": "Lisbon sunset viewpoints guide"}, agent)
    tram, sunset = await items_of(client, curator_headers)
    assert tram["duplicates"] == []

    await pushed(push, run_worker, tip("t-1") | {"title": "Lisbon sunset viewpoints guide!"}, agent)
    tram, _ = await items_of(client, curator_headers)
    [marker] = tram["duplicates"]
    assert (marker["kind"], marker["match"], marker["id"]) == ("near", "item", sunset["id"])


async def test_a_resubmission_sends_a_changes_requested_item_back_to_pending(
    client: httpx.AsyncClient,
    agent: Headers,
    push: Push,
    run_worker: RunWorker,
    curator_headers: Headers,
) -> None:
    await pushed(push, run_worker, tip(), agent)
    [item] = await items_of(client, curator_headers)
    sent_back = await client.post(
        f"{PREFIX}/items/{item['id']}/request-changes",
        json={"note": "Which line?"},
        headers=curator_headers,
    )
    assert sent_back.status_code == 200, sent_back.text

    again = await pushed(push, run_worker, tip(body="Take line 28 before 9."), agent)
    [resubmitted] = await items_of(client, curator_headers)
    shown = await show(client, curator_headers, resubmitted["id"])
    assert (shown["id"], shown["status"]) == (item["id"], "pending")
    assert shown["data"]["body"] == "Take line 28 before 9."
    assert transitions(shown)[1:] == [
        ("pending", "changes_requested", "Which line?"),
        ("changes_requested", "pending", f"Resubmitted by run {again}."),
    ]


async def test_an_approved_item_resubmitted_with_new_data_goes_back_to_review(
    client: httpx.AsyncClient,
    agent: Headers,
    push: Push,
    run_worker: RunWorker,
    curator_headers: Headers,
) -> None:
    await pushed(push, run_worker, tip(), agent)
    [item] = await items_of(client, curator_headers)
    approved = await client.post(f"{PREFIX}/items/{item['id']}/approve", headers=curator_headers)
    assert approved.status_code == 200, approved.text

    again = await pushed(push, run_worker, tip(body="Now it runs every 5 minutes."), agent)
    [resubmitted] = await items_of(client, curator_headers)
    shown = await show(client, curator_headers, resubmitted["id"])
    assert (shown["id"], shown["status"]) == (item["id"], "pending")
    assert transitions(shown)[-1] == ("approved", "pending", f"Resubmitted by run {again}.")


async def test_an_identical_resubmission_keeps_the_item_as_it_was(
    client: httpx.AsyncClient,
    agent: Headers,
    push: Push,
    run_worker: RunWorker,
    curator_headers: Headers,
) -> None:
    await pushed(push, run_worker, tip(), agent)
    [item] = await items_of(client, curator_headers)
    await client.post(
        f"{PREFIX}/items/{item['id']}/request-changes",
        json={"note": "Which line?"},
        headers=curator_headers,
    )
    before = await show(client, curator_headers, item["id"])

    await pushed(push, run_worker, tip(), agent)
    [again] = await items_of(client, curator_headers)
    after = await show(client, curator_headers, again["id"])
    assert (after["id"], after["status"]) == (item["id"], "changes_requested")
    assert after["events"] == before["events"]
    # Its version is unchanged too: a curator's transition in flight still applies.
    assert after["updated_at"] == before["updated_at"]


@pytest.mark.parametrize("closing", [("reject",), ("approve", "promote")])
async def test_a_key_pushed_again_after_its_item_was_closed_makes_a_new_item(
    closing: tuple[str, ...],
    client: httpx.AsyncClient,
    agent: Headers,
    push: Push,
    run_worker: RunWorker,
    curator_headers: Headers,
) -> None:
    await pushed(push, run_worker, tip(), agent)
    [item] = await items_of(client, curator_headers)
    for action in closing:
        response = await client.post(
            f"{PREFIX}/items/{item['id']}/{action}", headers=curator_headers
        )
        assert response.status_code == 200, response.text

    await pushed(push, run_worker, tip(body="After 9 it is packed."), agent)
    old, new = await items_of(client, curator_headers)
    assert old["id"] == item["id"] and old["status"] != "pending"
    assert (new["status"], new["data"]["body"]) == ("pending", "After 9 it is packed.")


async def _waiting_on_a_lock(session_factory: async_sessionmaker[AsyncSession]) -> bool:
    async with session_factory() as session:
        waiting = await session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return bool(waiting)


async def test_two_runs_staging_one_key_at_once_leave_one_open_item(
    client: httpx.AsyncClient,
    agent: Headers,
    push: Push,
    curator_headers: Headers,
    settings: Settings,
    queue: ArqRedis,
    session_factory: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Run B stages the key while run A has staged it and not yet committed."""
    runs = []
    for body in ("Before 9 it is empty.", "After 9 it is packed."):
        response = await push("tip", tip(body=body), agent)
        runs.append(response.json()["data"]["run_id"])
        await splitter.split_run(session_factory, queue, settings, runs[-1])
    first, second = runs

    refresh = staging.refresh_markers
    during: list[asyncio.Task[None]] = []
    overlapped: list[bool] = []

    async def refresh_then_let_the_other_run_stage(conn: Any, ids: Any, **kwargs: Any) -> None:
        if not during:  # the first run, inside its transaction: the other one starts now
            other = writer.apply_chunk(session_factory, storage_of(settings), second, 0)
            during.append(asyncio.create_task(other))
            # Until it waits for this transaction (or, staging as before, ends without).
            while not await _waiting_on_a_lock(session_factory):
                ended, _ = await asyncio.wait(during, timeout=0.01)
                if ended:
                    break
            overlapped.append(not during[0].done())
        await refresh(conn, ids, **kwargs)

    monkeypatch.setattr(staging, "refresh_markers", refresh_then_let_the_other_run_stage)
    await writer.apply_chunk(session_factory, storage_of(settings), first, 0)
    await during[0]
    assert overlapped == [True]  # the other run waited for this one's uncommitted item

    [item] = await items_of(client, curator_headers)
    shown = await show(client, curator_headers, item["id"])
    assert (shown["status"], shown["run_id"]) == ("pending", second)
    assert shown["data"]["body"] == "After 9 it is packed."
    assert transitions(shown) == [
        (None, "pending", f"Staged by run {first}."),
        ("pending", "pending", f"Resubmitted by run {second}."),
    ]


async def test_the_migration_closes_all_but_the_latest_open_item_of_a_key(
    database_url: str,
) -> None:
    name = f"{make_url(database_url).database}_resubmit"
    url = await asyncio.to_thread(recreate_database, database_url, name)
    await asyncio.to_thread(migrate.upgrade, url, "0008")
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(plain)
    try:
        # Three open items of one key, as the duplicating staging left them, and another key.
        ids = [
            await conn.fetchval(
                "INSERT INTO items (type, status, collection, key, data, row_number) "
                "VALUES ('tip', $1, 'tips', $2, '{}', $3) RETURNING id",
                status,
                key,
                row_number,
            )
            for status, key, row_number in [
                ("approved", "t-1", 1),
                ("pending", "t-1", 3),
                ("changes_requested", "t-1", 2),
                ("pending", "t-2", 4),
            ]
        ]
        await asyncio.to_thread(migrate.upgrade, url, "head")
        statuses = dict(await conn.fetch("SELECT id, status FROM items"))
        assert [statuses[i] for i in ids] == ["rejected", "pending", "rejected", "pending"]
        events = await conn.fetch(
            "SELECT item_id, from_status, to_status, note FROM item_events ORDER BY item_id"
        )
        note = f"Closed as a duplicate: item {ids[1]} is the open item of this key."
        assert [tuple(e) for e in events] == [
            (ids[0], "approved", "rejected", note),
            (ids[2], "changes_requested", "rejected", note),
        ]
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("UPDATE items SET status = 'pending' WHERE id = $1", ids[0])
    finally:
        await conn.close()
        await asyncio.to_thread(migrate.downgrade, url, "base")


async def test_retarget_onto_a_type_with_an_open_item_of_the_same_key_is_409(
    client: httpx.AsyncClient,
    agent: Headers,
    create_importer: CreateImporter,
    push: Push,
    run_worker: RunWorker,
    curator_headers: Headers,
) -> None:
    await create_importer(**{**TIP, "slug": "hint", "collection": "hints"})
    await pushed(push, run_worker, tip(), agent)
    response = await push("hint", tip(body="Walk instead."), agent)
    assert response.status_code == 202, response.text
    await run_worker()
    the_tip, _ = await items_of(client, curator_headers)

    response = await client.post(
        f"{PREFIX}/items/{the_tip['id']}/retarget", json={"type": "hint"}, headers=curator_headers
    )
    assert response.status_code == 409, response.text
    assert response.json()["message"] == (
        "An open item of type hint with key 't-1' already exists; review that one instead."
    )
    assert (await show(client, curator_headers, the_tip["id"]))["type"] == "tip"
