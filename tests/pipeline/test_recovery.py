"""Exactly-once chunks and recovery: re-delivery, lost Redis, a killed worker, cancel."""

import asyncio
import os
import signal
from typing import Any

import polars as pl
import pytest
from arq import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.storage import storage_of
from app.pipeline import writer
from app.records.store import Table
from tests.conftest import CreateImporter, RunWorker, Upload
from tests.pipeline.test_pipeline import USER_FIELDS, records, row_log, run_of
from tests.worker.processes import start_worker, wait_for, workers


def users_csv(count: int, start: int = 0) -> str:
    lines = ["Email,Name,Age"]
    lines += [f"user{i}@example.com,User {i},{i % 100}" for i in range(start, start + count)]
    return "\n".join(lines) + "\n"


async def split_only(settings: Settings, queue: ArqRedis, factory: Any, run_id: int) -> None:
    """Run the split job alone (chunks stored and enqueued, none applied)."""
    from app.pipeline import splitter

    await splitter.split_run(factory, queue, settings, run_id)


async def test_a_redelivered_chunk_changes_nothing(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    session_factory: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=10)
    run_id = (await upload("users", users_csv(35))).json()["data"]["id"]
    await run_worker()
    before = await run_of(session_factory, run_id)

    for index in range(4):
        await writer.apply_chunk(session_factory, storage_of(settings), run_id, index)

    after = await run_of(session_factory, run_id)
    assert (
        after["progress"]
        == before["progress"]
        == {"total": 35, "processed": 35, "successful": 35, "failed": 0, "skipped": 0}
    )
    logged = [row["row_number"] for row in await row_log(session_factory, run_id)]
    assert sorted(logged) == list(range(1, 36))


async def test_two_workers_applying_the_same_chunk_at_once_apply_it_once(
    create_importer: CreateImporter,
    upload: Upload,
    settings: Settings,
    queue: ArqRedis,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=50)
    run_id = (await upload("users", users_csv(50))).json()["data"]["id"]
    await split_only(settings, queue, session_factory, run_id)

    await asyncio.gather(
        *(writer.apply_chunk(session_factory, storage_of(settings), run_id, 0) for _ in range(3))
    )

    run = await run_of(session_factory, run_id)
    assert run["status"] == "completed"
    assert run["progress"]["processed"] == 50 and run["summary"]["created"] == 50


async def test_between_thorough_passes_only_a_stalled_runs_unclaimed_chunks_are_enqueued(
    create_importer: CreateImporter,
    upload: Upload,
    settings: Settings,
    queue: ArqRedis,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    from app.worker.reconcile import reconcile

    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=10)
    run_id = (await upload("users", users_csv(45))).json()["data"]["id"]
    await split_only(settings, queue, session_factory, run_id)
    await queue.flushdb()  # the chunks' jobs are gone
    ctx = {"session_factory": session_factory, "queue": queue, "settings": settings}

    # The run progressed a moment ago: its chunks' jobs are taken to be queued.
    assert (await reconcile(ctx, thorough=False))["chunks_enqueued"] == 0
    assert (await reconcile(ctx))["chunks_enqueued"] == 5  # a worker's first pass looks

    await queue.flushdb()
    async with session_factory() as session, session.begin():
        await session.execute(
            text("UPDATE runs SET updated_at = now() - interval '1 hour' WHERE id = :id"),
            {"id": run_id},
        )
    assert (await reconcile(ctx, thorough=False))["chunks_enqueued"] == 5  # stalled: retaken


async def test_flushed_redis_mid_run_is_recovered_by_the_reconciler(
    create_importer: CreateImporter,
    upload: Upload,
    settings: Settings,
    queue: ArqRedis,
    run_worker: RunWorker,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=10)
    run_id = (await upload("users", users_csv(45))).json()["data"]["id"]
    await split_only(settings, queue, session_factory, run_id)
    await writer.apply_chunk(session_factory, storage_of(settings), run_id, 0)
    await queue.flushdb()  # every queued job is gone

    await run_worker()  # the reconciler runs at worker start-up

    run = await run_of(session_factory, run_id)
    assert run["status"] == "completed"
    assert run["progress"]["processed"] == 45
    assert len(await records(session_factory, "users")) == 45


