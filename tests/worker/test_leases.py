"""Crash-safe workers: chunks and splits are leased in the ledger, so work a dead, frozen or
stopped worker held is taken over by another, exactly once, without touching arq's keys."""

import asyncio
import base64
import os
import re
import secrets
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq import ArqRedis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.storage import storage_of
from app.pipeline import writer
from app.worker import leases
from tests.conftest import CreateImporter, RunWorker, Upload
from tests.factories import USER_FIELDS
from tests.pipeline.test_pipeline import records, row_log, run_of, session_execute
from tests.worker.processes import fetch, start_worker, wait_exit, wait_for, worker_id_of, workers

Factory = async_sessionmaker[AsyncSession]


def mixed_csv() -> str:
    """60 rows: 50 new keys, 5 invalid rows, 5 repeating earlier keys."""
    lines = ["Email,Name,Age"]
    lines += [f"user{i}@example.com,User {i},{i % 100}" for i in range(50)]
    lines += [f"bad{i}@example.com,Bad {i},999" for i in range(5)]
    lines += [f"user{i}@example.com,User {i},{i % 100}" for i in range(5)]
    return "\n".join(lines) + "\n"


async def start_run(create_importer: CreateImporter, upload: Upload, chunk_size: int = 10) -> int:
    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=chunk_size)
    run_id: int = (await upload("users", mixed_csv())).json()["data"]["id"]
    return run_id


async def assert_applied_exactly_once(factory: Factory, run_id: int) -> None:
    run = await run_of(factory, run_id)
    progress = run["progress"]
    assert run["status"] == "completed_with_errors", run
    assert progress["total"] == progress["processed"] == 60
    assert progress["successful"] + progress["failed"] + progress["skipped"] == 60
    assert progress["failed"] == 5
    # Every row once in the row log (failed rows' entries, the chunks' records).
    logged = [row["row_number"] for row in await row_log(factory, run_id)]
    assert sorted(logged) == list(range(1, 61))
    assert len(await records(factory, "users")) == 50


async def finished(factory: Factory, run_id: int) -> bool:
    return (await run_of(factory, run_id))["status"] not in ("pending", "processing")


async def registered(factory: Factory, proc: subprocess.Popen[bytes]) -> str:
    worker_id: str = await wait_for(lambda: worker_id_of(factory, proc.pid), "a heartbeat row")
    return worker_id


async def held_chunk(factory: Factory, run_id: int, worker_id: str) -> list[Any]:
    return await fetch(
        factory,
        "SELECT index FROM run_chunks WHERE run_id = :run AND claimed_by = :me "
        "AND status = 'pending'",
        run=run_id,
        me=worker_id,
    )


async def start_holding_a_chunk(
    settings: Settings, factory: Factory, run_id: int, procs: list[subprocess.Popen[bytes]]
) -> list[Any]:
    """Start a worker (appended to `procs`) that holds its first chunk open inside the
    chunk's transaction; the chunk it holds, once it claimed one."""
    procs.append(
        start_worker(settings, INGEST_WORKER_MAX_JOBS="1", INGEST_TEST_CHUNK_HOLD_SECONDS="8")
    )
    worker_id = await registered(factory, procs[-1])
    held: list[Any] = await wait_for(lambda: held_chunk(factory, run_id, worker_id), "a claim")
    return held


async def test_a_chunk_of_a_worker_killed_mid_chunk_is_applied_by_another_once_its_lease_expires(
    create_importer: CreateImporter,
    upload: Upload,
    settings: Settings,
    queue: ArqRedis,
    session_factory: Factory,
) -> None:
    run_id = await start_run(create_importer, upload)
    with workers() as procs:
        held = await start_holding_a_chunk(settings, session_factory, run_id, procs)
        os.kill(procs[0].pid, signal.SIGKILL)
        assert procs[0].wait(10) == -signal.SIGKILL

        procs.append(start_worker(settings))
        await wait_for(lambda: finished(session_factory, run_id), "the run to finish")

    await assert_applied_exactly_once(session_factory, run_id)
    chunk = await fetch(
        session_factory,
        "SELECT status, attempts FROM run_chunks WHERE run_id = :run AND index = :index",
        run=run_id,
        index=held[0][0],
    )
    assert chunk == [("done", 2)]  # the dead worker's claim, then the one that applied it


