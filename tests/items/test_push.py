"""POST /items/{type}: envelopes, the item limit, hostile JSON, the source scope, paused
sources and Idempotency-Key. A refused push stores nothing: no run, no file."""

from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.conftest import MakeToken, RunWorker
from tests.items.conftest import (
    PREFIX,
    Headers,
    HeadersFor,
    MakeSource,
    Push,
    PushImporter,
    bearer,
    count,
    event,
)

FEED = "https://feed.example.test/feed"


def stored_files(storage_dir: Path) -> set[Path]:
    return {path for path in storage_dir.rglob("*") if path.is_file()}


@pytest.fixture
async def agent(
    push_importer: PushImporter, make_source: MakeSource, agent_headers: HeadersFor
) -> Headers:
    """The `event` importer and an agent token bound to the `feed` source."""
    await push_importer("event")
    return await agent_headers(await make_source("feed"))


async def nothing_stored(
    session_factory: async_sessionmaker[AsyncSession], storage_dir: Path, before: set[Path]
) -> None:
    assert await count(session_factory, "SELECT count(*) FROM runs") == 0
    assert await count(session_factory, "SELECT count(*) FROM items") == 0
    assert stored_files(storage_dir) == before


async def test_single_item_envelope_is_accepted_as_a_push_run(
    client: httpx.AsyncClient,
    agent: Headers,
    push: Push,
    admin_headers: Headers,
    storage_dir: Path,
) -> None:
    response = await push("event", event(1), agent)
    assert response.status_code == 202, response.text
    data = response.json()["data"]
    assert data == {"queued": 1, "source_id": 1, "run_id": data["run_id"]}

    run = (await client.get(f"{PREFIX}/{data['run_id']}", headers=admin_headers)).json()["data"]
    assert (run["kind"], run["importer"], run["source_id"]) == ("push", "event", 1)
    assert run["original_filename"] == "push-event.ndjson"


async def test_items_envelope_is_staged_by_the_worker(
    client: httpx.AsyncClient,
    agent: Headers,
    push: Push,
    run_worker: RunWorker,
    admin_headers: Headers,
) -> None:
    response = await push("event", [event(1), event(2), event(3)], agent)
    assert response.status_code == 202, response.text
    assert response.json()["data"]["queued"] == 3
    await run_worker()

    run_id = response.json()["data"]["run_id"]
    run = (await client.get(f"{PREFIX}/{run_id}", headers=admin_headers)).json()["data"]
    assert run["status"] == "completed"
    assert run["summary"]["staged"] == 3
    listed = (await client.get(f"{PREFIX}/items?run={run_id}", headers=admin_headers)).json()
    assert sorted(i["external_id"] for i in listed["data"]) == ["ev-1", "ev-2", "ev-3"]
    assert {i["status"] for i in listed["data"]} == {"pending"}
    assert {i["source_id"] for i in listed["data"]} == {1}


async def test_the_item_limit_is_inclusive(agent: Headers, push: Push) -> None:
    items = [{"external_id": f"e{n}"} for n in range(1000)]
    response = await push("event", items, agent)
    assert response.status_code == 202, response.text
    assert response.json()["data"]["queued"] == 1000


async def test_more_items_than_the_limit_is_413_and_stores_nothing(
    agent: Headers,
    push: Push,
    session_factory: async_sessionmaker[AsyncSession],
    storage_dir: Path,
) -> None:
    before = stored_files(storage_dir)
    response = await push("event", [{"external_id": f"e{n}"} for n in range(1001)], agent)
    assert response.status_code == 413
    assert response.json()["message"] == "Too many items: at most 1,000 per request, got 1,001."
    await nothing_stored(session_factory, storage_dir, before)


def nested(depth: int) -> dict[str, Any]:
    """An object nested ``depth`` levels deep, itself being level 1."""
    value: dict[str, Any] = {"leaf": True}
    for _ in range(depth - 1):
        value = {"child": value}
    return value


