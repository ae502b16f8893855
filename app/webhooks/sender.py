"""Sending deliveries: claim the due ones, POST them signed, record what happened.

- A claim is a conditional UPDATE of due rows picked ``FOR UPDATE SKIP LOCKED``, committed at
  once: it sets a lease (``locked_until``) and counts the attempt, so two workers never take
  one delivery, and a sender that died mid-attempt gives it back when the lease ends. The
  result is recorded only while the lease is the one this sender took.
- Each attempt checks the URL again (the SSRF rule of URL sources: DNS may have changed since
  the subscription was saved), follows no redirect (a 3xx is a failure), gives up after
  ``INGEST_WEBHOOK_TIMEOUT_SECONDS`` in all, and reads at most ``RESPONSE_EXCERPT`` bytes of
  the answer.
- A failed attempt is retried after the waits of ``INGEST_WEBHOOK_RETRY_SECONDS``; after the
  last the delivery is ``failed``. ``INGEST_WEBHOOK_DISABLE_AFTER`` failed deliveries in a
  row (a success resets the count) disable the subscription, with the reason on it.
- Workers wake on the outbox's notification (sent on commit) and every
  ``INGEST_WEBHOOK_POLL_SECONDS``, and then queue the ``send_webhooks`` jobs if anything is due.
"""

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import __version__
from app.core.config import Settings
from app.core.db import unit_of_work
from app.core.queue import enqueue_quietly
from app.pipeline.fetch import FetchError, check_url
from app.webhooks import signing
from app.webhooks.outbox import NOTIFY_CHANNEL

log = logging.getLogger("ingest.webhooks")

RESPONSE_EXCERPT = 1024
# Deliveries claimed (and sent concurrently) at a time by one job.
BATCH = 20
SEND_JOB = "send_webhooks"
# Send jobs that may run at once, on any workers: each claims its own batches, so a slow
# receiver holds up one of them, not every delivery.
SEND_SLOTS = 4

_DUE = (
    "d.status = 'pending' AND d.next_attempt_at <= now() "
    "AND (d.locked_until IS NULL OR d.locked_until < now()) AND s.enabled"
)

CLAIM = f"""
WITH due AS (
    SELECT d.id FROM webhook_deliveries d
    JOIN webhook_subscriptions s ON s.id = d.subscription_id
    WHERE {_DUE}
    ORDER BY d.next_attempt_at, d.id
    LIMIT :limit
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE webhook_deliveries d
SET locked_until = clock_timestamp() + make_interval(secs => :lease),
    attempts = d.attempts + 1, last_attempt_at = now(), updated_at = now()
FROM due, webhook_subscriptions s
WHERE d.id = due.id AND s.id = d.subscription_id
RETURNING d.id, d.message_id, d.body, d.attempts, d.locked_until, s.id AS subscription_id,
    s.url, s.secret,
    CASE WHEN s.previous_secret_expires_at > now() THEN s.previous_secret END AS previous_secret
"""

ANY_DUE = (
    "SELECT EXISTS (SELECT 1 FROM webhook_deliveries d "
    f"JOIN webhook_subscriptions s ON s.id = d.subscription_id WHERE {_DUE})"
)

SUCCEEDED = """
WITH done AS (
    UPDATE webhook_deliveries SET status = 'succeeded', locked_until = NULL,
        next_attempt_at = NULL, last_status_code = :code, last_latency_ms = :ms,
        last_response = :response, last_error = NULL, updated_at = now()
    WHERE id = :id AND locked_until = :lease
    RETURNING subscription_id
)
UPDATE webhook_subscriptions SET consecutive_failures = 0
WHERE id IN (SELECT subscription_id FROM done) AND consecutive_failures <> 0
"""

