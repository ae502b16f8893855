"""A source's data stays its own: a source-bound token cannot reach another source's records,
whatever it spells, whatever importer it defines, and whether a run writes, replaces or a
curator promotes."""

from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.conftest import MakeToken, RunWorker
from tests.items.conftest import (
    PREFIX,
    Headers,
    HeadersFor,
    MakeItem,
    MakeSource,
    Push,
    PushImporter,
    bearer,
    count,
    event,
)

A_URL = "https://a.example.test/feed"
B_URL = "https://b.example.test/feed"


@pytest.fixture
async def sources(make_source: MakeSource) -> tuple[int, int]:
    return await make_source("a"), await make_source("b")


async def records(client: httpx.AsyncClient, headers: Headers, collection: str) -> list[Any]:
    response = await client.get(f"{PREFIX}/records/{collection}?per_page=100", headers=headers)
    assert response.status_code == 200, response.text
    data: list[Any] = response.json()["data"]
    return sorted(data, key=lambda record: record["key"])


async def run_of(client: httpx.AsyncClient, headers: Headers, response: httpx.Response) -> Any:
    assert response.status_code == 202, response.text
    run_id = response.json()["data"]["run_id"]
    return (await client.get(f"{PREFIX}/{run_id}", headers=headers)).json()["data"]


