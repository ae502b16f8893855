"""Staging through the real pipeline (push → arq worker → items): manual vs auto approval, the
open item a repeated external id updates, and exact and near duplicate markers."""

from typing import Any

import httpx
import pytest

from tests.conftest import CreateImporter, RunWorker
from tests.items.conftest import (
    PREFIX,
    Headers,
    HeadersFor,
    MakeSource,
    Push,
    PushImporter,
    event,
)

FEED = "https://feed.example.test/feed"


async def items_of(client: httpx.AsyncClient, headers: Headers, query: str = "") -> list[Any]:
    response = await client.get(
        f"{PREFIX}/items?per_page=100&sort=id&order=asc&{query}", headers=headers
    )
    assert response.status_code == 200, response.text
    data: list[Any] = response.json()["data"]
    return data


async def show(client: httpx.AsyncClient, headers: Headers, item_id: int) -> dict[str, Any]:
    response = await client.get(f"{PREFIX}/items/{item_id}", headers=headers)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


@pytest.fixture
async def agent(
    push_importer: PushImporter, make_source: MakeSource, agent_headers: HeadersFor
) -> Headers:
    await push_importer("event", chunk_size=3)
    await push_importer("place")
    return await agent_headers(await make_source("feed"))


async def test_a_repeated_external_id_updates_the_open_item(
    client: httpx.AsyncClient,
    agent: Headers,
    push: Push,
    run_worker: RunWorker,
    curator_headers: Headers,
) -> None:
    await push("event", [event(1), event(2)], agent)
    await run_worker()
    first, _ = await items_of(client, curator_headers)
    sent_back = await client.post(
        f"{PREFIX}/items/{first['id']}/request-changes",
        json={"note": "Which venue?"},
        headers=curator_headers,
    )
    assert sent_back.status_code == 200

    second = await push("event", [event(1, venue_name="Old Harbour Hall")], agent)
    await run_worker()
    items = await items_of(client, curator_headers)
    assert len(items) == 2
    item = await show(client, curator_headers, first["id"])
    assert item["status"] == "pending"  # changed content goes back to review
    assert item["data"]["venue_name"] == "Old Harbour Hall"
    assert item["run_id"] == second.json()["data"]["run_id"]
    assert [(e["from"], e["to"]) for e in item["events"]] == [
        (None, "pending"),
        ("pending", "changes_requested"),
        ("changes_requested", "pending"),
    ]
    assert item["events"][-1]["note"] == f"Resubmitted by run {item['run_id']}."


async def test_an_unchanged_repeat_keeps_the_review_state(
    client: httpx.AsyncClient,
    agent: Headers,
    push: Push,
    run_worker: RunWorker,
    curator_headers: Headers,
) -> None:
    await push("event", [event(1)], agent)
    await run_worker()
    [item] = await items_of(client, curator_headers)
    await client.post(f"{PREFIX}/items/{item['id']}/approve", headers=curator_headers)

    await push("event", [event(1)], agent)
    await run_worker()
    [again] = await items_of(client, curator_headers)
    shown = await show(client, curator_headers, again["id"])
    assert (shown["id"], shown["status"]) == (item["id"], "approved")
    assert len(shown["events"]) == 2


async def test_the_last_row_of_an_external_id_wins_within_a_push(
    client: httpx.AsyncClient,
    agent: Headers,
    push: Push,
    run_worker: RunWorker,
    curator_headers: Headers,
) -> None:
    # chunk_size is 3: the repeats fall both within a chunk and across chunks.
    items = [
        event(1, city="A"),
        event(1, city="B"),
        event(2),
        event(1, city="C"),
        event(2, city="D"),
    ]
    await push("event", items, agent)
    await run_worker()
    listed = await items_of(client, curator_headers)
    assert {(i["external_id"], i["data"]["city"]) for i in listed} == {("ev-1", "C"), ("ev-2", "D")}


async def test_the_same_external_id_from_two_sources_is_two_items(
    client: httpx.AsyncClient,
    agent: Headers,
    make_source: MakeSource,
    agent_headers: HeadersFor,
    push: Push,
    run_worker: RunWorker,
    curator_headers: Headers,
) -> None:
    other = await agent_headers(await make_source("other"))
    await push("event", [event(1)], agent)
    await push("event", [event(1, source="https://other.example.test/feed")], other)
    await run_worker()
    listed = await items_of(client, curator_headers)
    assert sorted(i["source_id"] for i in listed) == [1, 2]