FAILED = """
UPDATE webhook_deliveries SET
    status = CASE WHEN CAST(:retry_in AS float8) IS NULL THEN 'failed' ELSE 'pending' END,
    next_attempt_at = now() + make_interval(secs => CAST(:retry_in AS float8)),
    locked_until = NULL, last_status_code = :code, last_latency_ms = :ms,
    last_response = :response, last_error = :error, updated_at = now()
WHERE id = :id AND locked_until = :lease
RETURNING id
"""

# One more failed delivery in a row; at the limit (0: none) the subscription is disabled.
COUNT_FAILURE = """
UPDATE webhook_subscriptions SET
    consecutive_failures = consecutive_failures + 1,
    enabled = enabled AND NOT (:limit > 0 AND consecutive_failures + 1 >= :limit),
    disabled_at = CASE WHEN enabled AND :limit > 0 AND consecutive_failures + 1 >= :limit
                       THEN now() ELSE disabled_at END,
    disabled_reason = CASE WHEN enabled AND :limit > 0 AND consecutive_failures + 1 >= :limit
                           THEN :reason ELSE disabled_reason END,
    updated_at = now()
WHERE id = :id
RETURNING NOT enabled AND disabled_at = now() AS disabled_now, consecutive_failures
"""


@dataclass(frozen=True)
class Claimed:
    id: int
    subscription_id: int
    message_id: str
    body: str
    attempts: int
    lease: datetime
    url: str
    secrets: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    ok: bool
    status_code: int | None = None
    latency_ms: int | None = None
    response: str | None = None
    error: str | None = None


async def claim(
    factory: async_sessionmaker[AsyncSession], settings: Settings, limit: int = BATCH
) -> list[Claimed]:
    lease = settings.webhook_timeout_seconds + 30
    async with unit_of_work(factory) as session:
        rows = (await session.execute(text(CLAIM), {"limit": limit, "lease": lease})).all()
    return [
        Claimed(
            id=row.id,
            subscription_id=row.subscription_id,
            message_id=row.message_id,
            body=row.body,
            attempts=row.attempts,
            lease=row.locked_until,
            url=row.url,
            secrets=tuple(s for s in (row.secret, row.previous_secret) if s),
        )
        for row in rows
    ]


async def attempt(client: httpx.AsyncClient, delivery: Claimed, settings: Settings) -> Outcome:
    """One POST of the delivery; never raises for what the receiver or the network did."""
    started = time.monotonic()
    limit = settings.webhook_timeout_seconds
    try:
        # The DNS lookup of the check counts towards the attempt's time too.
        async with asyncio.timeout(limit):
            return await _post(client, delivery, settings)
    except FetchError as exc:
        return Outcome(ok=False, error=str(exc))
    except TimeoutError:
        return Outcome(ok=False, latency_ms=_ms(started), error=f"No answer within {limit:g} s.")
    except httpx.HTTPError as exc:
        return Outcome(ok=False, latency_ms=_ms(started), error=f"{type(exc).__name__}: {exc}")


async def _post(client: httpx.AsyncClient, delivery: Claimed, settings: Settings) -> Outcome:
    await check_url(delivery.url, settings.allow_private_urls, deliver=True)
    headers = {
        **signing.headers(delivery.secrets, delivery.message_id, int(time.time()), delivery.body),
        "content-type": "application/json",
        "user-agent": f"Ingest-Webhooks/{__version__}",
        # The excerpt is read as sent: no decompression of what a receiver chose to send.
        "accept-encoding": "identity",
    }
    sent = time.monotonic()
    async with client.stream(
        "POST", delivery.url, content=delivery.body.encode(), headers=headers
    ) as response:
        excerpt = await _excerpt(response)
    code, error = response.status_code, None
    if response.is_redirect:
        error = f"HTTP {code}: redirects are not followed."
    elif not 200 <= code < 300:
        error = f"HTTP {code}."
    return Outcome(error is None, code, _ms(sent), excerpt, error)


