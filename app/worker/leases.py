"""Leases in the ledger: which worker holds a split or a chunk, and until when.

A job claims its split (on the runs row) or chunk (on its run_chunks row) in a short committed
transaction; the claim counts the attempt. Its worker's heartbeat renews every lease it holds;
a lease that expires (the worker died or froze) is taken over by the reconciler, under a new
job id. The transaction that applies a chunk checks that it still holds the claim, so a worker
whose lease was taken over commits nothing.
"""

import logging
import os
import secrets
import socket
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.db import unit_of_work
from app.pipeline.chunks import Claim
from app.runs import events

log = logging.getLogger("ingest.leases")

Factory = async_sessionmaker[AsyncSession]


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


# SKIP LOCKED: a chunk whose row a transaction holds (its worker applying it) is not claimed;
# the job ends quietly and the reconciler tries again once the lock is gone. The previous
# holder is read under the same lock: a lease that expired is taken over from it.
_CLAIM_CHUNK = """
UPDATE run_chunks c SET claimed_by = :me,
    lease_until = now() + make_interval(secs => :lease), attempts = c.attempts + 1
FROM (
    SELECT run_id, index, claimed_by FROM run_chunks
    WHERE run_id = :run AND index = :index AND status = 'pending'
      AND (claimed_by IS NULL OR lease_until < now())
    FOR UPDATE SKIP LOCKED) previous
WHERE (c.run_id, c.index) = (previous.run_id, previous.index)
RETURNING c.attempts, c.last_error, previous.claimed_by
"""

# The runs row is locked only briefly (chunk commits count on it): wait for it.
_CLAIM_SPLIT = """
UPDATE runs r SET split_claimed_by = :me,
    split_lease_until = now() + make_interval(secs => :lease),
    split_attempt = r.split_attempt + 1
FROM (
    SELECT id, split_claimed_by FROM runs
    WHERE id = :run AND status IN ('pending', 'processing') AND chunks_total IS NULL
      AND (split_claimed_by IS NULL OR split_lease_until < now())
    FOR NO KEY UPDATE) previous
WHERE r.id = previous.id
RETURNING r.split_attempt, r.split_last_error, previous.split_claimed_by
"""


async def claim_chunk(
    factory: Factory, worker_id: str, lease_s: int, run_id: int, index: int
) -> tuple[Claim, str | None] | None:
    """This worker's claim and the last attempt's error; None when the chunk is done or a live
    worker holds it."""
    params = {"me": worker_id, "lease": lease_s, "run": run_id, "index": index}
    async with unit_of_work(factory) as session:
        row = (await session.execute(text(_CLAIM_CHUNK), params)).first()
        if row is not None and row[2] is not None:
            await events.add(
                session,
                run_id,
                "lease_reclaimed",
                what="chunk",
                index=index,
                previous=row[2],
                attempt=row[0],
            )
    return None if row is None else (Claim(worker_id, row[0]), row[1])


async def release_chunk(
    factory: Factory,
    claim: Claim,
    run_id: int,
    index: int,
    error: str | None = None,
    *,
    retried: bool = False,
) -> bool:
    """Give the chunk back (after an error, which is kept), if this claim still holds it;
    ``retried``: its job is about to be retried for that error (a `chunk_retried` event)."""
    async with unit_of_work(factory) as session:
        released = await session.scalar(
            text(
                "UPDATE run_chunks SET claimed_by = NULL, lease_until = NULL, "
                "last_error = coalesce(:error, last_error) "
                "WHERE run_id = :run AND index = :index AND claimed_by = :me "
                "AND attempts = :attempt RETURNING 1"
            ),
            {
                "run": run_id,
                "index": index,
                "me": claim.worker_id,
                "attempt": claim.attempt,
                "error": error,
            },
        )
        if released is not None and retried:
            await events.add(
                session, run_id, "chunk_retried", index=index, attempt=claim.attempt, reason=error
            )
    return released is not None


