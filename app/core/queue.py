"""The arq queue: a Redis pool that speaks JSON (never pickle) and enqueues only after commit.

Redis holds no truth. Job ids are deterministic (``split:42``, ``chunk:42:7``) so a job enqueued
twice runs once while it exists, and a job Redis lost is enqueued again by the reconciler.
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


def split_job_id(run_id: int) -> str:
    return f"split:{run_id}"


def chunk_job_id(run_id: int, index: int) -> str:
    return f"chunk:{run_id}:{index}"


async def enqueue_split(queue: ArqRedis, run_id: int) -> None:
    await queue.enqueue_job("split_run", run_id, _job_id=split_job_id(run_id))


async def enqueue_chunk(queue: ArqRedis, run_id: int, index: int) -> None:
    await queue.enqueue_job("apply_chunk", run_id, index, _job_id=chunk_job_id(run_id, index))


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