async def test_a_run_whose_split_job_was_lost_is_split_by_the_reconciler(
    create_importer: CreateImporter,
    upload: Upload,
    queue: ArqRedis,
    run_worker: RunWorker,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    run_id = (await upload("users", users_csv(5))).json()["data"]["id"]
    await queue.flushdb()
    await run_worker()
    assert (await run_of(session_factory, run_id))["status"] == "completed"


async def test_cancel_stops_new_chunks_and_ends_the_run_cancelled(
    create_importer: CreateImporter,
    upload: Upload,
    settings: Settings,
    queue: ArqRedis,
    run_worker: RunWorker,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=10)
    run_id = (await upload("users", users_csv(50))).json()["data"]["id"]
    await split_only(settings, queue, session_factory, run_id)
    await writer.apply_chunk(session_factory, storage_of(settings), run_id, 0)
    async with session_factory() as session:
        await session.execute(
            text("UPDATE runs SET cancel_requested = true WHERE id = :id"), {"id": run_id}
        )
        await session.commit()

    await run_worker()

    run = await run_of(session_factory, run_id)
    assert run["status"] == "cancelled"
    assert run["progress"]["processed"] == 10
    assert len(await records(session_factory, "users")) == 10


async def test_a_worker_killed_mid_run_loses_no_row_and_doubles_no_count(
    create_importer: CreateImporter,
    upload: Upload,
    settings: Settings,
    queue: ArqRedis,
    run_worker: RunWorker,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=200)
    total = 30_000
    run_id = (await upload("users", users_csv(total))).json()["data"]["id"]
    with workers() as procs:
        procs.append(start_worker(settings))  # leases of 2 s (tests.worker.processes.FAST)
        for _ in range(600):  # until some chunks are applied, but not all
            await asyncio.sleep(0.05)
            progress = await run_of(session_factory, run_id)
            if progress["progress"]["processed"] > 0:
                break
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].wait(10)
        mid = await run_of(session_factory, run_id)
        assert mid["status"] == "processing", "the worker finished before it could be killed"
        assert 0 < mid["progress"]["processed"] < total

        # The dead worker's jobs stay "in progress" in arq for minutes: its chunks are taken
        # over once their leases expire, under new job ids.
        procs.append(start_worker(settings))

        async def finished() -> bool:
            return (await run_of(session_factory, run_id))["status"] != "processing"

        await wait_for(finished, "the run to finish", deadline_s=60)

    run = await run_of(session_factory, run_id)
    assert run["status"] == "completed"
    assert run["progress"] == {
        "total": total,
        "processed": total,
        "successful": total,
        "failed": 0,
        "skipped": 0,
    }
    async with session_factory() as session:
        count = await session.scalar(text("SELECT count(*) FROM ingest_data.users"))
    logged = [row["row_number"] for row in await row_log(session_factory, run_id)]
    assert count == total and sorted(logged) == list(range(1, total + 1))


@pytest.mark.parametrize("chunk_kind", ["byte range", "payload"])
async def test_a_chunk_that_keeps_failing_fails_its_rows_and_the_run_ends(
    chunk_kind: str,
    create_importer: CreateImporter,
    upload: Upload,
    settings: Settings,
    queue: ArqRedis,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    from arq import Retry

    from app.pipeline.chunks import payload_key
    from app.worker.tasks import apply_chunk

    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=10)
    if chunk_kind == "byte range":  # CSV
        run_id = (await upload("users", users_csv(15))).json()["data"]["id"]
    else:  # JSON inputs are split into payload files
        lines = [f'{{"email": "u{i}@example.com", "name": "User {i}"}}' for i in range(15)]
        content = "\n".join(lines) + "\n"
        run_id = (await upload("users", content, filename="users.ndjson")).json()["data"]["id"]
    await split_only(settings, queue, session_factory, run_id)
    async with session_factory() as session, session.begin():
        span = (
            await session.execute(
                text(
                    "UPDATE run_chunks SET byte_end = byte_start + 5 "
                    "WHERE run_id = :id AND index = 1 RETURNING byte_start"
                ),
                {"id": run_id},
            )
        ).scalar_one()
    assert (span is not None) == (chunk_kind == "byte range")
    if chunk_kind == "payload":
        await storage_of(settings).put(payload_key(run_id, 1), b"not json")
    ctx = {"session_factory": session_factory, "settings": settings, "queue": queue}
    await apply_chunk(ctx, run_id, 0)
    for _ in range(settings.max_attempts - 1):
        with pytest.raises(Retry):
            await apply_chunk(ctx, run_id, 1)
    await apply_chunk(ctx, run_id, 1)  # the last attempt gives up on the chunk

    run = await run_of(session_factory, run_id)
    assert run["status"] == "completed_with_errors"
    assert run["progress"]["successful"] == 10 and run["progress"]["failed"] == 5
    assert len(await records(session_factory, "users")) == 10


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
async def test_the_later_row_of_a_key_wins_whatever_order_its_chunks_are_applied_in(
    fmt: str,
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    settings: Settings,
    queue: ArqRedis,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    """SPEC: `update` lets the later row win. Here the later row equals the stored record, and
    its chunk is applied before the earlier row's: it must still be the one that stays."""
    from app.worker.tasks import apply_chunk

    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=1)
    await upload("users", "email,name,age\nbob@example.com,Bob,3\n")
    await run_worker()
    rows = [("bob@example.com", "Bobby", 4), ("bob@example.com", "Bob", 3)]
    if fmt == "csv":
        content = "email,name,age\n" + "".join(f"{e},{n},{a}\n" for e, n, a in rows)
    else:
        content = "".join(f'{{"email": "{e}", "name": "{n}", "age": {a}}}\n' for e, n, a in rows)
    run_id = (await upload("users", content, filename=f"users.{fmt}")).json()["data"]["id"]
    await split_only(settings, queue, session_factory, run_id)
    ctx = {"session_factory": session_factory, "settings": settings, "queue": queue}
    await apply_chunk(ctx, run_id, 1)
    await apply_chunk(ctx, run_id, 0)

    stored = (await records(session_factory, "users"))["bob@example.com"]
    assert (stored["name"], stored["age"]) == ("Bob", 3)
    run = await run_of(session_factory, run_id)
    assert run["status"] == "completed"
    assert run["summary"]["updated"] + run["summary"]["unchanged"] == 2


