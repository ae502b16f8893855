"""Webhook subscriptions: CRUD, secret rotation, the delivery log and redelivery.

A source-bound token manages only its own source's subscriptions: it sees no other (404), and
what it creates is bound to its source.
"""

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from app.core.timefmt import iso
from app.importers.models import Importer
from app.pipeline.fetch import FetchError, check_url
from app.sources.models import Source
from app.webhooks import signing
from app.webhooks.models import WebhookDelivery, WebhookSubscription
from app.webhooks.outbox import NOTIFY_CHANNEL

# How long the old secret keeps signing after a rotation.
ROTATION_OVERLAP = timedelta(hours=24)


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, errors={field: [message]})


def visible(stmt: Select[Any], scope_source_id: int | None) -> Select[Any]:
    if scope_source_id is None:
        return stmt
    return stmt.where(WebhookSubscription.source_id == scope_source_id)


def list_query(scope_source_id: int | None) -> Select[tuple[WebhookSubscription]]:
    return visible(select(WebhookSubscription), scope_source_id).order_by(
        WebhookSubscription.id.desc()
    )


async def get(
    session: AsyncSession, webhook_id: int, scope_source_id: int | None, *, lock: bool = False
) -> WebhookSubscription:
    stmt = visible(
        select(WebhookSubscription).where(WebhookSubscription.id == webhook_id), scope_source_id
    )
    if lock:  # a change: concurrent ones to one subscription go one after the other
        stmt = stmt.with_for_update()
    found: WebhookSubscription | None = await session.scalar(
        stmt.execution_options(populate_existing=True)
    )
    if found is None:
        raise NotFound(f"Webhook {webhook_id} not found.")
    return found


async def check_target(url: str, settings: Settings) -> None:
    """The SSRF rule of URL sources (app.pipeline.fetch), as a field error."""
    try:
        await check_url(url, settings.allow_private_urls, deliver=True)
    except FetchError as exc:
        raise _invalid("url", str(exc)) from exc
    except (OSError, UnicodeError, ValueError) as exc:  # a host name DNS cannot take
        raise _invalid("url", f"The url's host cannot be resolved: {exc}.") from exc


async def _check_filters(
    session: AsyncSession, values: dict[str, Any], scope_source_id: int | None
) -> None:
    if "source_id" in values:
        source_id = values["source_id"]
        if scope_source_id is not None and source_id != scope_source_id:
            raise Forbidden("A source-bound token manages only its own source's webhooks.")
        if source_id is not None and await session.get(Source, source_id) is None:
            raise _invalid("source_id", "The selected source id is invalid.")
    if values.get("importer") is not None:
        importer = await session.scalar(select(Importer).where(Importer.slug == values["importer"]))
        if importer is None or (
            scope_source_id is not None and importer.source_id not in (None, scope_source_id)
        ):
            raise _invalid("importer", "The selected importer is invalid.")


async def create(
    session: AsyncSession, values: dict[str, Any], settings: Settings, scope_source_id: int | None
) -> WebhookSubscription:
    if scope_source_id is not None:
        values.setdefault("source_id", scope_source_id)
    await _check_filters(session, values, scope_source_id)
    await check_target(values["url"], settings)
    subscription = WebhookSubscription(
        **values, secret=signing.new_secret(), enabled=True, consecutive_failures=0
    )
    session.add(subscription)
    await session.flush()
    await session.refresh(subscription)
    return subscription


async def update_subscription(
    session: AsyncSession,
    subscription: WebhookSubscription,
    values: dict[str, Any],
    settings: Settings,
    scope_source_id: int | None,
) -> WebhookSubscription:
    for field in ("url", "events", "enabled"):
        if field in values and values[field] is None:
            raise _invalid(field, f"The {field} field may not be null.")
    await _check_filters(session, values, scope_source_id)
    if "url" in values:
        await check_target(values["url"], settings)
    enabled = values.pop("enabled", None)
    if enabled is True and not subscription.enabled:
        values |= {"enabled": True, "consecutive_failures": 0}
        values |= {"disabled_at": None, "disabled_reason": None}
    elif enabled is False and subscription.enabled:
        values |= {"enabled": False, "disabled_at": func.now()}
        values["disabled_reason"] = "Disabled over the API."
    for field, value in values.items():
        setattr(subscription, field, value)
    await session.flush()
    await session.refresh(subscription)
    return subscription


