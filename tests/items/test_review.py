"""The review transitions of SPEC §6: every allowed and every forbidden one, the history they
leave, racing transitions, promotion into the records store, and the read routes."""

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.items.schemas import ITEM_STATUSES
from tests.conftest import MakeToken
from tests.items.conftest import (
    PREFIX,
    Headers,
    MakeItem,
    MakeSource,
    PushImporter,
    bearer,
    count,
    example,
)

ALLOWED = {
    "approve": ({"pending", "processing"}, "approved"),
    "reject": ({"pending", "processing"}, "rejected"),
    "request-changes": ({"pending", "processing"}, "changes_requested"),
    "promote": ({"approved"}, "merged"),
}
BODIES: dict[str, dict[str, Any]] = {
    "approve": {},
    "reject": {"reason": "Not an event."},
    "request-changes": {"note": "Please add the venue."},
    "promote": {},
}
NOTES = {"reject": "Not an event.", "request-changes": "Please add the venue."}


def cases(allowed: bool) -> list[Any]:
    return [
        pytest.param(action, status, id=f"{action}-from-{status}")
        for action, (sources, _) in ALLOWED.items()
        for status in ITEM_STATUSES
        if (status in sources) == allowed
    ]


@pytest.fixture(autouse=True)
async def event_importer(push_importer: PushImporter) -> None:
    await push_importer("event")
    await push_importer("place")


async def status_of(session_factory: async_sessionmaker[AsyncSession], item_id: int) -> str:
    async with session_factory() as session:
        return str(
            await session.scalar(text("SELECT status FROM items WHERE id = :id"), {"id": item_id})
        )


@pytest.mark.parametrize(("action", "status"), cases(allowed=True))
async def test_allowed_transition(
    client: httpx.AsyncClient,
    make_item: MakeItem,
    curator_headers: Headers,
    action: str,
    status: str,
) -> None:
    item_id = await make_item(status)
    response = await client.post(
        f"{PREFIX}/items/{item_id}/{action}", json=BODIES[action], headers=curator_headers
    )
    assert response.status_code == 200, response.text
    item = response.json()["data"]
    assert item["status"] == ALLOWED[action][1]
    [event] = item["events"]
    assert (event["from"], event["to"], event["note"]) == (
        status,
        item["status"],
        NOTES.get(action),
    )
    assert event["actor"]["email"] == "curator@example.test"
    assert event["actor"]["token_id"] is not None
    assert event["created_at"].endswith("Z")
    if action in NOTES:
        assert item["note"] == NOTES[action]


@pytest.mark.parametrize(("action", "status"), cases(allowed=False))
async def test_forbidden_transition_is_422_naming_the_status(
    client: httpx.AsyncClient,
    make_item: MakeItem,
    curator_headers: Headers,
    session_factory: async_sessionmaker[AsyncSession],
    action: str,
    status: str,
) -> None:
    item_id = await make_item(status)
    response = await client.post(
        f"{PREFIX}/items/{item_id}/{action}", json=BODIES[action], headers=curator_headers
    )
    assert response.status_code == 422, response.text
    message = response.json()["message"]
    assert f"its status is {status}" in message
    assert message.startswith(f"Item {item_id} cannot be ")
    assert await status_of(session_factory, item_id) == status
    assert await count(session_factory, "SELECT count(*) FROM item_events") == 0


@pytest.mark.parametrize("status", [s for s in ITEM_STATUSES if s != "merged"])
async def test_retarget_is_allowed_from_any_status_but_merged(
    client: httpx.AsyncClient, make_item: MakeItem, curator_headers: Headers, status: str
) -> None:
    data = {
        "external_id": "x1",
        "source_url": "https://feed.example.test/feed",
        "title": "Old mill",
    }
    item_id = await make_item(status, data=data, record_id=77)
    response = await client.post(
        f"{PREFIX}/items/{item_id}/retarget",
        json={"type": "place", "note": "It is a place."},
        headers=curator_headers,
    )
    assert response.status_code == 200, response.text
    item = response.json()["data"]
    assert (item["type"], item["collection"], item["status"]) == ("place", "places", status)
    assert item["record_id"] is None  # canonical links are cleared
    assert item["data"]["name"] == "Old mill"  # re-mapped: place reads `name` from `title`
    assert item["title"] == "Old mill"
    [event] = item["events"]
    assert (event["from"], event["to"]) == (status, status)
    assert event["note"] == "Retargeted from event to place. It is a place."