HOSTILE: list[Any] = [
    pytest.param(b'{"items": [' + b'{"a":' * 65 + b"1" + b"}" * 65 + b"]}", id="depth-65"),
    pytest.param(b'{"items": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}", id="depth-100000"),
    pytest.param(b'{"item": {"n": ' + b"9" * 4301 + b"}}", id="integer-4301-digits"),
    pytest.param(b'{"item": {"n": -' + b"9" * 5000 + b"}}", id="integer-5000-digits"),
    pytest.param(b'{"item": {"n": NaN}}', id="nan"),
    pytest.param(b'{"item": {"n": Infinity}}', id="infinity"),
    pytest.param(b'{"item": {"n": [-Infinity]}}', id="minus-infinity"),
    pytest.param(b'{"item": {"n": 1e999}}', id="float-overflow"),
    pytest.param(b'{"items": [{"a": 1}, 2]}', id="number-item"),
    pytest.param(b'{"items": ["text"]}', id="string-item"),
    pytest.param(b'{"items": [null]}', id="null-item"),
    pytest.param(b'{"items": [[{"a": 1}]]}', id="array-item"),
    pytest.param(b'{"item": [1, 2]}', id="array-as-item"),
    pytest.param(b'{"items": {"a": 1}}', id="items-not-array"),
    pytest.param(b'{"items": []}', id="no-items"),
    pytest.param(b"[{}]", id="array-body"),
    pytest.param(b"{}", id="empty-object"),
    pytest.param(b'{"item": {}, "items": [{}]}', id="both-envelopes"),
    pytest.param(b"", id="empty-body"),
    pytest.param(b'{"item": {"a": 1}', id="truncated"),
    pytest.param(b'{"item": {"a": "\xff"}}', id="not-utf8"),
    pytest.param(b'{"item": {"a": "x\\u0000y"}}', id="nul-character"),
    pytest.param(b'{"item": {"a": "\\ud800"}}', id="lone-surrogate"),
    pytest.param(b'{"item": {"\\udfff": 1}}', id="lone-surrogate-key"),
]


@pytest.mark.parametrize("body", HOSTILE)
async def test_hostile_json_is_422_and_stores_nothing(
    client: httpx.AsyncClient,
    agent: Headers,
    body: bytes,
    session_factory: async_sessionmaker[AsyncSession],
    storage_dir: Path,
) -> None:
    before = stored_files(storage_dir)
    response = await client.post(
        f"{PREFIX}/items/event",
        content=body,
        headers={**agent, "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    payload = response.json()
    assert payload["message"] and payload["errors"]
    await nothing_stored(session_factory, storage_dir, before)


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (b'{"items": [{"a": 1}, 2]}', "items.1", "The items.1 must be an object."),
        (
            b'{"item": {"n": ' + b"1" * 4301 + b"}}",
            "body",
            "The request body was refused: an integer has more than 4,300 digits.",
        ),
        (b'{"item": {"n": NaN}}', "body", "The request body was refused: NaN is not valid JSON."),
        (
            b'{"items": [{}, ' + b'{"a":' * 65 + b"1" + b"}" * 65 + b"]}",
            "items.1",
            "The items.1 is nested deeper than 64 levels.",
        ),
        (b"{}", "items", "The items field is required when item is not present."),
    ],
)
async def test_hostile_json_messages_name_the_problem(
    client: httpx.AsyncClient, agent: Headers, body: bytes, field: str, message: str
) -> None:
    response = await client.post(f"{PREFIX}/items/event", content=body, headers=agent)
    assert response.status_code == 422
    assert response.json() == {"message": message, "errors": {field: [message]}}


async def test_the_limits_themselves_are_accepted(agent: Headers, push: Push) -> None:
    """64 levels and 64-bit integers are allowed (the pipeline then judges the values)."""
    deep = await push("event", [{**event(1), "extra": nested(63)}], agent)
    assert deep.status_code == 202, deep.text
    wide = await push("event", [{**event(2), "n": 2**63 - 1, "m": [-(2**63)]}], agent)
    assert wide.status_code == 202, wide.text


INT64 = "between -9223372036854775808 and 9223372036854775807 (send larger numbers as strings)"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            b'{"items": [{"external_id": "a", "title": "Good one", "n": 1'
            + b"0" * 400
            + b'}, {"external_id": "b", "title": "Another"}]}',
            "items.0.n",
        ),
        (b'{"items": [{"external_id": "a"}, {"n": 9223372036854775808}]}', "items.1.n"),
        (b'{"item": {"a": {"b": [1, -' + b"9" * 4300 + b"]}}}", "item.a.b.1"),
    ],
    ids=["400-digits", "2**63", "4300-digits-nested"],
)
async def test_an_integer_past_64_bits_is_422_naming_the_item_and_field(
    client: httpx.AsyncClient,
    agent: Headers,
    body: bytes,
    field: str,
    session_factory: async_sessionmaker[AsyncSession],
    storage_dir: Path,
) -> None:
    """The pipeline reads and writes 64-bit integers only: a wider one would fail its run."""
    before = stored_files(storage_dir)
    response = await client.post(f"{PREFIX}/items/event", content=body, headers=agent)
    assert response.status_code == 422, response.text
    message = f"The {field} must be {INT64}."
    assert response.json() == {"message": message, "errors": {field: [message]}}
    await nothing_stored(session_factory, storage_dir, before)


