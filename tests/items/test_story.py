"""End to end: an admin provisions an n8n agent, the agent pushes 500 events, a curator
reviews some of them, and the records store and the items say exactly what happened."""

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.conftest import RunWorker
from tests.items.conftest import PREFIX, Headers, PushImporter, bearer, count, event

SOURCE_URL = "https://agenda.example.test/events"


async def test_agent_pushes_500_items_and_a_curator_reviews_them(
    client: httpx.AsyncClient,
    push_importer: PushImporter,
    run_worker: RunWorker,
    admin_headers: Headers,
    curator_headers: Headers,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    # The admin sets up the source, its agent token and the event importer (100-row chunks,
    # so the 500 items are applied by concurrent chunk jobs).
    source = await client.post(
        f"{PREFIX}/sources",
        json={"name": "City agenda", "source_url": SOURCE_URL, "approval_mode": "manual"},
        headers=admin_headers,
    )
    assert source.status_code == 201, source.text
    source_id = source.json()["data"]["id"]
    issued = await client.post(f"{PREFIX}/sources/{source_id}/tokens", headers=admin_headers)
    assert issued.status_code == 201, issued.text
    agent = bearer(issued.json()["data"]["token"])
    await push_importer("event", chunk_size=100)

    # The agent pushes 500 items in two requests, as an n8n workflow would page them.
    run_ids = []
    for page in (range(0, 300), range(300, 500)):
        response = await client.post(
            f"{PREFIX}/items/event",
            json={"items": [event(n, source=SOURCE_URL) for n in page]},
            headers={**agent, "Idempotency-Key": f"agenda-{page.start}"},
        )
        assert response.status_code == 202, response.text
        data = response.json()["data"]
        assert (data["queued"], data["source_id"]) == (len(page), source_id)
        run_ids.append(data["run_id"])
    await run_worker()

    for run_id in run_ids:
        run = (await client.get(f"{PREFIX}/{run_id}", headers=admin_headers)).json()["data"]
        assert run["status"] == "completed", run
        assert run["progress"]["failed"] == 0
    pending = await client.get(f"{PREFIX}/items?status=pending&per_page=100", headers=agent)
    assert pending.json()["meta"]["total"] == 500  # the agent sees its own source's items

    # The curator works through the oldest items: promote 10, reject 5, send 5 back.
    ids = []
    for page_no in (1, 2, 3, 4, 5):
        listed = await client.get(
            f"{PREFIX}/items?status=pending&sort=id&order=asc&per_page=100&page={page_no}",
            headers=curator_headers,
        )
        ids += [item["id"] for item in listed.json()["data"]]
    assert len(ids) == len(set(ids)) == 500
    promoted, rejected, sent_back = ids[:10], ids[10:15], ids[15:20]
    for item_id in promoted:
        for action in ("approve", "promote"):
            response = await client.post(
                f"{PREFIX}/items/{item_id}/{action}", headers=curator_headers
            )
            assert response.status_code == 200, response.text
    for item_id in rejected:
        response = await client.post(
            f"{PREFIX}/items/{item_id}/reject",
            json={"reason": "Duplicate listing."},
            headers=curator_headers,
        )
        assert response.status_code == 200, response.text
    for item_id in sent_back:
        response = await client.post(
            f"{PREFIX}/items/{item_id}/request-changes",
            json={"note": "Add the venue, please."},
            headers=curator_headers,
        )
        assert response.status_code == 200, response.text

    # The records store holds exactly the ten promoted items.
    records = (
        await client.get(f"{PREFIX}/records/events?per_page=100", headers=curator_headers)
    ).json()
    assert records["meta"]["total"] == 10
    by_id = {record["id"]: record for record in records["data"]}
    for item_id in promoted:
        item = (await client.get(f"{PREFIX}/items/{item_id}", headers=curator_headers)).json()
        item = item["data"]
        assert item["status"] == "merged"
        record = by_id[item["record_id"]]
        assert record["key"] == item["key"] == f"{SOURCE_URL}|{item['external_id']}"
        assert record["data"] == item["data"]
        assert record["source_id"] == source_id
        assert [(e["from"], e["to"]) for e in item["events"]] == [
            (None, "pending"),
            ("pending", "approved"),
            ("approved", "merged"),
        ]

    # And every item is where the curator left it.
    async def total(query: str) -> int:
        response = await client.get(f"{PREFIX}/items?{query}", headers=curator_headers)
        return int(response.json()["meta"]["total"])

    assert await total("status=merged") == 10
    assert await total("status=rejected") == 5
    assert await total("status=changes_requested") == 5
    assert await total("status=pending") == 480
    assert await total(f"source={source_id}") == 500
    for status, chosen in (("rejected", rejected), ("changes_requested", sent_back)):
        listed = await client.get(
            f"{PREFIX}/items?status={status}&sort=id&order=asc", headers=curator_headers
        )
        assert [item["id"] for item in listed.json()["data"]] == chosen
    # Staging events for 500 items, then 2 per promotion and 1 per other decision.
    assert await count(session_factory, "SELECT count(*) FROM item_events") == 500 + 20 + 10
    assert await count(session_factory, "SELECT count(*) FROM ingest_data.events") == 10