async def test_retarget_of_a_merged_item_is_422(
    client: httpx.AsyncClient, make_item: MakeItem, curator_headers: Headers
) -> None:
    item_id = await make_item("merged")
    response = await client.post(
        f"{PREFIX}/items/{item_id}/retarget", json={"type": "place"}, headers=curator_headers
    )
    assert response.status_code == 422
    assert "its status is merged" in response.json()["message"]


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({}, "type", "The type field is required."),
        ({"type": "nope"}, "type", "The selected type is invalid."),
        ({"type": "event"}, "type", "Item 1 is already of type event."),
    ],
)
async def test_retarget_needs_another_existing_type(
    client: httpx.AsyncClient,
    make_item: MakeItem,
    curator_headers: Headers,
    body: dict[str, Any],
    field: str,
    message: str,
) -> None:
    item_id = await make_item("pending")
    response = await client.post(
        f"{PREFIX}/items/{item_id}/retarget", json=body, headers=curator_headers
    )
    assert response.status_code == 422
    assert response.json()["errors"] == {field: [message]}


async def test_retarget_revalidates_the_item_for_its_new_type(
    client: httpx.AsyncClient,
    make_item: MakeItem,
    curator_headers: Headers,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    data = {"external_id": "x1", "source_url": "https://feed.example.test/feed", "title": "A"}
    item_id = await make_item("pending", data=data)
    response = await client.post(
        f"{PREFIX}/items/{item_id}/retarget", json={"type": "place"}, headers=curator_headers
    )
    assert response.status_code == 422
    assert response.json()["errors"] == {"data.name": ["The name must be at least 2 characters."]}
    async with session_factory() as session:
        assert await session.scalar(text("SELECT type FROM items")) == "event"


async def test_request_changes_needs_a_note(
    client: httpx.AsyncClient, make_item: MakeItem, curator_headers: Headers
) -> None:
    item_id = await make_item("pending")
    for body in (None, {}, {"note": "   "}):
        response = await client.post(
            f"{PREFIX}/items/{item_id}/request-changes", json=body, headers=curator_headers
        )
        assert response.status_code == 422
        assert response.json()["errors"] == {"note": ["The note field is required."]}


async def test_transitions_need_the_review_ability(
    client: httpx.AsyncClient, make_item: MakeItem, make_token: MakeToken
) -> None:
    item_id = await make_item("pending")
    service = bearer(await make_token(role="service", abilities=["ingest:view", "ingest:create"]))
    response = await client.post(f"{PREFIX}/items/{item_id}/approve", headers=service)
    assert response.status_code == 403


async def test_unknown_item_is_404(client: httpx.AsyncClient, curator_headers: Headers) -> None:
    response = await client.post(f"{PREFIX}/items/999/approve", headers=curator_headers)
    assert response.status_code == 404
    assert response.json() == {"message": "Item 999 not found."}


async def wait_for_lock_waiters(
    session_factory: async_sessionmaker[AsyncSession], expected: int
) -> None:
    for _ in range(500):
        async with session_factory() as session:
            waiting = await session.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query LIKE 'UPDATE items%'"
                )
            )
        if waiting == expected:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{expected} requests never waited on the item's row lock")


