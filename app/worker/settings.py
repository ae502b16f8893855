"""arq worker construction. The worker builds its own engine and queue in ``on_startup``."""

import asyncio
import contextlib
import gc
import logging
from typing import Any

from arq import Worker, cron

import app.models  # noqa: F401  (every table, for the ORM's foreign keys)
from app.core.config import Settings
from app.core.db import create_engine, create_session_factory
from app.core.logs import configure_logging
from app.core.queue import (
    create_queue,
    deserialize,
    enqueue_chunk,
    enqueue_quietly,
    enqueue_split,
    serialize,
)
from app.runs.live import listen_dsn
from app.webhooks import sender as webhook_sender
from app.worker import leases, reconcile, tasks

log = logging.getLogger("ingest.worker")


class QuietCronLogs(logging.Filter):
    """Demotes arq's start and finish lines of the named cron jobs from INFO to DEBUG.

    The scheduler tick runs every minute: its two lines would be most of an idle worker's
    log. Their retries and failures, and every line of the split and chunk jobs, keep
    their level. The match is on arq's own format strings (arq/worker.py ``Worker.run_job``):
    should arq change them, the lines show again rather than more going.
    """

    LINES = frozenset({"%6.2fs → %s(%s)%s", "%6.2fs ← %s ● %s"})

    def __init__(self, names: set[str]) -> None:
        super().__init__()
        self.names = frozenset(names)

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not (
            record.msg in self.LINES
            and isinstance(args, tuple)
            and len(args) > 1
            and args[1] in self.names  # a cron job's ref is its name, e.g. "cron:schedule_tick"
        ):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        # The logger checked INFO before calling its filters: check the new level here.
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


# arq names a cron job "cron:" + its function's name unless given one.
QUIET_CRON_LOGS = QuietCronLogs({f"cron:{tasks.schedule_tick.__qualname__}"})


def quiet_cron_logs() -> None:
    """Log the ticks' runs at DEBUG (adding the same filter twice is a no-op)."""
    logging.getLogger("arq.worker").addFilter(QUIET_CRON_LOGS)


async def _heartbeat(ctx: dict[str, Any]) -> None:
    """Renew this worker's leases and heartbeat every third of a lease, beside its jobs."""
    settings: Settings = ctx["settings"]
    while True:
        await asyncio.sleep(settings.lease_seconds / 3)
        try:
            await leases.beat(ctx["session_factory"], ctx["worker_id"], settings.lease_seconds)
        except Exception:
            # Postgres away for a moment: the next beat tries again (the leases may lapse,
            # and are then taken over, which is safe).
            log.exception("heartbeat failed")


async def _reconciler(ctx: dict[str, Any]) -> None:
    """Reconcile at start-up and every INGEST_RECONCILE_INTERVAL_SECONDS, beside the jobs.

    Not an arq cron job: a cron run queues behind every chunk enqueued before its tick, so
    under load the work of a dead worker would wait for the queue to drain."""
    settings: Settings = ctx["settings"]
    thorough = True
    while True:
        try:
            await reconcile.reconcile(ctx, thorough=thorough)
            thorough = False
        except Exception:
            log.exception("reconciling failed")  # Postgres or Redis away: the next pass retries
        await asyncio.sleep(settings.reconcile_interval_seconds)


async def _stop(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _release(ctx: dict[str, Any]) -> None:
    chunks, splits = await leases.release_all(ctx["session_factory"], ctx["worker_id"])
    queue = ctx["queue"]
    for run_id, index, attempt in chunks:
        await enqueue_quietly(enqueue_chunk, queue, run_id, index, attempt)
    for run_id, attempt in splits:
        await enqueue_quietly(enqueue_split, queue, run_id, attempt)
    if chunks or splits:
        log.info("released %s chunks and %s splits at shutdown", len(chunks), len(splits))


def create_worker(settings: Settings, *, burst: bool = False, **overrides: Any) -> Worker:
    queue = create_queue(settings.require_redis_url(), settings.queue_name)

    async def on_startup(ctx: dict[str, Any]) -> None:
        # Asynchronous commit for the worker's bulk transactions: a Postgres crash may lose
        # the last few hundred milliseconds of commits, each atomically (chunk writes with
        # its ledger row), and the reconciler re-applies what is pending again. Nothing is
        # half-applied, and a commit no longer waits for a WAL flush.
        # No pre-ping: it costs a round trip per chunk; a dropped connection fails the job,
        # which is retried.
        # A frozen worker's open transaction must not hold its locks forever: Postgres ends
        # it, and the chunk's lease is taken over.
        idle_ms = max(2 * settings.lease_seconds, 10) * 1000
        engine = create_engine(
            settings.require_database_url(),
            pool_pre_ping=False,
            connect_args={
                "server_settings": {
                    "synchronous_commit": "off",
                    "idle_in_transaction_session_timeout": str(idle_ms),
                }
            },
        )
        ctx["settings"] = settings
        ctx["engine"] = engine
        ctx["session_factory"] = create_session_factory(engine)
        ctx["queue"] = queue
        ctx["worker_id"] = leases.new_worker_id()
        settings.storage_dir.mkdir(parents=True, exist_ok=True)
        await leases.beat(ctx["session_factory"], ctx["worker_id"], settings.lease_seconds)
        ctx["heartbeat"] = asyncio.create_task(_heartbeat(ctx))
        if burst:
            await reconcile.reconcile(ctx)  # once, before the queue is drained
        else:
            ctx["reconciler"] = asyncio.create_task(_reconciler(ctx))
            dsn = listen_dsn(settings.require_database_url())
            ctx["webhooks"] = asyncio.create_task(webhook_sender.dispatch(ctx, dsn))

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        # Running jobs have finished (or were cancelled after the grace): give back what this
        # worker still holds, so other workers take it at once. arq closes the Redis pool
        # itself after this hook.
        await _stop(ctx.get("reconciler"))
        await _stop(ctx.get("webhooks"))
        await _stop(ctx["heartbeat"])
        try:
            await _release(ctx)
        finally:
            await ctx["engine"].dispose()

    options: dict[str, Any] = {
        "functions": [
            tasks.split_run_function(settings),
            tasks.apply_chunk_function(),
            tasks.send_webhooks_function(),
        ],
        "cron_jobs": [
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
        # On SIGTERM: take no new job, give running ones the grace, then cancel them.
        "job_completion_wait": settings.shutdown_grace_seconds,
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
    if settings.log_format == "json":
        configure_logging(settings)  # one JSON object per line (app/core/logs.py)
    else:
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(message)s")
    quiet_cron_logs()
    tune_gc()
    use_uvloop()  # before the worker is built: arq takes the current loop
    create_worker(settings, burst=burst).run()
