"""The review queue and item pages over HTTP: what each principal sees and may press, the
actions through the services' own rules, their 409/422 in place, bulk actions, source scope."""

import re

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.sessions import CSRF_HEADER
from tests.conftest import MakeToken
from tests.console.conftest import sign_in
from tests.items.conftest import MakeItem, MakeSource, PushImporter

CURATOR = {"role": "curator", "abilities": ["ingest:view", "ingest:review"]}
VIEWER = {"role": "viewer", "abilities": ["ingest:view"]}


@pytest.fixture(autouse=True)
async def event_importer(push_importer: PushImporter) -> None:
    await push_importer("event")
    await push_importer("place")  # a type to retarget to


async def status_of(factory: async_sessionmaker[AsyncSession], item_id: int) -> str:
    async with factory() as session:
        found = await session.scalar(
            text("SELECT status FROM items WHERE id = :id"), {"id": item_id}
        )
        return str(found)


def action_forms(html: str) -> set[str]:
    return set(re.findall(r'data-action="([a-z-]+)"', html))


async def test_a_curator_sees_the_actions_the_state_allows(
    client: httpx.AsyncClient, make_token: MakeToken, make_item: MakeItem
) -> None:
    await sign_in(client, await make_token(**CURATOR))
    pending = await make_item("pending")
    approved = await make_item("approved")
    merged = await make_item("merged")
    page = await client.get(f"/console/items/{pending}")
    assert page.status_code == 200
    assert action_forms(page.text) == {"approve", "reject", "request-changes", "retarget"}
    assert action_forms((await client.get(f"/console/items/{approved}")).text) == {
        "promote",
        "retarget",
    }
    merged_page = (await client.get(f"/console/items/{merged}")).text
    assert action_forms(merged_page) == set()
    assert "No action applies to a merged item." in merged_page


