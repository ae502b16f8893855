"""The arq queue: a Redis pool that speaks JSON (never pickle) and enqueues only after commit.

Redis holds no truth. Job ids are deterministic and carry the claims the work had so far in the
ledger (``split:42:0``, ``chunk:42:7:0``): a job enqueued twice runs once while it exists, a job
Redis lost is enqueued again by the reconciler, and work whose worker died is enqueued under a
new id, so arq's stale "in progress" lock of the dead attempt never blocks it.
"""

from typing import Any

import orjson
from arq import ArqRedis
from arq.connections import RedisSettings
from redis.asyncio import ConnectionPool
from redis.exceptions import RedisError


def serialize(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj, default=str)


def deserialize(data: bytes) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(data)
    return value


def redis_settings(url: str) -> RedisSettings:
    settings = RedisSettings.from_dsn(url)
    settings.conn_timeout = 2
    settings.conn_retries = 1
    return settings


def create_queue(url: str, queue_name: str) -> ArqRedis:
    """A lazy pool: nothing connects until first use, so the API starts (and reports
    not-ready) while Redis is down."""
    pool = ConnectionPool.from_url(url, socket_connect_timeout=2, socket_timeout=10)
    return ArqRedis(
        connection_pool=pool,
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=queue_name,
    )


def split_job_id(run_id: int, attempt: int = 0, retake: int | None = None) -> str:
    return f"split:{run_id}:{attempt}" + ("" if retake is None else f":{retake}")


def chunk_job_id(run_id: int, index: int, attempt: int = 0, retake: int | None = None) -> str:
    return f"chunk:{run_id}:{index}:{attempt}" + ("" if retake is None else f":{retake}")


async def enqueue_split(
    queue: ArqRedis,
    run_id: int,
    attempt: int = 0,
    retake: int | None = None,
) -> None:
    """``attempt`` is the claims the split had so far (0 for a new run); ``retake`` tells a
    job apart from one a dead worker took before it could claim (see the reconciler)."""
    job_id = split_job_id(run_id, attempt, retake)
    await queue.enqueue_job("split_run", run_id, _job_id=job_id)


async def enqueue_chunk(
    queue: ArqRedis,
    run_id: int,
    index: int,
    attempt: int = 0,
    retake: int | None = None,
) -> None:
    """``attempt`` is the claims the chunk had so far (0 for a new chunk); ``retake`` as for
    ``enqueue_split``."""
    job_id = chunk_job_id(run_id, index, attempt, retake)
    await queue.enqueue_job("apply_chunk", run_id, index, _job_id=job_id)


async def taken_by_a_worker(queue: ArqRedis, job_id: str) -> bool:
    """Whether arq has the job in progress (on some worker, alive or not)."""
    from arq.jobs import Job, JobStatus

    return await Job(job_id, queue).status() == JobStatus.in_progress


async def queue_depth(queue: ArqRedis, queue_name: str) -> int | None:
    """Jobs in the queue, waiting or running (arq keeps a job in the queue's sorted set until
    it ends): one ZCARD. ``None`` when Redis cannot be reached, which refuses nothing, as
    ``enqueue_quietly`` defers rather than fails."""
    import logging

    try:
        return int(await queue.zcard(queue_name))
    except (OSError, RedisError) as exc:
        logging.getLogger("ingest.queue").warning("queue depth unknown: %s", exc)
        return None


async def close_queue(queue: ArqRedis) -> None:
    await queue.aclose(close_connection_pool=True)


async def enqueue_quietly(enqueue: Any, *args: Any) -> bool:
    """Enqueue, but treat an unreachable Redis as "later": Postgres already holds the work and
    the reconciler enqueues it again."""
    import logging

    try:
        await enqueue(*args)
    except (OSError, RedisError) as exc:
        logging.getLogger("ingest.queue").warning("enqueue deferred to the reconciler: %s", exc)
        return False
    return True