async def rotate_secret(
    session: AsyncSession, subscription: WebhookSubscription
) -> WebhookSubscription:
    """A new secret; the current one keeps signing (beside it) for ROTATION_OVERLAP."""
    subscription.previous_secret = subscription.secret
    subscription.previous_secret_expires_at = datetime.now(UTC) + ROTATION_OVERLAP
    subscription.secret = signing.new_secret()
    await session.flush()
    await session.refresh(subscription)
    return subscription


async def delete(session: AsyncSession, subscription: WebhookSubscription) -> None:
    await session.delete(subscription)
    await session.flush()


def to_resource(subscription: WebhookSubscription, *, with_secret: bool = False) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "id": subscription.id,
        "url": subscription.url,
        "events": list(subscription.events),
        "importer": subscription.importer,
        "source_id": subscription.source_id,
        "description": subscription.description,
        "enabled": subscription.enabled,
        "consecutive_failures": subscription.consecutive_failures,
        "disabled_at": iso(subscription.disabled_at),
        "disabled_reason": subscription.disabled_reason,
        "previous_secret_expires_at": iso(subscription.previous_secret_expires_at),
        "created_at": iso(subscription.created_at),
        "updated_at": iso(subscription.updated_at),
    }
    if with_secret:
        resource["secret"] = subscription.secret
    return resource


# --- deliveries -------------------------------------------------------------------------


def deliveries_query(subscription_id: int, status: str | None) -> Select[Any]:
    stmt = select(WebhookDelivery).where(WebhookDelivery.subscription_id == subscription_id)
    if status is not None:
        stmt = stmt.where(WebhookDelivery.status == status)
    return stmt.order_by(WebhookDelivery.id.desc())


def delivery_resource(delivery: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "subscription_id": delivery.subscription_id,
        "event_type": delivery.event_type,
        "message_id": delivery.message_id,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "last_status_code": delivery.last_status_code,
        "latency_ms": delivery.last_latency_ms,
        "response_excerpt": delivery.last_response,
        "error": delivery.last_error,
        "next_attempt_at": iso(delivery.next_attempt_at),
        "last_attempt_at": iso(delivery.last_attempt_at),
        "created_at": iso(delivery.created_at),
        "updated_at": iso(delivery.updated_at),
    }


async def redeliver(
    session: AsyncSession, subscription: WebhookSubscription, delivery_id: int
) -> WebhookDelivery:
    """Queue the delivery again now, with a fresh set of retries and the same message id.
    The workers are woken on commit (the outbox's notification)."""
    queued = await session.scalar(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.subscription_id == subscription.id,
            (WebhookDelivery.locked_until.is_(None)) | (WebhookDelivery.locked_until < func.now()),
        )
        .values(
            status="pending",
            attempts=0,
            next_attempt_at=func.now(),
            locked_until=None,
            updated_at=func.now(),
        )
        .returning(WebhookDelivery.id)
        .execution_options(synchronize_session=False)
    )
    if queued is None:
        exists = await session.scalar(
            select(WebhookDelivery.id).where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.subscription_id == subscription.id,
            )
        )
        if exists is None:
            raise NotFound(f"Delivery {delivery_id} of webhook {subscription.id} not found.")
        raise Conflict(f"Delivery {delivery_id} is being sent right now; try again shortly.")
    await session.execute(text(f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')"))
    delivery = await session.get(WebhookDelivery, delivery_id, populate_existing=True)
    assert delivery is not None
    return delivery