async def test_a_frozen_worker_whose_lease_was_taken_over_cannot_commit_its_copy(
    create_importer: CreateImporter,
    upload: Upload,
    settings: Settings,
    queue: ArqRedis,
    session_factory: Factory,
) -> None:
    run_id = await start_run(create_importer, upload)
    with workers() as procs:
        # The first worker claims a chunk and waits a little before applying it.
        procs.append(
            start_worker(
                settings, INGEST_WORKER_MAX_JOBS="1", INGEST_TEST_CHUNK_CLAIM_HOLD_SECONDS="3"
            )
        )
        frozen = procs[0]
        first = await registered(session_factory, frozen)
        held = await wait_for(lambda: held_chunk(session_factory, run_id, first), "a claim")
        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            procs.append(start_worker(settings))
            await wait_for(lambda: finished(session_factory, run_id), "the run to finish")
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        # Thawed, it goes on with the chunk it claimed, which another worker applied.
        await wait_for(
            lambda: fetch(
                session_factory,
                "SELECT 1 FROM workers WHERE id = :me AND jobs = 0 "
                "AND last_beat > now() - interval '1 second'",
                me=first,
            ),
            "the thawed worker to beat again holding nothing",
        )
        assert frozen.poll() is None

    await assert_applied_exactly_once(session_factory, run_id)
    chunk = await fetch(
        session_factory,
        "SELECT status, claimed_by IS DISTINCT FROM :me FROM run_chunks "
        "WHERE run_id = :run AND index = :index",
        me=first,
        run=run_id,
        index=held[0][0],
    )
    assert chunk == [("done", True)]


async def test_a_claim_taken_over_commits_nothing_and_the_new_holder_applies_the_chunk(
    create_importer: CreateImporter,
    upload: Upload,
    settings: Settings,
    queue: ArqRedis,
    session_factory: Factory,
) -> None:
    from app.pipeline import splitter

    run_id = await start_run(create_importer, upload, chunk_size=100)
    await splitter.split_run(session_factory, queue, settings, run_id)
    claimed = await leases.claim_chunk(session_factory, "old", 30, run_id, 0)
    assert claimed is not None
    old = claimed[0]
    # While "old" holds it, nobody else can claim the chunk.
    assert await leases.claim_chunk(session_factory, "new", 30, run_id, 0) is None
    await session_execute(
        session_factory,
        "UPDATE run_chunks SET lease_until = now() - interval '1 second' WHERE run_id = :id",
        id=run_id,
    )
    taken = await leases.claim_chunk(session_factory, "new", 30, run_id, 0)
    assert taken is not None and taken[0].attempt == old.attempt + 1

    with pytest.raises(writer.LeaseLost):
        await writer.apply_chunk(session_factory, storage_of(settings), run_id, 0, old)
    assert (await run_of(session_factory, run_id))["progress"]["processed"] == 0
    assert not await leases.release_chunk(session_factory, old, run_id, 0, "late")

    await writer.apply_chunk(session_factory, storage_of(settings), run_id, 0, taken[0])
    await assert_applied_exactly_once(session_factory, run_id)


async def test_a_run_survives_a_flushed_redis_and_then_a_killed_worker(
    create_importer: CreateImporter,
    upload: Upload,
    settings: Settings,
    queue: ArqRedis,
    session_factory: Factory,
) -> None:
    run_id = await start_run(create_importer, upload)
    with workers() as procs:
        await start_holding_a_chunk(settings, session_factory, run_id, procs)
        await queue.flushdb()  # every queued job and arq lock is gone
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].wait(10)

        procs.append(start_worker(settings))
        await wait_for(lambda: finished(session_factory, run_id), "the run to finish")

    await assert_applied_exactly_once(session_factory, run_id)


def repeating_csv(scale: int = 1) -> str:
    """400 rows (times `scale`): 300 keys, then 100 rows repeating the first 100 of them."""
    keys, again = 300 * scale, 100 * scale
    lines = ["Email,Name,Age"]
    lines += [f"user{i}@example.com,User {i},{i % 100}" for i in range(keys)]
    lines += [f"user{i}@example.com,Again {i},{i % 100}" for i in range(again)]
    return "\n".join(lines) + "\n"


async def chunks_written(factory: Factory, run_id: int, more_than: int = -1) -> int | None:
    """The chunks the run's split stored, once more than `more_than`."""
    rows = await fetch(factory, "SELECT chunks_written FROM runs WHERE id = :id", id=run_id)
    return int(rows[0][0]) if rows[0][0] > more_than else None


