"""Fixtures for the sources API."""

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from tests.conftest import CreateImporter, MakeToken

PREFIX = "/api/v1/ingest"
Headers = dict[str, str]
CreateSource = Callable[..., Awaitable[dict[str, Any]]]
UrlImporter = Callable[..., Awaitable[dict[str, Any]]]


def bearer(token: str) -> Headers:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def create_source(client: httpx.AsyncClient, admin_headers: Headers) -> CreateSource:
    """``await create_source("a", approval_mode="manual")`` over the API -> the resource;
    its URL is ``https://<name>.example.test/feed`` unless given."""

    async def create(name: str = "feed", **fields: Any) -> dict[str, Any]:
        body = {"name": name, "source_url": f"https://{name}.example.test/feed", **fields}
        response = await client.post(f"{PREFIX}/sources", json=body, headers=admin_headers)
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    return create


@pytest.fixture
def url_importer(create_importer: CreateImporter) -> UrlImporter:
    """``await url_importer("prices", source_id=1)``: a URL importer of a source."""

    async def create(slug: str, source_id: int | None, **extra: Any) -> dict[str, Any]:
        return await create_importer(
            slug=slug,
            source={"type": "url", "url": f"https://data.example.test/{slug}.csv"},
            source_id=source_id,
            key=["sku"],
            fields={"sku": {"type": "string"}},
            **extra,
        )

    return create


@pytest.fixture
async def service_headers(make_token: MakeToken) -> Headers:
    """A service user's token (view + create): may create sources, not administer them."""
    return bearer(await make_token(role="service", abilities=["ingest:view", "ingest:create"]))
