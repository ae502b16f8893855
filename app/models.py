"""Imports every model so the metadata is complete (Alembic, tests)."""

from app.auth.models import Token, User
from app.importers.models import Importer
from app.items.models import Item, ItemEvent
from app.records.models import Collection
from app.runs.models import IdempotencyKey, Run, RunChunk, RunEvent, RunRow, Worker
from app.sources.models import Source
from app.webhooks.models import WebhookDelivery, WebhookSubscription

__all__ = [
    "Collection",
    "IdempotencyKey",
    "Importer",
    "Item",
    "ItemEvent",
    "Run",
    "RunChunk",
    "RunEvent",
    "RunRow",
    "Source",
    "Token",
    "User",
    "WebhookDelivery",
    "WebhookSubscription",
    "Worker",
]