async def _excerpt(response: httpx.Response) -> str:
    """The first RESPONSE_EXCERPT bytes of the body; the rest is never read."""
    taken = bytearray()
    async for block in response.aiter_raw():
        taken += block
        if len(taken) >= RESPONSE_EXCERPT:
            break
    return bytes(taken[:RESPONSE_EXCERPT]).decode("utf-8", "replace")


def _ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def retry_in(attempts: int, settings: Settings) -> float | None:
    """Seconds until the next attempt after ``attempts`` failed ones; None: no more."""
    schedule = settings.webhook_retry_seconds
    return schedule[attempts - 1] if attempts <= len(schedule) else None


async def record(
    factory: async_sessionmaker[AsyncSession],
    delivery: Claimed,
    outcome: Outcome,
    settings: Settings,
) -> None:
    params: dict[str, Any] = {
        "id": delivery.id,
        "lease": delivery.lease,
        "code": outcome.status_code,
        "ms": outcome.latency_ms,
        "response": outcome.response,
    }
    async with unit_of_work(factory) as session:
        if outcome.ok:
            await session.execute(text(SUCCEEDED), params)
            return
        wait = retry_in(delivery.attempts, settings)
        params |= {"retry_in": wait, "error": (outcome.error or "")[:2000]}
        if (await session.execute(text(FAILED), params)).first() is None or wait is not None:
            return  # not ours any more (the lease ran out), or it will be tried again
        limit = settings.webhook_disable_after
        reason = f"Disabled after {limit} failed deliveries in a row; the last: {outcome.error}"
        found = (
            await session.execute(
                text(COUNT_FAILURE),
                {"id": delivery.subscription_id, "limit": limit, "reason": reason[:2000]},
            )
        ).first()
    if found is not None and found.disabled_now:
        log.warning("webhook subscription %s disabled: %s", delivery.subscription_id, reason)


async def send_due(factory: async_sessionmaker[AsyncSession], settings: Settings) -> int:
    """Send every due delivery, a batch at a time, until none is due; returns how many
    attempts were made."""
    made = 0
    timeout = httpx.Timeout(settings.webhook_timeout_seconds)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
        while batch := await claim(factory, settings):

            async def one(delivery: Claimed) -> None:
                try:
                    outcome = await attempt(client, delivery, settings)
                except Exception as exc:  # a bug here must not strand the batch's leases
                    log.exception("webhook delivery %s: attempt failed", delivery.id)
                    outcome = Outcome(ok=False, error=f"{type(exc).__name__}: {exc}")
                await record(factory, delivery, outcome, settings)

            await asyncio.gather(*(one(delivery) for delivery in batch))
            made += len(batch)
    return made


async def any_due(factory: async_sessionmaker[AsyncSession]) -> bool:
    async with factory() as session:
        return bool(await session.scalar(text(ANY_DUE)))


async def enqueue_send(queue: Any) -> None:
    """One job per slot: a slot whose job waits or runs already gets no second one (the id
    is taken), as that job sends until nothing is due."""
    for slot in range(SEND_SLOTS):
        await queue.enqueue_job(SEND_JOB, _job_id=f"webhooks:send:{slot}")


async def dispatch(ctx: dict[str, Any], dsn: str) -> None:
    """A worker's wake-up loop: on each outbox notification (one LISTEN connection) or every
    INGEST_WEBHOOK_POLL_SECONDS, queue the send job if a delivery is due."""
    settings: Settings = ctx["settings"]
    woken = asyncio.Event()
    conn: asyncpg.Connection | None = None
    try:
        while True:
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(dsn)
                    await conn.add_listener(NOTIFY_CHANNEL, lambda *_: woken.set())
                if await any_due(ctx["session_factory"]):
                    await enqueue_quietly(enqueue_send, ctx["queue"])
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("webhook dispatch: %s; trying again", exc)
                if conn is not None:
                    conn.terminate()
                conn = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), settings.webhook_poll_seconds)
            woken.clear()
    finally:
        if conn is not None and not conn.is_closed():
            await conn.close()
