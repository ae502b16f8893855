"""Back-pressure: while the arq queue holds INGEST_MAX_QUEUE_DEPTH jobs, every door that starts a
run answers 429 with `Retry-After` and stores nothing; once the queue drains, it is accepted.

The queue is filled with real jobs, enqueued by the app's own function, and drained by a real
worker: no worker runs in between, so the jobs stay queued.
"""

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq import ArqRedis
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.db import unit_of_work
from app.core.queue import enqueue_split
from app.main import create_app
from app.sources.models import Source
from tests.conftest import CreateImporter, RunWorker
from tests.factories import USER_FIELDS

API = "/api/v1/ingest"
DEPTH = 3
RETRY_AFTER = 7
# No runs have these ids: a worker that takes their jobs finds nothing to do.
NO_RUN = 900_000

CSV = "Email,Name,Age\nada@example.com,Ada,36\n"
BAD_CSV = "Email,Name,Age\n,Bob,30\n"


async def _client_of(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app: FastAPI = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest.fixture
async def busy(settings: Settings, queue: ArqRedis) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app that refuses new runs while the queue holds DEPTH jobs."""
    limited = settings.model_copy(
        update={"max_queue_depth": DEPTH, "queue_retry_after_seconds": RETRY_AFTER}
    )
    async for client in _client_of(limited):
        yield client


async def _fill(queue: ArqRedis, settings: Settings, jobs: int = DEPTH) -> None:
    for n in range(jobs):
        await enqueue_split(queue, NO_RUN + n)
    assert await queue.zcard(settings.queue_name) == jobs


def _files(storage: Path) -> int:
    return sum(1 for path in storage.rglob("*") if path.is_file())


async def _stored(factory: async_sessionmaker[AsyncSession], storage: Path) -> dict[str, int]:
    """What the doors store: runs, items, files (uploads, pushed items)."""
    async with unit_of_work(factory) as session:
        runs = await session.scalar(text("SELECT count(*) FROM runs"))
        items = await session.scalar(text("SELECT count(*) FROM items"))
    return {"runs": int(runs or 0), "items": int(items or 0), "files": _files(storage)}


# --- each door: set up with the ordinary client, then asked through the busy one --------------

Door = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


async def _push_door(
    create_importer: CreateImporter, client: httpx.AsyncClient, headers: dict[str, str], **_: Any
) -> Door:
    await create_importer(
        slug="events",
        source={"type": "push"},
        format="ndjson",
        key=["title"],
        fields={"title": {"type": "string", "required": True}},
    )
    body = {"items": [{"title": "Jazz night"}, {"title": "Book fair"}]}
    return lambda c: c.post(f"{API}/items/events", json=body, headers=headers)


async def _upload_door(create_importer: CreateImporter, headers: dict[str, str], **_: Any) -> Door:
    await create_importer(key=["email"], fields=USER_FIELDS)
    return lambda c: c.post(
        f"{API}/upload/users", files={"file": ("users.csv", CSV.encode())}, headers=headers
    )


async def _trigger_door(create_importer: CreateImporter, headers: dict[str, str], **_: Any) -> Door:
    await create_importer(
        slug="prices",
        source={"type": "url", "url": "https://data.example.test/prices.csv"},
        key=["sku"],
        fields={"sku": {"type": "string"}},
    )
    return lambda c: c.post(f"{API}/trigger/prices", json={"dry_run": False}, headers=headers)


async def _retry_door(
    create_importer: CreateImporter,
    client: httpx.AsyncClient,
    headers: dict[str, str],
    run_worker: RunWorker,
    **_: Any,
) -> Door:
    await create_importer(key=["email"], fields=USER_FIELDS)
    started = await client.post(
        f"{API}/upload/users", files={"file": ("users.csv", BAD_CSV.encode())}, headers=headers
    )
    assert started.status_code == 202, started.text
    await run_worker()
    parent = started.json()["data"]["id"]
    shown = (await client.get(f"{API}/{parent}", headers=headers)).json()["data"]
    assert shown["progress"]["failed"] == 1, shown
    return lambda c: c.post(f"{API}/{parent}/retry", headers=headers)


async def _source_door(
    action: str,
    create_importer: CreateImporter,
    headers: dict[str, str],
    session_factory: async_sessionmaker[AsyncSession],
    **_: Any,
) -> Door:
    async with unit_of_work(session_factory) as session:
        source = Source(name="feed", source_url="https://feed.example.test/feed")
        session.add(source)
        await session.flush()
        source_id = source.id
    await create_importer(
        slug="prices",
        source={"type": "url", "url": "https://data.example.test/prices.csv"},
        source_id=source_id,
        key=["sku"],
        fields={"sku": {"type": "string"}},
    )
    return lambda c: c.post(f"{API}/sources/{source_id}/{action}", headers=headers)


async def _sync_door(**kwargs: Any) -> Door:
    return await _source_door("sync", **kwargs)


async def _import_door(**kwargs: Any) -> Door:
    return await _source_door("import", **kwargs)


DOORS = {
    "push": _push_door,
    "upload": _upload_door,
    "trigger": _trigger_door,
    "retry": _retry_door,
    "sync": _sync_door,
    "import": _import_door,
}


@pytest.mark.parametrize("door", list(DOORS))
async def test_a_full_queue_refuses_new_runs_with_429_and_stores_nothing(
    door: str,
    busy: httpx.AsyncClient,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    create_importer: CreateImporter,
    queue: ArqRedis,
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    storage_dir: Path,
    run_worker: RunWorker,
) -> None:
    send = await DOORS[door](
        create_importer=create_importer,
        client=client,
        headers=admin_headers,
        run_worker=run_worker,
        session_factory=session_factory,
    )
    await _fill(queue, settings)
    before = await _stored(session_factory, storage_dir)

    refused = await send(busy)
    assert refused.status_code == 429, refused.text
    assert refused.headers["Retry-After"] == str(RETRY_AFTER)
    assert refused.json() == {
        "message": f"The work queue is full ({DEPTH} jobs waiting, at most {DEPTH}): "
        f"try again in {RETRY_AFTER} seconds."
    }
    assert await _stored(session_factory, storage_dir) == before

    # A worker drains the queue (the jobs name no run: it has nothing to do for them).
    await run_worker()
    assert await queue.zcard(settings.queue_name) == 0
    accepted = await send(busy)
    assert accepted.status_code == 202, accepted.text
    assert (await _stored(session_factory, storage_dir))["runs"] > before["runs"]


async def test_the_jobs_of_accepted_work_count_toward_the_depth(
    settings: Settings,
    queue: ArqRedis,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    create_importer: CreateImporter,
    session_factory: async_sessionmaker[AsyncSession],
    storage_dir: Path,
) -> None:
    send = await _push_door(create_importer, client, admin_headers)
    one = settings.model_copy(update={"max_queue_depth": DEPTH})
    await _fill(queue, settings, DEPTH - 1)
    async for busy in _client_of(one):
        # Below the depth: accepted, and its split job joins the queue once committed.
        accepted = await send(busy)
        assert accepted.status_code == 202, accepted.text
        assert await queue.zcard(settings.queue_name) == DEPTH
        stored = await _stored(session_factory, storage_dir)
        refused = await send(busy)
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) == settings.queue_retry_after_seconds
        assert await _stored(session_factory, storage_dir) == stored


async def test_a_depth_of_0_never_refuses(
    settings: Settings,
    queue: ArqRedis,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    create_importer: CreateImporter,
) -> None:
    send = await _push_door(create_importer, client, admin_headers)
    await _fill(queue, settings, 50)
    async for unlimited in _client_of(settings.model_copy(update={"max_queue_depth": 0})):
        response = await send(unlimited)
        assert response.status_code == 202, response.text


async def test_an_unreachable_redis_refuses_nothing(
    settings: Settings,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    create_importer: CreateImporter,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    # As today: Postgres holds the run, and the reconciler enqueues its split later.
    send = await _push_door(create_importer, client, admin_headers)
    no_redis = settings.model_copy(
        update={"redis_url": "redis://127.0.0.1:1/0", "max_queue_depth": 1}
    )
    async for cut_off in _client_of(no_redis):
        response = await send(cut_off)
        assert response.status_code == 202, response.text
    async with unit_of_work(session_factory) as session:
        status = await session.scalar(text("SELECT status FROM runs"))
    assert status == "pending"


async def test_the_doors_declare_429_with_retry_after_in_openapi(
    client: httpx.AsyncClient,
) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    doors = [
        ("post", f"{API}/items/{{type}}"),
        ("post", f"{API}/upload/{{importer}}"),
        ("post", f"{API}/trigger/{{importer}}"),
        ("post", f"{API}/{{run}}/retry"),
        ("post", f"{API}/sources/{{source_id}}/sync"),
        ("post", f"{API}/sources/{{source_id}}/import"),
    ]
    for method, path in doors:
        response = paths[path][method]["responses"]["429"]
        assert response["headers"]["Retry-After"]["schema"]["type"] == "integer", path
        assert response["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorBody"
        }