async def test_items_at_the_64_bit_limits_are_staged_by_the_worker(
    client: httpx.AsyncClient,
    agent: Headers,
    push: Push,
    run_worker: RunWorker,
    admin_headers: Headers,
) -> None:
    items = [{**event(1), "n": 2**63 - 1}, {**event(2), "n": -(2**63)}]
    response = await push("event", items, agent)
    assert response.status_code == 202, response.text
    await run_worker()

    run_id = response.json()["data"]["run_id"]
    run = (await client.get(f"{PREFIX}/{run_id}", headers=admin_headers)).json()["data"]
    assert run["status"] == "completed", run["error_message"]
    listed = (await client.get(f"{PREFIX}/items?run={run_id}", headers=admin_headers)).json()
    assert sorted(item["original"]["n"] for item in listed["data"]) == [-(2**63), 2**63 - 1]


async def test_a_foreign_source_url_is_403_and_stores_nothing(
    agent: Headers,
    push: Push,
    session_factory: async_sessionmaker[AsyncSession],
    storage_dir: Path,
) -> None:
    before = stored_files(storage_dir)
    items = [event(1), event(2, source="https://other.example.test/feed"), event(3)]
    response = await push("event", items, agent)
    assert response.status_code == 403
    assert response.json()["message"] == (
        f"The items.1.source_url does not match the token's source ({FEED}). Nothing was stored."
    )
    await nothing_stored(session_factory, storage_dir, before)


async def test_source_urls_are_compared_in_canonical_form(
    agent: Headers,
    push: Push,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: Headers,
) -> None:
    items = [
        event(1, source="HTTPS://Feed.Example.Test:443/feed/"),
        event(2, source="https://feed.example.test/feed#latest"),
        {k: v for k, v in event(3).items() if k != "source_url"},  # the token's source
    ]
    response = await push("event", items, agent)
    assert response.status_code == 202, response.text
    await run_worker()
    listed = (await client.get(f"{PREFIX}/items", headers=admin_headers)).json()["data"]
    by_id = {item["external_id"]: item for item in listed}
    assert by_id["ev-3"]["data"]["source_url"] == FEED
    assert by_id["ev-3"]["key"] == f"{FEED}|ev-3"


async def test_an_unbound_token_pushes_for_the_importer_source(
    push_importer: PushImporter,
    make_source: MakeSource,
    push: Push,
    admin_headers: Headers,
) -> None:
    await push_importer("event")
    response = await push(
        "event", [event(1, source="https://anywhere.example.test")], admin_headers
    )
    assert response.status_code == 202
    assert response.json()["data"]["source_id"] is None

    source_id = await make_source("bound")
    await push_importer("place", source_id=source_id)
    place = {"external_id": "p1", "name": "Old lighthouse", "source_url": FEED}
    response = await push("place", [place], admin_headers)
    assert response.json()["data"]["source_id"] == source_id


