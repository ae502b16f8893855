"""Fixtures for the push API and the review workflow: example importers, sources, tokens for
each role, a push helper and a factory for items in any status."""

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.db import unit_of_work
from app.items.models import Item
from app.records.store import content_hash
from app.sources.models import Source
from tests.conftest import CreateImporter, MakeToken

PREFIX = "/api/v1/ingest"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "importers"

Headers = dict[str, str]
PushImporter = Callable[..., Awaitable[dict[str, Any]]]
MakeSource = Callable[..., Awaitable[int]]
Push = Callable[..., Awaitable[httpx.Response]]
MakeItem = Callable[..., Awaitable[int]]
HeadersFor = Callable[..., Awaitable[Headers]]


def example(slug: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{slug}.yaml").read_text())
    return data


def bearer(token: str) -> Headers:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def push_importer(create_importer: CreateImporter) -> PushImporter:
    """``await push_importer("event", approval="auto", chunk_size=50)``: an example importer
    from examples/importers, created over the API, with overrides."""

    async def create(slug: str = "event", **overrides: Any) -> dict[str, Any]:
        return await create_importer(**{**example(slug), **overrides})

    return create


@pytest.fixture
def make_source(session_factory: async_sessionmaker[AsyncSession]) -> MakeSource:
    """``await make_source("a", approval_mode="manual")`` -> the new source's id; its URL is
    ``https://<name>.example.test/feed``."""

    async def make(name: str = "feed", **fields: Any) -> int:
        async with unit_of_work(session_factory) as session:
            source = Source(name=name, source_url=f"https://{name}.example.test/feed", **fields)
            session.add(source)
            await session.flush()
            return source.id

    return make


@pytest.fixture
def agent_headers(make_token: MakeToken) -> HeadersFor:
    """A service token bound to ``source_id`` (what POST /sources/{id}/tokens issues)."""

    async def make(source_id: int | None) -> Headers:
        token = await make_token(
            role="service", abilities=["ingest:view", "ingest:create"], source_id=source_id
        )
        return bearer(token)

    return make


@pytest.fixture
async def curator_headers(make_token: MakeToken) -> Headers:
    return bearer(
        await make_token(
            role="curator", abilities=["ingest:view", "ingest:review"], email="curator@example.test"
        )
    )


@pytest.fixture
def push(client: httpx.AsyncClient) -> Push:
    """``await push("event", items, headers)``; a dict is sent as ``{"item": ...}``."""

    async def send(
        slug: str,
        items: list[dict[str, Any]] | dict[str, Any],
        headers: Headers,
        **kwargs: Any,
    ) -> httpx.Response:
        body = {"item": items} if isinstance(items, dict) else {"items": items}
        return await client.post(f"{PREFIX}/items/{slug}", json=body, headers=headers, **kwargs)

    return send


def event(n: int, source: str = "https://feed.example.test/feed", **extra: Any) -> dict[str, Any]:
    """A valid event item; titles differ enough between numbers not to be near duplicates."""
    words = ["Harbour", "Jazz", "Lantern", "Market", "Poetry", "Quartet", "Regatta", "Sunrise"]
    title = f"{words[n % len(words)]} {words[(n // 8) % len(words)]} night no. {n:04d}"
    return {
        "external_id": f"ev-{n}",
        "source_url": source,
        "title": title,
        "starts_at": "2026-06-01T19:00:00Z",
        "city": "Lisbon",
        **extra,
    }


@pytest.fixture
def make_item(session_factory: async_sessionmaker[AsyncSession]) -> MakeItem:
    """``await make_item(status="approved", type="event", data={...})`` -> item id, inserted
    directly (for transition tests that need an item in a given state)."""
    counter = iter(range(1, 1_000_000))

    async def make(status: str = "pending", **fields: Any) -> int:
        n = next(counter)
        data = fields.pop("data", None) or {
            "external_id": f"it-{n}",
            "source_url": "https://feed.example.test/feed",
            "title": f"Item number {n}",
            "starts_at": "2026-06-01T19:00:00Z",
        }
        values: dict[str, Any] = {
            "type": "event",
            "collection": "events",
            "key": f"{data.get('source_url')}|{data.get('external_id')}",
            "external_id": data.get("external_id"),
            "title": data.get("title"),
            "data": data,
            "original": data,
            "content_hash": content_hash(data),
            "row_number": n,
            **fields,
            "status": status,
        }
        async with unit_of_work(session_factory) as session:
            item = Item(**values)
            session.add(item)
            await session.flush()
            return item.id

    return make


async def count(session_factory: async_sessionmaker[AsyncSession], sql: str, **params: Any) -> int:
    async with session_factory() as session:
        return int(await session.scalar(text(sql), params) or 0)