@pytest.mark.parametrize("other", ["approve", "reject"])
async def test_two_racing_transitions_one_wins_the_other_gets_409(
    client: httpx.AsyncClient,
    make_item: MakeItem,
    curator_headers: Headers,
    engine: AsyncEngine,
    session_factory: async_sessionmaker[AsyncSession],
    other: str,
) -> None:
    item_id = await make_item("pending")
    # Hold the item's row lock so that both requests read `pending` and then queue up on their
    # UPDATE: the race is forced, not left to timing.
    async with engine.connect() as locker:
        await locker.execute(
            text("SELECT id FROM items WHERE id = :id FOR UPDATE"), {"id": item_id}
        )
        requests = [
            asyncio.create_task(
                client.post(f"{PREFIX}/items/{item_id}/{action}", headers=curator_headers)
            )
            for action in ("approve", other)
        ]
        await wait_for_lock_waiters(session_factory, 2)
        await locker.rollback()
    responses = await asyncio.gather(*requests)

    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 409], [r.text for r in responses]
    winner = next(r for r in responses if r.status_code == 200).json()["data"]
    loser = next(r for r in responses if r.status_code == 409).json()
    assert "was changed by another request" in loser["message"]
    assert f"its status is now {winner['status']}" in loser["message"]
    assert await count(session_factory, "SELECT count(*) FROM item_events") == 1


async def test_promote_writes_the_record_through_the_writer(
    client: httpx.AsyncClient,
    make_item: MakeItem,
    make_source: MakeSource,
    curator_headers: Headers,
) -> None:
    source_id = await make_source("feed")
    data = {
        "external_id": "ev-9",
        "source_url": "https://feed.example.test/feed",
        "title": "Harbour lights",
        "starts_at": "2026-06-01T19:00:00+00:00",
    }
    item_id = await make_item("approved", data=data, source_id=source_id, run_id=None)
    response = await client.post(
        f"{PREFIX}/items/{item_id}/promote", json={"note": "Looks right."}, headers=curator_headers
    )
    assert response.status_code == 200, response.text
    item = response.json()["data"]
    assert item["status"] == "merged" and item["record_id"] is not None

    key = "https://feed.example.test/feed|ev-9"
    record = await client.get(f"{PREFIX}/records/events/{key}", headers=curator_headers)
    assert record.status_code == 200, record.text
    record_data = record.json()["data"]
    assert record_data["id"] == item["record_id"]
    # The record has every column of the collection; the item gave four.
    assert record_data["data"] == {**dict.fromkeys(example("event")["fields"]), **data}
    assert record_data["source_id"] == source_id
    assert record_data["content_hash"] == item["content_hash"]