async def test_a_paused_source_gets_409_and_stores_nothing(
    client: httpx.AsyncClient,
    push_importer: PushImporter,
    make_source: MakeSource,
    agent_headers: HeadersFor,
    push: Push,
    admin_headers: Headers,
    session_factory: async_sessionmaker[AsyncSession],
    storage_dir: Path,
) -> None:
    await push_importer("event")
    source_id = await make_source("feed")
    agent = await agent_headers(source_id)
    paused = await client.post(f"{PREFIX}/sources/{source_id}/pause", headers=admin_headers)
    assert paused.status_code == 200, paused.text

    before = stored_files(storage_dir)
    response = await push("event", [event(1)], agent)
    assert response.status_code == 409
    assert response.json()["message"] == (
        f"Source {source_id} (feed) is paused: it takes no items until it is resumed."
    )
    await nothing_stored(session_factory, storage_dir, before)

    await client.post(f"{PREFIX}/sources/{source_id}/resume", headers=admin_headers)
    assert (await push("event", [event(1)], agent)).status_code == 202


async def test_idempotency_key_replays_the_original_response(
    agent: Headers, push: Push, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    headers = {**agent, "Idempotency-Key": "n8n-exec-42"}
    first = await push("event", [event(1), event(2)], headers)
    assert first.status_code == 202
    again = await push("event", [event(1), event(2)], headers)
    assert again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    # The same items with their keys in another order are the same body.
    reordered = [dict(reversed(list(event(n).items()))) for n in (1, 2)]
    assert (await push("event", reordered, headers)).json() == first.json()
    assert await count(session_factory, "SELECT count(*) FROM runs") == 1


async def test_idempotency_key_with_another_body_is_422(
    agent: Headers, push: Push, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    headers = {**agent, "Idempotency-Key": "n8n-exec-43"}
    assert (await push("event", [event(1)], headers)).status_code == 202
    response = await push("event", [event(2)], headers)
    assert response.status_code == 422
    assert response.json()["errors"] == {
        "Idempotency-Key": ["The Idempotency-Key was already used with a different request body."]
    }
    assert await count(session_factory, "SELECT count(*) FROM runs") == 1


async def test_unknown_and_non_push_importers(
    push_importer: PushImporter,
    make_source: MakeSource,
    agent_headers: HeadersFor,
    create_importer: Any,
    push: Push,
    admin_headers: Headers,
) -> None:
    assert (await push("nope", [event(1)], admin_headers)).status_code == 404
    await create_importer(slug="users", key=["email"], fields={"email": {"type": "email"}})
    response = await push("users", [{"email": "a@example.test"}], admin_headers)
    assert response.status_code == 422
    assert response.json()["message"] == (
        "Importer 'users' takes no pushed items (its source is upload)."
    )
    # An importer bound to another source is invisible to a source-bound token.
    mine, theirs = await make_source("mine"), await make_source("theirs")
    await push_importer("place", source_id=theirs)
    place = {"external_id": "p1", "name": "Old lighthouse"}
    assert (await push("place", [place], await agent_headers(mine))).status_code == 404


async def test_push_needs_the_create_ability(
    agent: Headers, push: Push, make_token: MakeToken
) -> None:
    viewer = bearer(await make_token(role="viewer", abilities=["ingest:view"]))
    response = await push("event", [event(1)], viewer)
    assert response.status_code == 403


async def test_an_oversized_body_is_413_before_parsing(
    client: httpx.AsyncClient, agent: Headers
) -> None:
    body = b'{"items": [{"a": "' + b"x" * (70 * 1024 * 1024) + b'"}]}'
    response = await client.post(f"{PREFIX}/items/event", content=body, headers=agent)
    assert response.status_code == 413
    assert response.json()["message"].startswith("The request body may not be greater than")