async def kill_the_splitter_midway(
    settings: Settings, factory: Factory, run_id: int, log: Path
) -> tuple[int, int]:
    """Split the run (40 chunks) slowly on one worker, SIGKILL it midway, and let another,
    logging to `log`, finish the run. The chunk and the rows read it said it went on from."""
    with workers() as procs:
        # The first worker splits slowly, saving where it stands after every flush.
        procs.append(
            start_worker(
                settings,
                INGEST_WORKER_MAX_JOBS="1",
                INGEST_TEST_SPLIT_HOLD_SECONDS="0.2",
                INGEST_SPLIT_CHECKPOINT_SECONDS="0",
            )
        )
        # Stored in batches (the first chunk alone, then up to 16, fewer on a busy machine).
        await wait_for(lambda: chunks_written(factory, run_id, 17), "18 chunks stored")
        os.kill(procs[0].pid, signal.SIGKILL)
        assert procs[0].wait(10) == -signal.SIGKILL
        stored = await chunks_written(factory, run_id)
        assert stored is not None and stored < 40, "the split ended before the kill"

        procs.append(start_worker(settings, log=log))
        await wait_for(lambda: finished(factory, run_id), "the run to finish")

    text = await asyncio.to_thread(log.read_text)
    went_on = re.search(r"the split goes on from chunk (\d+) \((\d+) rows read", text)
    assert went_on, text
    index, rows_read = int(went_on[1]), int(went_on[2])
    # From the checkpoint of the last batch stored, or of the one before if the kill fell
    # between a batch's commit and its checkpoint: never from the input's start.
    assert 1 <= index <= stored
    return index, rows_read


async def assert_split_once(factory: Factory, run_id: int, rows: int, chunks: int = 40) -> int:
    """Each row logged once, in `chunks` chunks (0: any number) that hold each row once;
    returns the chunks' count."""
    logged = [row["row_number"] for row in await row_log(factory, run_id)]
    assert sorted(logged) == list(range(1, rows + 1))
    chunk_rows = await fetch(
        factory, "SELECT count(*), sum(row_count) FROM run_chunks WHERE run_id = :id", id=run_id
    )
    count, total = chunk_rows[0]
    assert total == rows and count == (chunks or count)
    return int(count)


# Chunks of 10 rows are found by the csv reader; chunks of 2500 are cut from blocks of bytes.
@pytest.mark.parametrize("scale", [1, 250], ids=["rows", "blocks"])
async def test_a_split_killed_midway_goes_on_from_its_last_checkpoint_on_another_worker(
    scale: int,
    create_importer: CreateImporter,
    upload: Upload,
    settings: Settings,
    session_factory: Factory,
    tmp_path: Path,
) -> None:
    """The successor neither reads the file from its start nor forgets the keys met before
    the kill: the repeated rows are still skipped, each row is logged once."""
    size, rows = 10 * scale, 400 * scale
    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=size, on_duplicate="skip")
    run_id = (await upload("users", repeating_csv(scale))).json()["data"]["id"]

    index, rows_read = await kill_the_splitter_midway(
        settings, session_factory, run_id, tmp_path / "worker.log"
    )
    before = await fetch(
        session_factory,
        "SELECT sum(row_count) FROM run_chunks WHERE run_id = :id AND index < :index",
        id=run_id,
        index=index,
    )
    # Chunks cut from blocks hold at most `chunk_size` rows, not always as many.
    assert rows_read == before[0][0] and rows_read <= size * index

    run = await run_of(session_factory, run_id)
    assert run["status"] == "completed", run
    progress = run["progress"]
    assert progress["total"] == progress["processed"] == rows
    skipped = 100 * scale
    assert (progress["successful"], progress["skipped"], progress["failed"]) == (
        rows - skipped,
        skipped,
        0,
    )
    stored = await assert_split_once(session_factory, run_id, rows, 40 if scale == 1 else 0)
    finished = await fetch(
        session_factory,
        "SELECT data FROM run_events WHERE run_id = :id AND type = 'split_finished'",
        id=run_id,
    )
    # The successor cut the chunks it stored from blocks, or read them row by row.
    assert finished[0][0]["blocks"] == (0 if scale == 1 else stored - index)
    stored_records = await records(session_factory, "users")
    assert len(stored_records) == rows - skipped
    assert stored_records["user5@example.com"]["name"] == "User 5"  # the first row of the key


