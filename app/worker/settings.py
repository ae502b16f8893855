"""arq worker construction. The worker builds its own engine and queue in ``on_startup``."""

import asyncio
import gc
import logging
from typing import Any

from arq import Worker, cron

import app.models  # noqa: F401  (every table, for the ORM's foreign keys)
from app.core.config import Settings
from app.core.db import create_engine, create_session_factory
from app.core.queue import create_queue, deserialize, serialize
from app.worker import reconcile, tasks

log = logging.getLogger("ingest.worker")

CHUNK_TIMEOUT_S = 300


def create_worker(settings: Settings, *, burst: bool = False, **overrides: Any) -> Worker:
    queue = create_queue(settings.require_redis_url(), settings.queue_name)

    async def on_startup(ctx: dict[str, Any]) -> None:
        # Asynchronous commit for the worker's bulk transactions: a Postgres crash may lose
        # the last few hundred milliseconds of commits, each atomically (chunk writes with
        # its ledger row), and the reconciler re-applies what is pending again. Nothing is
        # half-applied, and a commit no longer waits for a WAL flush.
        # No pre-ping: it costs a round trip per chunk; a dropped connection fails the job,
        # which is retried.
        engine = create_engine(
            settings.require_database_url(),
            pool_pre_ping=False,
            connect_args={"server_settings": {"synchronous_commit": "off"}},
        )
        ctx["settings"] = settings
        ctx["engine"] = engine
        ctx["session_factory"] = create_session_factory(engine)
        ctx["queue"] = queue
        settings.storage_dir.mkdir(parents=True, exist_ok=True)

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        # arq closes the Redis pool itself after this hook.
        await ctx["engine"].dispose()

    options: dict[str, Any] = {
        "functions": [
            tasks.split_run_function(settings),
            tasks.apply_chunk_function(CHUNK_TIMEOUT_S),
        ],
        "cron_jobs": [
            cron(reconcile.reconcile, second=0, run_at_startup=True, unique=True),
            cron(tasks.schedule_tick, second=5, unique=True),
        ],
        "redis_pool": queue,
        "queue_name": settings.queue_name,
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "burst": burst,
        "max_jobs": settings.worker_max_jobs,
        "keep_result": 0,
        "poll_delay": settings.worker_poll_seconds,
        "job_serializer": serialize,
        "job_deserializer": deserialize,
        # Only jobs that raise arq's Retry run again (chunk and split jobs do, a few times,
        # before failing their rows or run in Postgres); the reconciler re-enqueues the rest.
        "retry_jobs": True,
        "max_tries": 5,
        "handle_signals": not burst,
    }
    options.update(overrides)
    return Worker(**options)


def tune_gc() -> None:
    """Chunks allocate a few objects per cell: at the default threshold (700) the cyclic
    collector ran every few rows. Start-up objects are frozen out of its scans."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 50)


def use_uvloop() -> None:
    """Run on uvloop where it is installed (a dependency on Linux and macOS): a Postgres
    round trip costs the worker about a third less CPU than on asyncio's own loop, a Redis
    one about a sixth less."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop(uvloop.new_event_loop())


def run_worker(settings: Settings, *, burst: bool = False) -> None:
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(message)s")
    tune_gc()
    use_uvloop()  # before the worker is built: arq takes the current loop
    create_worker(settings, burst=burst).run()
