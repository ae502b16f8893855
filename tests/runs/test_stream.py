"""`GET /{run}/stream`: a run followed live over Server-Sent Events, against real `ingest serve`
processes (streaming through ASGITransport buffers the whole body).

Process A re-checks runs only every 60 s: whatever reaches its streams within a test's seconds
was woken by a Postgres notification, committed by a worker or by process B.
"""

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.db import unit_of_work
from app.main import create_app
from app.runs import events
from app.runs.live import EventsHub, listen_dsn
from tests.cli.harness import Api, server_env, serving
from tests.conftest import CreateImporter, MakeToken, RunWorker, Upload
from tests.factories import USER_FIELDS
from tests.runs.conftest import API, MakeSource, set_importer_source
from tests.worker.processes import start_worker, workers
from tests.worker.test_leases import mixed_csv

DEADLINE_S = 30


@pytest.fixture(scope="module")
def api_a(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    env = {
        **server_env(settings),
        "INGEST_STREAM_RECHECK_SECONDS": "60",
        "INGEST_STREAM_PING_SECONDS": "0.5",
    }
    with serving(env, tmp_path_factory.mktemp("api-a") / "api.log") as api:
        yield api


@pytest.fixture(scope="module")
def api_b(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with serving(server_env(settings), tmp_path_factory.mktemp("api-b") / "api.log") as api:
        yield api


@dataclass(frozen=True)
class Sse:
    event: str
    id: str | None  # an event's cursor
    data: Any


async def sse_of(response: httpx.Response) -> AsyncIterator[Sse]:
    """The response's SSE messages as they arrive (comments, the keep-alives, left out)."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if not line:
            if fields:
                raw_id = fields.get("id")
                yield Sse(
                    fields.get("event", "message"),
                    raw_id or None,
                    json.loads(fields["data"]),
                )
                fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


def client_of(api: Api) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=api.url, timeout=DEADLINE_S, trust_env=False)


async def read_all(api: Api, run_id: int, headers: dict[str, str]) -> list[Sse]:
    """The whole stream of a run, which must close by itself."""
    async with (
        client_of(api) as http,
        http.stream("GET", f"{API}/{run_id}/stream", headers=headers) as response,
        asyncio.timeout(DEADLINE_S),
    ):
        assert response.status_code == 200, await response.aread()
        return [message async for message in sse_of(response)]


def position(message: Sse) -> tuple[int, int]:
    """An event's cursor as the (xid, id) it orders by (opaque to clients; known to tests)."""
    cursor = events.parse_after(message.id or "")
    assert isinstance(cursor, events.Cursor)
    return cursor.xid, cursor.id


def assert_steps(events: list[Sse], chunks: int) -> None:
    """The events of a run split into ``chunks`` and applied, each once. Listed by writing
    transaction (app/runs/events.py): a chunk applied while the split was still going, or the
    chunk that finalized the run, may come earlier than their ids say."""
    types = [e.event for e in events]
    assert types[:2] == ["created", "split_started"]
    assert sorted(types[2:]) == sorted(["split_finished", *["chunk_applied"] * chunks, "finalized"])


def kinds(messages: list[Sse]) -> list[str]:
    return [message.event for message in messages]


def logged(messages: list[Sse]) -> list[Sse]:
    """The run's events (those with an id): not `progress`, not `end`."""
    return [message for message in messages if message.id is not None]


async def test_a_stream_follows_a_run_through_a_worker_until_its_end(
    api_a: Api,
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    admin_headers: dict[str, str],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=10)
    run_id = (await upload("users", mixed_csv(), filename="users.csv")).json()["data"]["id"]

    messages: list[Sse] = []
    async with (
        client_of(api_a) as http,
        http.stream("GET", f"{API}/{run_id}/stream", headers=admin_headers) as response,
        asyncio.timeout(DEADLINE_S),
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = sse_of(response)
        async for message in stream:
            messages.append(message)
            if message.event == "progress":
                break  # the stream is open: now the worker runs the whole run
        assert messages[-1].data["status"] == "pending"
        worker = asyncio.create_task(run_worker())
        messages += [message async for message in stream]  # until the server closes it
        await worker

    events = logged(messages)
    assert_steps(events, chunks=6)
    positions = [position(e) for e in events]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    # Each event as GET /{run}/events lists it.
    assert all(e.data["cursor"] == e.id and e.data["type"] == e.event for e in events)
    assert sorted(e.data["data"]["index"] for e in events if e.event == "chunk_applied") == [
        *range(6)
    ]
    finalized = [e for e in events if e.event == "finalized"]
    assert finalized[0].data["data"]["status"] == "completed_with_errors"

    progress = [m.data for m in messages if m.event == "progress"]
    processed = [p["progress"]["processed"] for p in progress]
    assert processed == sorted(processed) and len(progress) >= 2
    assert progress[-1]["status"] == "completed_with_errors"
    counters = {"total": 60, "processed": 60, "successful": 55, "failed": 5, "skipped": 0}
    assert progress[-1]["progress"].items() >= counters.items()
    assert kinds(messages)[-1] == "end"
    end = messages[-1].data
    assert end["id"] == run_id and end["status"] == "completed_with_errors"
    assert end["summary"]["created"] == 50 and len(end["rows"]) == 60


async def test_a_cancel_through_another_api_process_reaches_the_stream(
    api_a: Api,
    api_b: Api,
    settings: Settings,
    create_importer: CreateImporter,
    upload: Upload,
    admin_headers: dict[str, str],
    tmp_path: Path,
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=5)
    run_id = (await upload("users", mixed_csv())).json()["data"]["id"]

    messages: list[Sse] = []
    with workers() as started:
        # One slow chunk at a time: the run is still processing when the cancel comes.
        started.append(
            start_worker(
                settings,
                INGEST_WORKER_MAX_JOBS="1",
                INGEST_TEST_CHUNK_CLAIM_HOLD_SECONDS="0.2",
            )
        )
        async with (
            client_of(api_a) as http,
            client_of(api_b) as other,
            http.stream("GET", f"{API}/{run_id}/stream", headers=admin_headers) as response,
            asyncio.timeout(DEADLINE_S),
        ):
            assert response.status_code == 200
            async for message in sse_of(response):
                messages.append(message)
                if message.event == "chunk_applied" and message.data["data"]["index"] == 0:
                    cancel = await other.post(f"{API}/{run_id}/cancel", headers=admin_headers)
                    assert cancel.status_code == 200, cancel.text

    events = logged(messages)
    types = [e.event for e in events]
    assert types[:3] == ["created", "split_started", "split_finished"]
    assert "cancel_requested" in types and types[-1] == "finalized"
    applied = types.count("chunk_applied")
    assert 1 <= applied < 12  # the cancel stopped the run before its last chunk
    assert events[-1].data["data"]["status"] == "cancelled"
    assert kinds(messages)[-1] == "end" and messages[-1].data["status"] == "cancelled"
    assert messages[-2].event == "progress" and messages[-2].data["status"] == "cancelled"
    assert messages[-2].data["progress"]["processed"] == 5 * applied


async def test_a_finished_run_is_answered_at_once_and_resumes_after_last_event_id(
    api_a: Api,
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    admin_headers: dict[str, str],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=20)
    run_id = (await upload("users", mixed_csv())).json()["data"]["id"]
    await run_worker()

    everything = await read_all(api_a, run_id, admin_headers)
    events = logged(everything)
    assert kinds(everything) == [*[e.event for e in events], "progress", "end"]
    assert_steps(events, chunks=3)
    assert everything[-2].data["progress"]["processed"] == 60

    second = events[1].id
    resumed = await read_all(api_a, run_id, {**admin_headers, "Last-Event-ID": str(second)})
    assert logged(resumed) == events[2:]
    assert kinds(resumed)[-2:] == ["progress", "end"]
    assert resumed[-1].data == everything[-1].data
    # A plain event id, as clients before cursors sent, resumes from the same event.
    legacy = {**admin_headers, "Last-Event-ID": str(events[1].data["id"])}
    assert logged(await read_all(api_a, run_id, legacy)) == events[2:]
    async with client_of(api_a) as http:
        shown = await http.get(f"{API}/{run_id}", headers=admin_headers)
    assert everything[-1].data == shown.json()["data"]  # `end` is the run as GET /{run} has it


async def test_a_stream_sends_keep_alive_comments_while_nothing_happens(
    api_a: Api,
    create_importer: CreateImporter,
    upload: Upload,
    admin_headers: dict[str, str],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    run_id = (await upload("users", mixed_csv())).json()["data"]["id"]  # no worker: pending

    lines: list[str] = []
    async with (
        client_of(api_a) as http,
        http.stream("GET", f"{API}/{run_id}/stream", headers=admin_headers) as response,
        asyncio.timeout(DEADLINE_S),
    ):
        # Two pings (every 0.5 s on process A) arrive while the run stays pending.
        async for line in response.aiter_lines():
            lines.append(line)
            if len(pings := [line for line in lines if line.startswith(":")]) == 2:
                break
    assert all(ping.startswith(": ping") for ping in pings)
    # In either order: a transaction open elsewhere on the server may hold `created` back.
    assert sorted(line for line in lines if line.startswith("event:")) == [
        "event: created",
        "event: progress",
    ]


async def test_the_stream_needs_a_token_with_view_and_the_run_in_its_source(
    api_a: Api,
    create_importer: CreateImporter,
    upload: Upload,
    make_token: MakeToken,
    make_source: MakeSource,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    mine, theirs = await make_source("mine"), await make_source("theirs")
    await set_importer_source(session_factory, "users", theirs)
    admin = {"Authorization": f"Bearer {await make_token()}"}
    run_id = (await upload("users", mixed_csv(), headers=admin)).json()["data"]["id"]
    url = f"{API}/{run_id}/stream"

    scoped = await make_token(role="admin", abilities=["ingest:admin"], source_id=mine)
    no_view = await make_token(role="admin", abilities=["ingest:create"])
    async with client_of(api_a) as http:
        missing = await http.get(url)
        assert missing.status_code == 401 and missing.json() == {"message": "Unauthenticated."}
        forbidden = await http.get(url, headers={"Authorization": f"Bearer {no_view}"})
        assert forbidden.status_code == 403
        assert "requires the ingest:view" in forbidden.json()["message"]
        other_source = await http.get(url, headers={"Authorization": f"Bearer {scoped}"})
        assert other_source.status_code == 404
        assert other_source.json() == {"message": f"Run {run_id} not found."}
        unknown = await http.get(f"{API}/{run_id + 1000}/stream", headers=admin)
        assert unknown.status_code == 404
        bad_id = await http.get(url, headers={**admin, "Last-Event-ID": "x"})
        assert bad_id.status_code == 422
        not_its_event = await http.get(url, headers={**admin, "Last-Event-ID": "99999"})
        assert not_its_event.status_code == 400, not_its_event.text


async def test_a_stream_shows_an_event_committed_late_before_the_later_one_it_held_back(
    api_a: Api,
    create_importer: CreateImporter,
    upload: Upload,
    admin_headers: dict[str, str],
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    """T1 inserts an event and stays open; T2 inserts one, bumps the run's progress and
    commits. The stream shows T2's progress but holds T2's event back until T1 commits, then
    sends T1's and T2's: none skipped, in commit order."""
    await create_importer(key=["email"], fields=USER_FIELDS)
    run_id = (await upload("users", mixed_csv())).json()["data"]["id"]  # no worker: pending
    bump = "UPDATE runs SET processed = processed + 1 WHERE id = :id"

    messages: list[Sse] = []
    async with (
        client_of(api_a) as http,
        http.stream("GET", f"{API}/{run_id}/stream", headers=admin_headers) as response,
        asyncio.timeout(DEADLINE_S),
    ):
        assert response.status_code == 200
        stream = sse_of(response)
        async for message in stream:
            messages.append(message)
            if message.event == "progress":
                break
        async with unit_of_work(session_factory) as t1:
            await events.add(t1, run_id, "chunk_retried", index=0, attempt=1, reason="t1")
            async with unit_of_work(session_factory) as t2:
                await events.add(t2, run_id, "chunk_retried", index=1, attempt=1, reason="t2")
                await t2.execute(text(bump), {"id": run_id})
            # The stream has read the run after T2's commit once its progress shows it.
            async for message in stream:
                messages.append(message)
                if message.event == "progress":
                    assert message.data["progress"]["processed"] == 1
                    break
        async for message in stream:
            messages.append(message)
            if [m.event for m in messages].count("chunk_retried") == 2:
                break

    retried = [m for m in messages if m.event == "chunk_retried"]
    assert [m.data["data"]["reason"] for m in retried] == ["t1", "t2"]
    assert position(retried[0]) < position(retried[1])
    # Nothing of T2's before T1 committed (after the second `progress`). `created` may itself
    # come late: any transaction open on the server, in whatever database, holds events back.
    second_progress = [i for i, m in enumerate(messages) if m.event == "progress"][1]
    assert "chunk_retried" not in kinds(messages)[: second_progress + 1]
    assert kinds(messages).count("created") == 1


async def test_the_hub_wakes_a_run_s_streams_on_commit_only(
    settings: Settings,
    create_importer: CreateImporter,
    upload: Upload,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    run_id, other_id = [(await upload("users", mixed_csv())).json()["data"]["id"] for _ in range(2)]
    hub = EventsHub(listen_dsn(settings.require_database_url()))
    try:
        async with hub.subscribe(run_id) as woken, hub.subscribe(other_id) as other:
            assert hub.listening
            woken.clear()
            other.clear()
            async with session_factory() as session:
                await events.add(session, run_id, "failed", message="rolled back")
                await session.rollback()
            async with unit_of_work(session_factory) as session:
                await events.add(session, other_id, "failed", message="committed")
            # Notifications arrive in commit order: once the later one is here, a notification
            # of the rolled-back insert would have been too.
            await asyncio.wait_for(other.wait(), DEADLINE_S)
            assert not woken.is_set()
            async with unit_of_work(session_factory) as session:
                await events.add(session, run_id, "failed", message="committed")
            await asyncio.wait_for(woken.wait(), DEADLINE_S)
    finally:
        await hub.close()
    assert not hub.listening


async def test_the_app_closes_its_listen_connection_on_shutdown(settings: Settings) -> None:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        hub = app.state.events_hub
        await hub.ensure_listening()
        assert hub.listening
    assert not hub.listening