async def test_promoted_data_the_table_has_no_column_for_is_kept_with_the_record(
    client: httpx.AsyncClient,
    make_item: MakeItem,
    curator_headers: Headers,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    data = {
        "external_id": "ev-7",
        "source_url": "https://feed.example.test/feed",
        "title": "Harbour lights",
        "starts_at": "2026-06-01T19:00:00+00:00",
        "price": "free",  # not a number
        "mood": "festive",  # no such field
    }
    item_id = await make_item("approved", data=data, run_id=None)
    response = await client.post(f"{PREFIX}/items/{item_id}/promote", headers=curator_headers)
    assert response.status_code == 200, response.text
    key = "https://feed.example.test/feed|ev-7"
    record = (await client.get(f"{PREFIX}/records/events/{key}", headers=curator_headers)).json()
    assert record["data"]["data"] == {**dict.fromkeys(example("event")["fields"]), **data}
    async with session_factory() as session:
        price, extra = (
            await session.execute(
                text("SELECT price, _extra FROM ingest_data.events WHERE _key = :key"),
                {"key": key},
            )
        ).one()
    assert (price, extra) == (None, {"price": "free", "mood": "festive"})


async def test_promote_updates_an_existing_record(
    client: httpx.AsyncClient, make_item: MakeItem, curator_headers: Headers
) -> None:
    base = {"external_id": "ev-1", "source_url": "https://f.example.test"}
    for title in ("First", "Second"):
        # The second item can only exist once the first is merged (one open item per id).
        item_id = await make_item("approved", data={**base, "title": title})
        response = await client.post(f"{PREFIX}/items/{item_id}/promote", headers=curator_headers)
        assert response.status_code == 200, response.text
    records = await client.get(f"{PREFIX}/records/events", headers=curator_headers)
    [record] = records.json()["data"]
    assert record["data"]["title"] == "Second"


async def test_list_filters_and_pagination(
    client: httpx.AsyncClient,
    make_item: MakeItem,
    make_source: MakeSource,
    curator_headers: Headers,
) -> None:
    a, b = await make_source("a"), await make_source("b")
    ids = [await make_item("pending", source_id=a) for _ in range(3)]
    ids.append(await make_item("approved", source_id=b, type="place", collection="places"))
    ids.append(
        await make_item(
            "pending",
            source_id=b,
            duplicates=[{"kind": "exact", "match": "item", "id": 1, "score": 1.0}],
        )
    )

    async def listed(query: str) -> list[int]:
        response = await client.get(f"{PREFIX}/items?{query}", headers=curator_headers)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["data"]]

    assert await listed("") == list(reversed(ids))  # newest first
    assert await listed("status=approved") == [ids[3]]
    assert await listed("type=place") == [ids[3]]
    assert await listed(f"source={a}") == list(reversed(ids[:3]))
    assert await listed("has_duplicates=true") == [ids[4]]
    assert await listed("has_duplicates=false&status=pending") == list(reversed(ids[:3]))
    assert await listed("sort=id&order=asc&per_page=2&page=2") == ids[2:4]

    page = (await client.get(f"{PREFIX}/items?per_page=2", headers=curator_headers)).json()
    assert page["meta"] == {"current_page": 1, "per_page": 2, "total": 5, "last_page": 3}
    assert page["links"]["next"].endswith("page=2")
    bad = await client.get(f"{PREFIX}/items?status=lost", headers=curator_headers)
    assert bad.status_code == 422


async def test_show_has_markers_and_history(
    client: httpx.AsyncClient, make_item: MakeItem, curator_headers: Headers
) -> None:
    marker = {"kind": "near", "match": "item", "id": 5, "score": 0.8}
    item_id = await make_item("pending", duplicates=[marker])
    await client.post(f"{PREFIX}/items/{item_id}/approve", headers=curator_headers)
    await client.post(f"{PREFIX}/items/{item_id}/promote", headers=curator_headers)
    shown = (await client.get(f"{PREFIX}/items/{item_id}", headers=curator_headers)).json()["data"]
    assert shown["duplicates"] == [marker] and shown["has_duplicates"] is True
    assert [(e["from"], e["to"]) for e in shown["events"]] == [
        ("pending", "approved"),
        ("approved", "merged"),
    ]


async def test_a_source_bound_token_sees_only_its_source_items(
    client: httpx.AsyncClient,
    make_item: MakeItem,
    make_source: MakeSource,
    make_token: MakeToken,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    a, b = await make_source("a"), await make_source("b")
    mine = await make_item("pending", source_id=a)
    theirs = await make_item("pending", source_id=b)
    headers = bearer(
        await make_token(role="curator", abilities=["ingest:view", "ingest:review"], source_id=a)
    )
    listed = (await client.get(f"{PREFIX}/items", headers=headers)).json()["data"]
    assert [item["id"] for item in listed] == [mine]
    assert (await client.get(f"{PREFIX}/items/{theirs}", headers=headers)).status_code == 404
    for action in ("approve", "reject", "promote"):
        response = await client.post(f"{PREFIX}/items/{theirs}/{action}", headers=headers)
        assert response.status_code == 404
    response = await client.post(
        f"{PREFIX}/items/{theirs}/retarget", json={"type": "place"}, headers=headers
    )
    assert response.status_code == 404
    assert await status_of(session_factory, theirs) == "pending"
    assert (await client.post(f"{PREFIX}/items/{mine}/approve", headers=headers)).status_code == 200