async def claim_split(
    factory: Factory, worker_id: str, lease_s: int, run_id: int
) -> tuple[Claim, str | None] | None:
    params = {"me": worker_id, "lease": lease_s, "run": run_id}
    async with unit_of_work(factory) as session:
        row = (await session.execute(text(_CLAIM_SPLIT), params)).first()
        if row is not None and row[2] is not None:
            await events.add(
                session,
                run_id,
                "lease_reclaimed",
                what="split",
                index=None,
                previous=row[2],
                attempt=row[0],
            )
    return None if row is None else (Claim(worker_id, row[0]), row[1])


async def release_split(
    factory: Factory, claim: Claim, run_id: int, error: str | None = None
) -> bool:
    async with unit_of_work(factory) as session:
        released = await session.scalar(
            text(
                "UPDATE runs SET split_claimed_by = NULL, split_lease_until = NULL, "
                "split_last_error = coalesce(:error, split_last_error) "
                "WHERE id = :run AND split_claimed_by = :me AND split_attempt = :attempt "
                "RETURNING 1"
            ),
            {"run": run_id, "me": claim.worker_id, "attempt": claim.attempt, "error": error},
        )
    return released is not None


# Rows a running transaction holds are skipped, never waited for: a chunk being applied is
# protected by its row lock, and its lease is renewed at the next beat.
_RENEW_CHUNKS = """
UPDATE run_chunks SET lease_until = now() + make_interval(secs => :lease)
WHERE (run_id, index) IN (
    SELECT run_id, index FROM run_chunks
    WHERE claimed_by = :me AND status = 'pending' FOR UPDATE SKIP LOCKED)
"""
_RENEW_SPLITS = """
UPDATE runs SET split_lease_until = now() + make_interval(secs => :lease)
WHERE id IN (
    SELECT id FROM runs WHERE split_claimed_by = :me FOR NO KEY UPDATE SKIP LOCKED)
"""
_BEAT = """
INSERT INTO workers (id, host, pid, started_at, last_beat, jobs)
VALUES (:me, :host, :pid, now(), now(),
        (SELECT count(*) FROM run_chunks WHERE claimed_by = :me AND status = 'pending')
        + (SELECT count(*) FROM runs WHERE split_claimed_by = :me))
ON CONFLICT (id) DO UPDATE SET last_beat = excluded.last_beat, jobs = excluded.jobs
"""


async def beat(factory: Factory, worker_id: str, lease_s: int) -> None:
    """Renew this worker's leases and record its heartbeat."""
    params: dict[str, Any] = {"me": worker_id, "lease": lease_s}
    async with unit_of_work(factory) as session:
        await session.execute(text(_RENEW_CHUNKS), params)
        await session.execute(text(_RENEW_SPLITS), params)
    host, pid, _ = worker_id.rsplit(":", 2)
    async with unit_of_work(factory) as session:
        await session.execute(text(_BEAT), {"me": worker_id, "host": host, "pid": int(pid)})


async def release_all(
    factory: Factory, worker_id: str
) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
    """At shutdown: give back every lease this worker holds and remove its heartbeat row.
    Returns the chunks (run, index, attempts) and splits (run, attempt) to enqueue again."""
    async with unit_of_work(factory) as session:
        chunks = (
            await session.execute(
                text(
                    "UPDATE run_chunks SET claimed_by = NULL, lease_until = NULL "
                    "WHERE claimed_by = :me RETURNING run_id, index, attempts, status"
                ),
                {"me": worker_id},
            )
        ).all()
        splits = (
            await session.execute(
                text(
                    "UPDATE runs SET split_claimed_by = NULL, split_lease_until = NULL "
                    "WHERE split_claimed_by = :me RETURNING id, split_attempt"
                ),
                {"me": worker_id},
            )
        ).all()
        await session.execute(text("DELETE FROM workers WHERE id = :me"), {"me": worker_id})
    pending = [(r, i, a) for r, i, a, status in chunks if status == "pending"]
    return pending, [(r, a) for r, a in splits]
