"""Webhook subscriptions over HTTP (admin ability). A source-bound token sees and manages only
its own source's subscriptions (others: 404)."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, status

from app.auth.dependencies import Principal, require
from app.auth.permissions import ADMIN
from app.core.deps import SessionDep, SettingsDep
from app.core.errors import error_responses
from app.core.pagination import One, Page, PageParams, page_params, paginate
from app.core.params import INT4_MAX, INT8_MAX, _id_schema, _known_id
from app.webhooks import service
from app.webhooks.schemas import (
    DeliveryOut,
    DeliveryStatus,
    WebhookCreate,
    WebhookCreated,
    WebhookOut,
    WebhookUpdate,
)

router = APIRouter(prefix="/webhooks", tags=["webhooks"], responses=error_responses(401, 403, 422))

AdminDep = Annotated[Principal, Depends(require(ADMIN))]
# Path ids by their column, as app.core.params does for the others (beyond it: 404).
WebhookId = Annotated[
    int, _known_id("Webhook", INT4_MAX), _id_schema(INT4_MAX), Path(description="Webhook id.")
]
DeliveryId = Annotated[
    int, _known_id("Delivery", INT8_MAX), _id_schema(INT8_MAX), Path(description="Delivery id.")
]


@router.get("", response_model=Page[WebhookOut])
async def list_webhooks(
    request: Request,
    session: SessionDep,
    params: Annotated[PageParams, Depends(page_params)],
    principal: AdminDep,
) -> dict[str, Any]:
    """List webhook subscriptions, newest first (their secrets are never shown)."""
    stmt = service.list_query(principal.source_id)
    return await paginate(session, request, stmt, params, service.to_resource)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=One[WebhookCreated],
    responses=error_responses(400),
)
async def create_webhook(
    session: SessionDep, settings: SettingsDep, principal: AdminDep, body: WebhookCreate
) -> dict[str, Any]:
    """Subscribe a URL to events; the answer shows the signing secret, once."""
    subscription = await service.create(
        session, body.model_dump(exclude_unset=True), settings, principal.source_id
    )
    return {"data": service.to_resource(subscription, with_secret=True)}


@router.get("/{webhook_id:int}", response_model=One[WebhookOut], responses=error_responses(404))
async def show_webhook(
    webhook_id: WebhookId, session: SessionDep, principal: AdminDep
) -> dict[str, Any]:
    """Show one subscription (without its secret)."""
    subscription = await service.get(session, webhook_id, principal.source_id)
    return {"data": service.to_resource(subscription)}


@router.patch(
    "/{webhook_id:int}", response_model=One[WebhookOut], responses=error_responses(400, 404)
)
async def update_webhook(
    webhook_id: WebhookId,
    session: SessionDep,
    settings: SettingsDep,
    principal: AdminDep,
    body: WebhookUpdate,
) -> dict[str, Any]:
    """Change a subscription; only the fields given change (`enabled: true` re-enables it)."""
    subscription = await service.get(session, webhook_id, principal.source_id, lock=True)
    subscription = await service.update_subscription(
        session, subscription, body.model_dump(exclude_unset=True), settings, principal.source_id
    )
    return {"data": service.to_resource(subscription)}


@router.delete(
    "/{webhook_id:int}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404)
)
async def delete_webhook(webhook_id: WebhookId, session: SessionDep, principal: AdminDep) -> None:
    """Delete a subscription and its delivery log (nothing more is sent)."""
    await service.delete(session, await service.get(session, webhook_id, principal.source_id))


@router.post(
    "/{webhook_id:int}/rotate-secret",
    response_model=One[WebhookCreated],
    responses=error_responses(404),
)
async def rotate_webhook_secret(
    webhook_id: WebhookId, session: SessionDep, principal: AdminDep
) -> dict[str, Any]:
    """A new signing secret, shown once; the old one still signs for 24 hours."""
    subscription = await service.get(session, webhook_id, principal.source_id, lock=True)
    subscription = await service.rotate_secret(session, subscription)
    return {"data": service.to_resource(subscription, with_secret=True)}


@router.get(
    "/{webhook_id:int}/deliveries",
    response_model=Page[DeliveryOut],
    responses=error_responses(404),
)
async def list_deliveries(
    webhook_id: WebhookId,
    request: Request,
    session: SessionDep,
    params: Annotated[PageParams, Depends(page_params)],
    principal: AdminDep,
    status_: Annotated[DeliveryStatus | None, Query(alias="status")] = None,
) -> dict[str, Any]:
    """The subscription's delivery log, newest first (filter: status)."""
    subscription = await service.get(session, webhook_id, principal.source_id)
    stmt = service.deliveries_query(subscription.id, status_)
    return await paginate(session, request, stmt, params, service.delivery_resource)


@router.post(
    "/{webhook_id:int}/deliveries/{delivery_id:int}/redeliver",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=One[DeliveryOut],
    responses=error_responses(404, 409),
)
async def redeliver(
    webhook_id: WebhookId, delivery_id: DeliveryId, session: SessionDep, principal: AdminDep
) -> dict[str, Any]:
    """Send a delivery again now, with the same message id and a fresh set of retries."""
    subscription = await service.get(session, webhook_id, principal.source_id)
    delivery = await service.redeliver(session, subscription, delivery_id)
    return {"data": service.delivery_resource(delivery)}
