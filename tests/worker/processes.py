"""Real worker processes for recovery tests: start, freeze, kill, and wait on them."""

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Short leases and a reconciler every second: a dead worker's chunk is taken over in seconds.
FAST = {"INGEST_LEASE_SECONDS": "2", "INGEST_RECONCILE_INTERVAL_SECONDS": "1"}


def start_worker(
    settings: Settings, log: Path | None = None, **env: str
) -> subprocess.Popen[bytes]:
    """``ingest worker`` in its own process, on the tests' database, Redis and storage; with
    `log`, its log at INFO goes to that file."""
    environ = {
        **os.environ,
        "INGEST_DATABASE_URL": settings.require_database_url(),
        "INGEST_REDIS_URL": settings.require_redis_url(),
        "INGEST_QUEUE_NAME": settings.queue_name,
        "INGEST_STORAGE_DIR": str(settings.storage_dir),
        "INGEST_LOG_LEVEL": "WARNING" if log is None else "INFO",
        **FAST,
        **env,
    }
    with open(log or os.devnull, "wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"],
            env=environ,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=output,
        )


@contextmanager
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes appended to the list are killed (and reaped) at the end, whatever happens."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


async def wait_for(check: Callable[[], Awaitable[Any]], what: str, deadline_s: float = 30) -> Any:
    """Poll ``check`` until it returns something truthy (returned), or fail after the deadline."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")


async def wait_exit(proc: subprocess.Popen[bytes], deadline_s: float) -> int | None:
    """The process's exit code, or None if it still runs after the deadline."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(proc.wait), deadline_s)
    except TimeoutError:
        return None


async def fetch(factory: async_sessionmaker[AsyncSession], sql: str, **params: Any) -> list[Any]:
    async with factory() as session:
        return list((await session.execute(text(sql), params)).all())


async def worker_id_of(factory: async_sessionmaker[AsyncSession], pid: int) -> str | None:
    """The id a worker process registered with its first heartbeat."""
    rows = await fetch(factory, "SELECT id FROM workers WHERE pid = :pid", pid=pid)
    return rows[0][0] if rows else None


async def chunk_claimed_by(
    factory: async_sessionmaker[AsyncSession], run_id: int, worker_id: str
) -> int | None:
    """The index of a pending chunk of the run that this worker holds."""
    rows = await fetch(
        factory,
        "SELECT index FROM run_chunks WHERE run_id = :run AND claimed_by = :me "
        "AND status = 'pending' ORDER BY index LIMIT 1",
        run=run_id,
        me=worker_id,
    )
    return rows[0][0] if rows else None