async def test_a_viewer_sees_no_action_and_a_forged_post_is_refused(
    client: httpx.AsyncClient,
    make_token: MakeToken,
    make_item: MakeItem,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    csrf = await sign_in(client, await make_token(**VIEWER))
    item = await make_item("pending")
    page = await client.get(f"/console/items/{item}")
    assert page.status_code == 200
    assert "Item number" in page.text  # the item itself is shown
    assert action_forms(page.text) == set()
    assert "<button" in page.text and "Approve" not in page.text
    queue = await client.get("/console/items")
    assert 'name="ids"' not in queue.text and "Approve selected" not in queue.text

    forged = await client.post(f"/console/items/{item}/approve", data={"csrf_token": csrf})
    assert forged.status_code == 403
    assert "requires the ingest:review ability" in forged.text
    api = await client.post(f"/api/v1/ingest/items/{item}/approve", headers={CSRF_HEADER: csrf})
    assert api.status_code == 403
    assert api.json()["message"] == "This action requires the ingest:review ability."
    assert await status_of(session_factory, item) == "pending"


async def test_a_console_action_needs_the_csrf_token(
    client: httpx.AsyncClient,
    make_token: MakeToken,
    make_item: MakeItem,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    csrf = await sign_in(client, await make_token(**CURATOR))
    item = await make_item("pending")
    refused = await client.post(f"/console/items/{item}/approve", data={})
    assert refused.status_code == 403
    assert "CSRF token missing or invalid" in refused.text
    assert await status_of(session_factory, item) == "pending"

    done = await client.post(f"/console/items/{item}/approve", data={"csrf_token": csrf})
    assert done.status_code == 303
    assert done.headers["location"] == f"/console/items/{item}?done=approve"
    assert await status_of(session_factory, item) == "approved"
    page = await client.get(done.headers["location"])
    assert "Item approved." in page.text
    assert action_forms(page.text) == {"promote", "retarget"}


async def test_approve_then_promote_writes_the_record(
    client: httpx.AsyncClient,
    make_token: MakeToken,
    make_item: MakeItem,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    csrf = await sign_in(client, await make_token(**CURATOR))
    item = await make_item("pending")
    await client.post(f"/console/items/{item}/approve", data={"csrf_token": csrf})
    promoted = await client.post(f"/console/items/{item}/promote", data={"csrf_token": csrf})
    assert promoted.status_code == 303
    assert await status_of(session_factory, item) == "merged"
    page = (await client.get(promoted.headers["location"])).text
    assert "Item promoted" in page
    history = page[page.index('id="history"') :]
    assert history.count("<tr>") == 3  # the header and two transitions
    records = await client.get("/api/v1/ingest/records/events")
    assert records.status_code == 200
    assert [r["data"]["external_id"] for r in records.json()["data"]] == ["it-1"]


async def test_request_changes_without_a_note_shows_the_422_in_place(
    client: httpx.AsyncClient,
    make_token: MakeToken,
    make_item: MakeItem,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    csrf = await sign_in(client, await make_token(**CURATOR))
    item = await make_item("pending")
    answer = await client.post(
        f"/console/items/{item}/request-changes", data={"csrf_token": csrf, "note": "  "}
    )
    assert answer.status_code == 422
    assert 'id="action-error"' in answer.text
    assert "The note field is required." in answer.text
    assert 'aria-invalid="true"' in answer.text
    assert await status_of(session_factory, item) == "pending"

    sent = await client.post(
        f"/console/items/{item}/request-changes",
        data={"csrf_token": csrf, "note": "Add the venue."},
    )
    assert sent.status_code == 303
    assert await status_of(session_factory, item) == "changes_requested"
    assert "Add the venue." in (await client.get(f"/console/items/{item}")).text


async def test_an_action_from_a_state_that_forbids_it_shows_the_service_message(
    client: httpx.AsyncClient, make_token: MakeToken, make_item: MakeItem
) -> None:
    csrf = await sign_in(client, await make_token(**CURATOR))
    item = await make_item("rejected")
    answer = await client.post(f"/console/items/{item}/promote", data={"csrf_token": csrf})
    assert answer.status_code == 422
    assert (
        f"Item {item} cannot be promoted: its status is rejected (promote is allowed from "
        "approved)." in answer.text
    )


async def test_bulk_approve_reports_each_item(
    client: httpx.AsyncClient,
    make_token: MakeToken,
    make_item: MakeItem,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    csrf = await sign_in(client, await make_token(**CURATOR))
    first, second = await make_item("pending"), await make_item("pending")
    done = await make_item("merged")
    answer = await client.post(
        "/console/items/bulk",
        data={"csrf_token": csrf, "action": "approve", "ids": [str(first), str(second), str(done)]},
    )
    assert answer.status_code == 200
    assert "2 of 3 done." in answer.text
    assert f"Item {done} cannot be approved" in answer.text
    assert [await status_of(session_factory, i) for i in (first, second, done)] == [
        "approved",
        "approved",
        "merged",
    ]


async def test_the_queue_counts_filters_and_searches(
    client: httpx.AsyncClient, make_token: MakeToken, make_item: MakeItem
) -> None:
    await sign_in(client, await make_token(**CURATOR))
    for _ in range(3):
        await make_item("pending")
    await make_item("approved")
    await make_item(
        "pending",
        data={"external_id": "x", "source_url": "https://feed.example.test/feed", "title": "Jazz"},
        duplicates=[{"kind": "near", "match": "item", "id": 1, "score": 0.7}],
    )
    queue = (await client.get("/console/items")).text
    assert re.search(r'data-status="pending">pending <span class="count">4</span>', queue)
    assert re.search(r'data-status="approved">approved <span class="count">1</span>', queue)
    assert queue.count('name="ids"') == 4
    found = (await client.get("/console/items", params={"q": "jaz"})).text
    assert found.count('name="ids"') == 1 and "Jazz" in found
    marked = (await client.get("/console/items", params={"duplicates": "yes"})).text
    assert marked.count('name="ids"') == 1
    none = (await client.get("/console/items", params={"q": "nothing-like-this"})).text
    assert "match these filters" in none


async def test_a_near_duplicate_is_shown_beside_its_match_with_differences(
    client: httpx.AsyncClient, make_token: MakeToken, make_item: MakeItem
) -> None:
    await sign_in(client, await make_token(**CURATOR))
    other = await make_item("pending")
    item = await make_item(
        "pending",
        data={
            "external_id": "it-1b",
            "source_url": "https://feed.example.test/feed",
            "title": "Item number 1",
            "starts_at": "2026-06-01T19:00:00Z",
        },
        duplicates=[{"kind": "near", "match": "item", "id": other, "score": 0.9}],
    )
    page = (await client.get(f"/console/items/{item}")).text
    diff = page[page.index('class="diff"') :]
    assert f"open item {other}" in page
    assert re.search(r'<tr class="differs"><th scope="row">external_id', diff)
    assert re.search(r'<tr class="same"><th scope="row">title', diff)


async def test_a_source_bound_token_sees_only_its_source(
    client: httpx.AsyncClient,
    make_token: MakeToken,
    make_item: MakeItem,
    make_source: MakeSource,
) -> None:
    mine, theirs = await make_source("mine"), await make_source("theirs")
    own = await make_item("pending", source_id=mine)
    other = await make_item("pending", source_id=theirs)
    await sign_in(client, await make_token(**CURATOR, source_id=mine))
    queue = (await client.get("/console/items")).text
    assert f'value="{own}"' in queue
    assert f'value="{other}"' not in queue
    assert "source " + str(mine) in queue  # the header says which source the token is bound to
    assert (await client.get(f"/console/items/{other}")).status_code == 404
    assert (await client.get(f"/console/items/{own}")).status_code == 200


async def test_a_retarget_to_an_unknown_type_shows_the_422_in_place(
    client: httpx.AsyncClient, make_token: MakeToken, make_item: MakeItem
) -> None:
    csrf = await sign_in(client, await make_token(**CURATOR))
    item = await make_item("pending")
    page = (await client.get(f"/console/items/{item}")).text
    assert '<option value="place">place</option>' in page
    assert '<option value="event">' not in page  # its own type is not offered
    answer = await client.post(
        f"/console/items/{item}/retarget", data={"csrf_token": csrf, "type": "nothing"}
    )
    assert answer.status_code == 422
    assert "The selected type is invalid." in answer.text


async def test_console_errors_are_pages_and_api_errors_stay_json(
    client: httpx.AsyncClient, make_token: MakeToken
) -> None:
    await sign_in(client, await make_token(**CURATOR))
    missing = await client.get("/console/items/999999")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("text/html")
    assert "Item 999999 not found." in missing.text
    nowhere = await client.get("/console/nowhere")
    assert nowhere.status_code == 404 and "No such page." in nowhere.text
    bad = await client.get("/console/items", params={"page": "x"})
    assert bad.status_code == 400 and "text/html" in bad.headers["content-type"]
    api = await client.get("/api/v1/ingest/items/999999")
    assert api.status_code == 404
    assert api.json() == {"message": "Item 999999 not found."}