async def test_a_key_wrongly_taken_for_a_repeated_one_changes_no_count(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    session_factory: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under `update` the splitter's memory of keys may take a new key for a repeated one;
    such a row is still counted for what it does."""
    from app.pipeline import splitter

    monkeypatch.setattr(splitter._SeenProbably, "add_all", lambda self, keys: [True] * len(keys))
    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=4)
    run_id = (await upload("users", users_csv(10))).json()["data"]["id"]
    await run_worker()
    run = await run_of(session_factory, run_id)
    assert run["summary"]["created"] == 10 and run["progress"]["successful"] == 10
    run_id = (await upload("users", users_csv(10))).json()["data"]["id"]
    await run_worker()
    run = await run_of(session_factory, run_id)
    assert run["summary"]["unchanged"] == 10
    assert len(await records(session_factory, "users")) == 10


def test_the_memory_of_keys_never_forgets_one() -> None:
    from app.pipeline.splitter import _SeenProbably

    seen = _SeenProbably()
    digests = pl.Series([f"user{i}@example.com" for i in range(20_000)]).hash(7).to_list()
    assert sum(seen.add_all(digests)) < 20  # a few collisions at most
    assert all(seen.add_all(digests))
    assert all(_SeenProbably(seen.state()).add_all(digests))  # and a checkpoint of it neither


def test_a_checkpoint_of_exact_keys_holds_every_key_and_no_other() -> None:
    from app.pipeline.splitter import _SeenExactly

    seen = _SeenExactly()
    assert seen.add_all([1, 2, 2**64 - 1]) == [False, False, False]
    restored = _SeenExactly(seen.state())
    assert restored.add_all([2**64 - 1, 3, 1, 2]) == [True, False, True, True]


async def test_the_later_row_of_a_key_wins_over_an_earlier_one_committed_while_it_was_planned(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    settings: Settings,
    queue: ArqRedis,
    session_factory: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Row 4 repeats row 1's key and finds its record unchanged; row 1's chunk commits a
    change to that record after row 4's chunk looked it up. Row 4's record data wins."""
    from app.pipeline import splitter

    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=2)
    csv = (
        "Email,Name,Age\nada@example.com,Ada,36\nalan@example.com,Alan,41\n"
        "grace@example.com,Grace,85\nada@example.com,Ada,37\n"
    )
    await upload("users", csv)
    await run_worker()
    assert (await records(session_factory, "users"))["ada@example.com"]["age"] == 37
    run_id = (await upload("users", csv)).json()["data"]["id"]
    await splitter.split_run(session_factory, queue, settings, run_id)

    known, meanwhile = Table.known, []

    async def look_then_apply_the_first_chunk(
        table: Table, conn: Any, keys: Any, compare: Any = None
    ) -> Any:
        found = await known(table, conn, keys, compare)
        if "ada@example.com" in keys and not meanwhile:
            meanwhile.append(0)
            await writer.apply_chunk(session_factory, storage_of(settings), run_id, 0)
        return found

    monkeypatch.setattr(Table, "known", look_then_apply_the_first_chunk)
    await writer.apply_chunk(session_factory, storage_of(settings), run_id, 1)
    assert meanwhile == [0]
    assert (await records(session_factory, "users"))["ada@example.com"]["age"] == 37
    run = await run_of(session_factory, run_id)
    assert run["status"] == "completed"
    assert run["progress"]["processed"] == 4
