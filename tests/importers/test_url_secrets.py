"""Credentials in a URL source (userinfo, secret-looking query parameters) are write-only, like
``source.headers``: the API shows them masked and keeps the stored ones on a round trip."""

from typing import Any

import httpx
import pytest

from tests.conftest import MakeToken

API = "/api/v1/ingest"
SECRET_URL = "https://user:pa55word@example.com/x.csv?api_key=k3y&page=1&X-Amz-Signature=s1g"
MASKED_URL = "https://user:***@example.com/x.csv?api_key=***&page=1&X-Amz-Signature=***"


def definition(url: str = SECRET_URL, **changes: Any) -> dict[str, Any]:
    return {
        "slug": "feed",
        "format": "csv",
        "source": {"type": "url", "url": url},
        "collection": "users",
        "key": "email",
        "fields": {"email": {"type": "email"}},
        **changes,
    }


@pytest.fixture
async def viewer_headers(make_token: MakeToken) -> dict[str, str]:
    return {"Authorization": f"Bearer {await make_token('viewer', ['ingest:view'])}"}


async def test_viewers_see_url_credentials_masked_in_every_importer_response(
    client: httpx.AsyncClient, admin_headers: dict[str, str], viewer_headers: dict[str, str]
) -> None:
    created = await client.post(f"{API}/importers", json=definition(), headers=admin_headers)
    assert created.status_code == 201, created.text
    shown = await client.get(f"{API}/importers/feed", headers=viewer_headers)
    listed = await client.get(f"{API}/importers", headers=viewer_headers)
    updated = await client.put(
        f"{API}/importers/feed", json=definition(name="Renamed"), headers=admin_headers
    )
    assert updated.status_code == 200, updated.text

    for body in (created.json()["data"], shown.json()["data"], listed.json()["data"][0]):
        assert body["definition"]["source"]["url"] == MASKED_URL
    assert updated.json()["data"]["definition"]["source"]["url"] == MASKED_URL
    for response in (created, shown, listed, updated):
        assert "pa55word" not in response.text
        assert "k3y" not in response.text
        assert "s1g" not in response.text


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("https://t0ken@example.com/x.csv", "https://***@example.com/x.csv"),
        (
            "https://example.com/x.csv?accessToken=a&client_secret=b&my-key=c&Sig=d&format=csv",
            "https://example.com/x.csv?accessToken=***&client_secret=***&my-key=***&Sig=***"
            "&format=csv",
        ),
        (
            "https://example.com/x.csv?page=2&sort=name",
            "https://example.com/x.csv?page=2&sort=name",
        ),
    ],
    ids=["user-name-alone", "secret-looking-parameters", "no-secrets"],
)
async def test_url_secrets_are_masked_by_name_and_other_parameters_are_shown(
    client: httpx.AsyncClient, admin_headers: dict[str, str], url: str, masked: str
) -> None:
    created = await client.post(f"{API}/importers", json=definition(url), headers=admin_headers)
    assert created.status_code == 201, created.text
    assert created.json()["data"]["definition"]["source"]["url"] == masked


async def test_a_masked_url_sent_for_another_origin_is_422(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await client.post(f"{API}/importers", json=definition(), headers=admin_headers)
    elsewhere = MASKED_URL.replace("example.com", "attacker.example")
    response = await client.put(
        f"{API}/importers/feed", json=definition(elsewhere), headers=admin_headers
    )
    assert response.status_code == 422, response.text
    assert "masked secret" in response.json()["errors"]["source.url"][0]


async def test_a_new_importer_with_a_masked_url_is_422(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.post(
        f"{API}/importers", json=definition(MASKED_URL), headers=admin_headers
    )
    assert response.status_code == 422, response.text
    assert "masked secret" in response.json()["errors"]["source.url"][0]