async def test_auto_approval_writes_records_and_manual_sources_stage(
    client: httpx.AsyncClient,
    push_importer: PushImporter,
    make_source: MakeSource,
    agent_headers: HeadersFor,
    push: Push,
    run_worker: RunWorker,
    curator_headers: Headers,
) -> None:
    await push_importer("event", approval="auto")
    trusted = await agent_headers(await make_source("trusted"))
    reviewed = await agent_headers(await make_source("reviewed", approval_mode="manual"))
    await push("event", [event(1, source="https://trusted.example.test/feed")], trusted)
    await push("event", [event(2, source="https://reviewed.example.test/feed")], reviewed)
    await run_worker()

    records = (await client.get(f"{PREFIX}/records/events", headers=curator_headers)).json()
    assert [r["key"] for r in records["data"]] == ["https://trusted.example.test/feed|ev-1"]
    [item] = await items_of(client, curator_headers)
    assert (item["external_id"], item["status"], item["source_id"]) == ("ev-2", "pending", 2)


async def test_an_item_is_marked_near_a_record_the_pipeline_wrote_by_its_title(
    client: httpx.AsyncClient,
    push_importer: PushImporter,
    make_source: MakeSource,
    agent_headers: HeadersFor,
    push: Push,
    run_worker: RunWorker,
    curator_headers: Headers,
) -> None:
    """Records written by a run (no review) are matched by the title column of their table."""
    await push_importer("event", approval="auto")
    trusted = await agent_headers(await make_source("trusted"))
    reviewed = await agent_headers(await make_source("reviewed", approval_mode="manual"))
    title = "Lisbon Summer Jazz Festival"
    await push(
        "event", [event(1, source="https://trusted.example.test/feed", title=title)], trusted
    )
    await run_worker()
    [record] = (await client.get(f"{PREFIX}/records/events", headers=curator_headers)).json()[
        "data"
    ]
    await push(
        "event",
        [event(2, source="https://reviewed.example.test/feed", title=f"{title} 2026")],
        reviewed,
    )
    await run_worker()
    [item] = await items_of(client, curator_headers)
    [marker] = item["duplicates"]
    assert (marker["kind"], marker["match"], marker["id"]) == ("near", "record", record["id"])
    assert 0.6 < marker["score"] < 1


TIP = {
    "slug": "tip",
    "collection": "tips",
    "source": {"type": "push"},
    "approval": "manual",
    "title_field": "title",
    "fields": {"title": {"type": "string", "required": True}, "body": {"type": "string"}},
}


async def test_exact_duplicate_markers_for_items_and_records(
    client: httpx.AsyncClient,
    create_importer: CreateImporter,
    push: Push,
    run_worker: RunWorker,
    admin_headers: Headers,
    curator_headers: Headers,
) -> None:
    # An append importer: no key, no external id, so identical items pile up.
    await create_importer(**TIP, action="append")
    tip = {"title": "Take the 28 tram early", "body": "Before 9 it is empty."}
    await push("tip", [tip, tip, {"title": "Something else entirely"}], admin_headers)
    await run_worker()
    a, b, c = await items_of(client, curator_headers)
    exact = {"kind": "exact", "match": "item", "score": 1.0}
    assert a["duplicates"] == [{**exact, "id": b["id"]}]
    assert b["duplicates"] == [{**exact, "id": a["id"]}]
    assert c["duplicates"] == []

    for action in ("approve", "promote"):
        response = await client.post(f"{PREFIX}/items/{a['id']}/{action}", headers=curator_headers)
        assert response.status_code == 200, response.text
    await client.post(f"{PREFIX}/items/{b['id']}/reject", headers=curator_headers)
    [record] = (await client.get(f"{PREFIX}/records/tips", headers=curator_headers)).json()["data"]
    await push("tip", [tip], admin_headers)
    await run_worker()
    *_, d = await items_of(client, curator_headers)
    # Merged and rejected items are no longer open: only the record matches.
    assert d["duplicates"] == [{**exact, "match": "record", "id": record["id"]}]
    flagged = await items_of(client, curator_headers, "has_duplicates=true")
    assert [i["id"] for i in flagged] == [a["id"], b["id"], d["id"]]