@pytest.mark.parametrize("spelling", ["Source_URL", "source-url", "Source Url", "source_url "])
async def test_a_respelled_source_url_cannot_push_into_another_source(
    spelling: str,
    client: httpx.AsyncClient,
    push_importer: PushImporter,
    sources: tuple[int, int],
    agent_headers: HeadersFor,
    push: Push,
    run_worker: RunWorker,
    admin_headers: Headers,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    a, b = sources
    await push_importer("event", approval="auto")
    b_agent = await agent_headers(b)
    assert (await push("event", event(1, source=B_URL), b_agent)).status_code == 202
    await run_worker()
    before = await records(client, b_agent, "events")

    hijack = {k: v for k, v in event(1, title="HIJACKED").items() if k != "source_url"}
    response = await push("event", {**hijack, spelling: B_URL}, await agent_headers(a))

    assert response.status_code == 403
    assert response.json()["message"] == (
        f"The item.{spelling} does not match the token's source ({A_URL}). Nothing was stored."
    )
    assert await count(session_factory, "SELECT count(*) FROM runs") == 1
    assert await records(client, b_agent, "events") == before
    assert before[0]["source_id"] == b


async def test_a_source_url_in_another_form_is_the_sources_own_record_key(
    client: httpx.AsyncClient,
    push_importer: PushImporter,
    sources: tuple[int, int],
    agent_headers: HeadersFor,
    push: Push,
    run_worker: RunWorker,
) -> None:
    a, _ = sources
    await push_importer("event", approval="auto")
    agent = await agent_headers(a)
    first = {k: v for k, v in event(1).items() if k != "source_url"}
    response = await push(
        "event", {**first, "Source-URL": "HTTPS://A.Example.Test:443/feed/"}, agent
    )
    assert response.status_code == 202, response.text
    await run_worker()
    response = await push("event", event(1, source=A_URL), agent)
    await run_worker()

    run = await run_of(client, agent, response)
    assert (run["status"], run["summary"]["unchanged"]) == ("completed", 1)
    [record] = await records(client, agent, "events")
    assert record["key"] == f"{A_URL}|ev-1"
    assert record["data"]["source_url"] == A_URL
    assert record["source_id"] == a


def feed_importer(slug: str, source_id: int, **overrides: Any) -> dict[str, Any]:
    """An upload importer of source `source_id` on `events`, keyed as the collection is, whose
    `source_url` reads a `feed` column of its files: a file can name another source's record
    keys, which is what the writer must refuse (pushes check the source url before that)."""
    return {
        "slug": slug,
        "format": "ndjson",
        "source_id": source_id,
        "collection": "events",
        "key": ["source_url", "external_id"],
        "fields": {
            "source_url": {"from": "feed", "type": "string", "required": True},
            "external_id": {"type": "string", "required": True},
            "title": {"type": "string"},
        },
        **overrides,
    }


async def upload_items(
    client: httpx.AsyncClient, headers: Headers, slug: str, items: list[dict[str, Any]]
) -> httpx.Response:
    body = "".join(orjson.dumps(item).decode() + "\n" for item in items)
    response = await client.post(
        f"{PREFIX}/upload/{slug}", files={"file": ("items.ndjson", body)}, headers=headers
    )
    assert response.status_code == 202, response.text
    return response


async def uploaded_run(
    client: httpx.AsyncClient, headers: Headers, response: httpx.Response
) -> Any:
    run_id = response.json()["data"]["id"]
    return (await client.get(f"{PREFIX}/{run_id}", headers=headers)).json()["data"]


@pytest.fixture
async def b_records(
    client: httpx.AsyncClient,
    push_importer: PushImporter,
    sources: tuple[int, int],
    agent_headers: HeadersFor,
    push: Push,
    run_worker: RunWorker,
) -> list[Any]:
    """Three records of source B in `events`."""
    _, b = sources
    await push_importer("event", approval="auto")
    b_agent = await agent_headers(b)
    response = await push("event", [event(n, source=B_URL) for n in (1, 2, 3)], b_agent)
    assert response.status_code == 202
    await run_worker()
    found = await records(client, b_agent, "events")
    assert [r["source_id"] for r in found] == [b, b, b]
    return found


@pytest.fixture
async def a_admin(make_token: MakeToken, sources: tuple[int, int]) -> Headers:
    return bearer(await make_token(role="admin", abilities=["ingest:admin"], source_id=sources[0]))


async def test_a_source_bound_admin_cannot_overwrite_another_sources_records(
    client: httpx.AsyncClient,
    b_records: list[Any],
    a_admin: Headers,
    sources: tuple[int, int],
    run_worker: RunWorker,
    admin_headers: Headers,
) -> None:
    a, _ = sources
    created = await client.post(
        f"{PREFIX}/importers", json=feed_importer("a-raid", a), headers=a_admin
    )
    assert created.status_code == 201, created.text
    items = [
        {"feed": B_URL, "external_id": "ev-1", "title": "HIJACKED"},
        {"feed": A_URL, "external_id": "ev-9", "title": "Our own"},
    ]
    response = await upload_items(client, a_admin, "a-raid", items)
    await run_worker()

    run = await uploaded_run(client, a_admin, response)
    assert (run["status"], run["progress"]["failed"]) == ("completed_with_errors", 1)
    assert run["summary"]["created"] == 1
    rows = (await client.get(f"{PREFIX}/{run['id']}/rows?status=failed", headers=a_admin)).json()
    assert rows["data"][0]["errors"]["message"] == (
        f"The record '{B_URL}|ev-1' belongs to another source: a run of source {a} cannot "
        "change it."
    )
    after = await records(client, admin_headers, "events")
    assert [r for r in after if r["source_id"] != a] == b_records
    assert [r["key"] for r in after if r["source_id"] == a] == [f"{A_URL}|ev-9"]


async def test_replace_deletes_only_the_runs_own_source_records(
    client: httpx.AsyncClient,
    b_records: list[Any],
    a_admin: Headers,
    sources: tuple[int, int],
    run_worker: RunWorker,
    admin_headers: Headers,
) -> None:
    a, _ = sources
    definition = feed_importer("a-replace", a, action="replace")
    assert (
        await client.post(f"{PREFIX}/importers", json=definition, headers=a_admin)
    ).status_code == 201
    own = [{"feed": A_URL, "external_id": f"a-{n}"} for n in (1, 2)]
    first = await upload_items(client, a_admin, "a-replace", own)
    await run_worker()
    assert (await uploaded_run(client, a_admin, first))["summary"]["deleted"] == 0

    response = await upload_items(client, a_admin, "a-replace", own[:1])
    await run_worker()

    run = await uploaded_run(client, a_admin, response)
    assert (run["status"], run["summary"]["deleted"]) == ("completed", 1)
    after = await records(client, admin_headers, "events")
    assert [r for r in after if r["source_id"] != a] == b_records
    assert [r["key"] for r in after if r["source_id"] == a] == [f"{A_URL}|a-1"]


async def test_an_item_of_one_source_cannot_be_promoted_over_another_sources_record(
    client: httpx.AsyncClient,
    b_records: list[Any],
    sources: tuple[int, int],
    make_item: MakeItem,
    curator_headers: Headers,
    admin_headers: Headers,
) -> None:
    a, _ = sources
    target = b_records[0]
    data = {**target["data"], "title": "HIJACKED"}
    item_id = await make_item("approved", data=data, source_id=a, key=target["key"], run_id=None)

    response = await client.post(f"{PREFIX}/items/{item_id}/promote", headers=curator_headers)

    assert response.status_code == 409
    assert response.json()["message"] == (
        f"Record '{target['key']}' of events belongs to another source: an item of source {a} "
        "cannot change it."
    )
    item = (await client.get(f"{PREFIX}/items/{item_id}", headers=admin_headers)).json()["data"]
    assert item["status"] == "approved"
    assert await records(client, admin_headers, "events") == b_records


async def test_a_source_cannot_resubmit_another_sources_open_item(
    client: httpx.AsyncClient,
    create_importer: Any,
    sources: tuple[int, int],
    agent_headers: HeadersFor,
    run_worker: RunWorker,
    admin_headers: Headers,
) -> None:
    a, b = sources
    # An unbound push importer whose key reads a `feed` column, not the source url.
    await create_importer(
        slug="shared",
        format="ndjson",
        source={"type": "push"},
        collection="shared_events",
        key=["feed", "external_id"],
        approval="manual",
        fields={
            "feed": {"type": "string", "required": True},
            "external_id": {"type": "string", "required": True},
            "title": {"type": "string"},
        },
    )
    url = f"{PREFIX}/items/shared"
    item = {"feed": B_URL, "external_id": "ev-1", "title": "B's own"}
    await client.post(url, json={"item": item}, headers=await agent_headers(b))
    await run_worker()
    before = (await client.get(f"{PREFIX}/items", headers=admin_headers)).json()["data"]
    assert [(i["source_id"], i["status"]) for i in before] == [(b, "pending")]

    a_agent = await agent_headers(a)
    hijack = {**item, "title": "HIJACKED"}
    response = await client.post(url, json={"item": hijack}, headers=a_agent)
    await run_worker()

    run = await run_of(client, a_agent, response)
    assert (run["status"], run["progress"]["failed"]) == ("completed_with_errors", 1)
    rows = (await client.get(f"{PREFIX}/{run['id']}/rows", headers=a_agent)).json()["data"]
    assert rows[0]["errors"]["message"] == (
        f"The open item of key '{B_URL}|ev-1' belongs to another source: a run of source {a} "
        "cannot change it."
    )
    after = (await client.get(f"{PREFIX}/items", headers=admin_headers)).json()["data"]
    assert after == before