async def test_a_retry_whose_split_was_killed_goes_on_after_the_last_row_it_stored(
    create_importer: CreateImporter,
    upload: Upload,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    run_worker: RunWorker,
    settings: Settings,
    session_factory: Factory,
    tmp_path: Path,
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=10)
    lines = ["Email,Name,Age"] + [f"user{i}@example.com,User {i},{200 + i}" for i in range(400)]
    parent_id = (await upload("users", "\n".join(lines) + "\n")).json()["data"]["id"]
    await run_worker()
    assert (await run_of(session_factory, parent_id))["progress"]["failed"] == 400
    retry = await client.post(f"/api/v1/ingest/{parent_id}/retry", headers=admin_headers)
    run_id = retry.json()["data"]["id"]

    index, rows_read = await kill_the_splitter_midway(
        settings, session_factory, run_id, tmp_path / "worker.log"
    )
    assert rows_read == 10 * index

    progress = (await run_of(session_factory, run_id))["progress"]
    assert progress["total"] == progress["processed"] == progress["failed"] == 400
    await assert_split_once(session_factory, run_id, 400)


async def test_sigterm_lets_the_worker_exit_0_within_the_grace_holding_nothing(
    create_importer: CreateImporter,
    upload: Upload,
    settings: Settings,
    queue: ArqRedis,
    session_factory: Factory,
) -> None:
    run_id = await start_run(create_importer, upload)
    with workers() as procs:
        # Its chunk outlasts the grace: it is cancelled, given back and taken by the other.
        procs.append(
            start_worker(
                settings,
                INGEST_WORKER_MAX_JOBS="1",
                INGEST_TEST_CHUNK_HOLD_SECONDS="6",
                INGEST_SHUTDOWN_GRACE_SECONDS="1",
                INGEST_LEASE_SECONDS="30",  # released at shutdown, not left to expire
            )
        )
        stopping = procs[0]
        first = await registered(session_factory, stopping)
        await wait_for(lambda: held_chunk(session_factory, run_id, first), "a claim")
        stopping.send_signal(signal.SIGTERM)
        assert await wait_exit(stopping, 5) == 0

        assert await held_chunk(session_factory, run_id, first) == []
        assert await worker_id_of(session_factory, stopping.pid) is None
        procs.append(start_worker(settings, INGEST_LEASE_SECONDS="30"))
        await wait_for(lambda: finished(session_factory, run_id), "the run to finish")

    await assert_applied_exactly_once(session_factory, run_id)


async def test_a_chunk_that_always_raises_fails_its_rows_after_the_max_attempts_naming_it(
    create_importer: CreateImporter,
    upload: Upload,
    settings: Settings,
    queue: ArqRedis,
    session_factory: Factory,
) -> None:
    from app.worker.settings import create_worker

    # Row 25's key is too large for the records' key index: writing chunk 2 (rows 21-30)
    # raises in Postgres, every time.
    await create_importer(key=["name"], fields=USER_FIELDS, chunk_size=10)
    huge = base64.b64encode(secrets.token_bytes(9000)).decode()
    lines = ["Email,Name,Age"]
    lines += [f"u{i}@example.com,{huge if i == 25 else f'User {i}'},1" for i in range(1, 41)]
    run_id = (await upload("users", "\n".join(lines) + "\n")).json()["data"]["id"]
    worker = create_worker(settings.model_copy(update={"max_attempts": 2}), burst=True)
    try:
        await worker.main()
    finally:
        await worker.close()

    run = await run_of(session_factory, run_id)
    assert run["status"] == "completed_with_errors"
    assert run["progress"]["processed"] == 40 and run["progress"]["failed"] == 10
    messages = await fetch(
        session_factory,
        "SELECT DISTINCT errors ->> 'message' FROM run_rows WHERE run_id = :id "
        "AND status = 'failed'",
        id=run_id,
    )
    assert len(messages) == 1
    assert "chunk 2 failed 2 times" in messages[0][0]
    assert len(await records(session_factory, "users")) == 30
    attempts = await fetch(
        session_factory,
        "SELECT status, attempts FROM run_chunks WHERE run_id = :id AND index = 2",
        id=run_id,
    )
    assert attempts == [("failed", 2)]


async def test_admins_see_the_workers_and_the_leases_they_hold(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_factory: Factory,
    settings: Settings,
    queue: ArqRedis,
) -> None:
    await leases.beat(session_factory, "host-a:123:abc", settings.lease_seconds)

    response = await client.get("/api/v1/ingest/workers", headers=admin_headers)

    assert response.status_code == 200, response.text
    [worker] = response.json()["data"]
    assert (worker["id"], worker["host"], worker["jobs"]) == ("host-a:123:abc", "host-a", 0)
    assert worker["pid"] == 123