async def test_a_keyed_item_identical_to_its_record_is_not_staged_again(
    client: httpx.AsyncClient,
    create_importer: CreateImporter,
    push: Push,
    run_worker: RunWorker,
    admin_headers: Headers,
    curator_headers: Headers,
) -> None:
    await create_importer(**TIP, key=["title"])
    tip = {"title": "Take the 28 tram early", "body": "Before 9 it is empty."}
    await push("tip", [tip], admin_headers)
    await run_worker()
    [item] = await items_of(client, curator_headers)
    for action in ("approve", "promote"):
        await client.post(f"{PREFIX}/items/{item['id']}/{action}", headers=curator_headers)

    again = await push("tip", [tip], admin_headers)
    await run_worker()
    run_id = again.json()["data"]["run_id"]
    run = (await client.get(f"{PREFIX}/{run_id}", headers=admin_headers)).json()["data"]
    assert run["summary"]["unchanged"] == 1 and run["summary"]["staged"] == 0
    assert len(await items_of(client, curator_headers)) == 1


async def test_near_duplicate_markers_by_title(
    client: httpx.AsyncClient,
    agent: Headers,
    push: Push,
    run_worker: RunWorker,
    curator_headers: Headers,
) -> None:
    await push(
        "event",
        [
            event(1, title="Lisbon Summer Jazz Festival"),
            event(2, title="Harbour lantern parade"),
        ],
        agent,
    )
    await run_worker()
    jazz, lanterns = await items_of(client, curator_headers)
    for action in ("approve", "promote"):
        await client.post(f"{PREFIX}/items/{jazz['id']}/{action}", headers=curator_headers)
    record = (await client.get(f"{PREFIX}/records/events", headers=curator_headers)).json()["data"]

    await push(
        "event",
        [
            event(3, title="Lisbon Summer Jazz Festival 2026"),
            event(4, title="Harbour Lantern Parade!"),
        ],
        agent,
    )
    await run_worker()
    *_, jazz2, lanterns2 = await items_of(client, curator_headers)
    [marker] = jazz2["duplicates"]
    assert (marker["kind"], marker["match"], marker["id"]) == ("near", "record", record[0]["id"])
    assert 0.6 < marker["score"] < 1
    [marker] = lanterns2["duplicates"]
    assert (marker["kind"], marker["match"], marker["id"]) == ("near", "item", lanterns["id"])
    assert 0.6 < marker["score"] <= 1


async def test_retarget_recomputes_the_markers(
    client: httpx.AsyncClient,
    agent: Headers,
    push: Push,
    run_worker: RunWorker,
    curator_headers: Headers,
) -> None:
    place = {"external_id": "p-1", "name": "Old Harbour Lighthouse"}
    await push("place", [place], agent)
    await run_worker()
    await push("event", [event(1, title="Old Harbour Lighthouse Tour")], agent)
    await run_worker()
    lighthouse, tour = await items_of(client, curator_headers)
    assert tour["duplicates"] == []  # another type: not compared

    response = await client.post(
        f"{PREFIX}/items/{tour['id']}/retarget", json={"type": "place"}, headers=curator_headers
    )
    assert response.status_code == 200, response.text
    [marker] = response.json()["data"]["duplicates"]
    assert (marker["kind"], marker["match"], marker["id"]) == ("near", "item", lighthouse["id"])


async def test_a_record_written_before_review_began_is_a_near_match_by_key(
    client: httpx.AsyncClient,
    push_importer: PushImporter,
    make_source: MakeSource,
    agent_headers: HeadersFor,
    push: Push,
    run_worker: RunWorker,
    admin_headers: Headers,
    curator_headers: Headers,
) -> None:
    await push_importer("event", approval="auto")
    source_id = await make_source("feed")
    agent = await agent_headers(source_id)
    await push("event", [event(1, title="Lisbon Summer Jazz Festival")], agent)
    await run_worker()
    [record] = (await client.get(f"{PREFIX}/records/events", headers=admin_headers)).json()["data"]

    # The source is put under review; the agent then sends the same event, retitled.
    response = await client.put(
        f"{PREFIX}/sources/{source_id}", json={"approval_mode": "manual"}, headers=admin_headers
    )
    assert response.status_code == 200
    await push("event", [event(1, title="Lisbon Summer Jazz Festival 2026")], agent)
    await run_worker()
    [item] = await items_of(client, curator_headers)
    [marker] = item["duplicates"]
    assert (marker["kind"], marker["match"], marker["id"]) == ("near", "record", record["id"])
