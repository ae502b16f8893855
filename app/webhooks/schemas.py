"""Webhook API shapes. A subscription's secret appears only in ``WebhookCreated`` (the create
and rotate-secret answers)."""

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator
from typing_extensions import TypeAliasType

from app.core.openapi import documented_as
from app.core.schemas import Int4Id, RequestBody
from app.webhooks.outbox import EVENT_TYPES, EventType

# The event types, named in the OpenAPI document (the outbox holds the one list).
WebhookEvent = TypeAliasType("WebhookEvent", EventType)
DeliveryStatus = TypeAliasType("DeliveryStatus", Literal["pending", "succeeded", "failed"])
DELIVERY_STATUSES = ("pending", "succeeded", "failed")

URL = (
    "Where deliveries are POSTed: http or https. A private or loopback address is refused "
    "unless INGEST_ALLOW_PRIVATE_URLS (checked when saved and again at every attempt)."
)


def _url(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises for a port that is not a number or out of range)
    except ValueError as exc:
        raise ValueError("The url must be a valid URL.") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("The url must be a valid http or https URL.")
    if any(ch.isspace() or ord(ch) < 32 for ch in value):
        raise ValueError("The url must not contain spaces or control characters.")
    return value


def _events(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    if not value:
        raise ValueError("The events field must name at least one event.")
    for event in value:
        if event not in EVENT_TYPES:
            raise ValueError(
                f"The selected event {event!r} is invalid (choose from {', '.join(EVENT_TYPES)})."
            )
    return sorted(set(value), key=EVENT_TYPES.index)


Events = Annotated[list[Annotated[str, Field(max_length=40)]], documented_as(list[WebhookEvent])]


class _Fields(RequestBody):
    model_config = ConfigDict(extra="forbid")

    importer: Annotated[str | None, Field(max_length=100)] = Field(
        None, description="Only runs and items of this importer (its slug)."
    )
    source_id: Int4Id | None = Field(None, description="Only runs and items of this source.")
    description: Annotated[str | None, Field(max_length=2000)] = None

    @field_validator("url", check_fields=False)
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        return _url(value)

    @field_validator("events", check_fields=False)
    @classmethod
    def _check_events(cls, value: list[str] | None) -> list[str] | None:
        return _events(value)


class WebhookCreate(_Fields):
    url: Annotated[str, Field(min_length=1, max_length=2000)] = Field(description=URL)
    events: Events = Field(description="The events to deliver, at least one.")


class WebhookUpdate(_Fields):
    """Only the fields given change; `importer`, `source_id` and `description` may be null."""

    url: Annotated[str | None, Field(min_length=1, max_length=2000)] = Field(None, description=URL)
    events: Events | None = None
    enabled: bool | None = Field(
        None, description="false pauses deliveries; true resumes them and clears the failures."
    )


class WebhookOut(BaseModel):
    id: int
    url: str
    events: list[WebhookEvent]
    importer: str | None
    source_id: int | None
    description: str | None
    enabled: bool
    consecutive_failures: int = Field(description="Failed deliveries in a row.")
    disabled_at: str | None
    disabled_reason: str | None = Field(description="Why deliveries stopped, when they did.")
    previous_secret_expires_at: str | None = Field(
        description="After a rotation: until then deliveries are signed with the old secret too."
    )
    created_at: str | None
    updated_at: str | None


class WebhookCreated(WebhookOut):
    secret: str = Field(description="The signing secret (`whsec_...`). Shown once: store it now.")


class DeliveryOut(BaseModel):
    id: int
    subscription_id: int
    event_type: WebhookEvent
    message_id: str = Field(description="The `webhook-id` header: the same on every attempt.")
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    latency_ms: int | None = Field(description="Of the last attempt.")
    response_excerpt: str | None = Field(description="The first 1 KB of the last answer.")
    error: str | None = Field(description="Why the last attempt failed.")
    next_attempt_at: str | None
    last_attempt_at: str | None
    created_at: str | None
    updated_at: str | None
