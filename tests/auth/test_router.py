"""The token API: create (plaintext once), list (never secrets), revoke."""

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.models import User
from app.auth.permissions import ADMIN, CREATE, REVIEW, VIEW
from app.core.security import hash_token, is_well_formed
from tests.auth.conftest import GetToken, MakeSource
from tests.auth.helpers import bearer
from tests.conftest import MakeToken

TOKENS = "/api/v1/ingest/tokens"
IMPORTERS = "/api/v1/ingest/importers"
RESOURCE_KEYS = {
    "id",
    "name",
    "prefix",
    "abilities",
    "effective_abilities",
    "status",
    "user",
    "source_id",
    "expires_at",
    "revoked_at",
    "last_used_at",
    "created_at",
}


async def _create(
    client: httpx.AsyncClient, headers: dict[str, str], **body: Any
) -> dict[str, Any]:
    body.setdefault("name", "n8n")
    body.setdefault("abilities", [VIEW, CREATE])
    response = await client.post(TOKENS, json=body, headers=headers)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def test_create_shows_the_plaintext_once_and_it_works(
    client: httpx.AsyncClient, admin_headers: dict[str, str], get_token: GetToken
) -> None:
    data = await _create(client, admin_headers, name="agent", abilities=[CREATE, VIEW, VIEW])
    plaintext = data.pop("token")
    assert set(data) == RESOURCE_KEYS
    assert is_well_formed(plaintext)
    assert plaintext.startswith(data["prefix"]) and data["prefix"].startswith("ingest_")
    assert data["name"] == "agent"
    assert data["abilities"] == [CREATE, VIEW]
    assert data["status"] == "active"
    assert data["revoked_at"] is None and data["expires_at"] is None
    # Only a hash is stored.
    stored = await get_token(plaintext)
    assert stored.id == data["id"] and stored.token_hash == hash_token(plaintext)

    assert (await client.get(IMPORTERS, headers=bearer(plaintext))).status_code == 200


async def test_create_without_a_user_gives_the_token_to_the_caller(
    client: httpx.AsyncClient, make_token: MakeToken
) -> None:
    headers = bearer(await make_token(email="boss@example.test"))
    data = await _create(client, headers)
    assert data["user"]["email"] == "boss@example.test"
    assert data["user"]["role"] == "admin"


async def test_create_for_a_new_user_creates_them_with_the_role(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    data = await _create(
        client, admin_headers, abilities=[ADMIN], user_email="bot@example.test", role="service"
    )
    assert data["user"]["email"] == "bot@example.test"
    assert data["user"]["role"] == "service"
    assert data["effective_abilities"] == [CREATE, VIEW]
    async with session_factory() as session:
        user = await session.scalar(select(User).where(User.email == "bot@example.test"))
    assert user is not None and user.role == "service"


async def test_create_for_an_existing_user_with_another_role_is_422(
    client: httpx.AsyncClient, admin_headers: dict[str, str], make_token: MakeToken
) -> None:
    await make_token(role="viewer", email="viewer@example.test")
    response = await client.post(
        TOKENS,
        json={
            "name": "x",
            "abilities": [VIEW],
            "user_email": "viewer@example.test",
            "role": "admin",
        },
        headers=admin_headers,
    )
    assert response.status_code == 422
    assert "already exists with the role 'viewer'" in response.json()["errors"]["role"][0]


async def test_create_with_an_expiry(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    data = await _create(client, admin_headers, expires_in_days=30)
    expires = datetime.fromisoformat(data["expires_at"])
    assert abs(expires - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=1)

    at = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    data = await _create(client, admin_headers, expires_at=at.isoformat())
    assert datetime.fromisoformat(data["expires_at"]) == at


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"abilities": ["ingest:everything"]}, "abilities", "'ingest:everything' is invalid"),
        ({"abilities": []}, "abilities", "at least one ability"),
        ({"role": "overlord", "user_email": "o@example.test"}, "role", "role is invalid"),
        ({"name": "  "}, "name", "The name field is required."),
        ({"user_email": "not-an-email"}, "user_email", "valid email address"),
        ({"source_id": 424242}, "source_id", "The selected source id is invalid."),
        ({"expires_in_days": 0}, "expires_in_days", "greater than or equal to 1"),
        ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at", "a date after now"),
        (
            {"expires_in_days": 1, "expires_at": "2999-01-01T00:00:00Z"},
            "expires_at",
            "not both",
        ),
        ({"token_hash": "x"}, "token_hash", "Extra inputs are not permitted"),
    ],
)
async def test_create_with_invalid_input_is_422_with_field_messages(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    body: dict[str, Any],
    field: str,
    message: str,
) -> None:
    response = await client.post(
        TOKENS, json={"name": "n", "abilities": [VIEW], **body}, headers=admin_headers
    )
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert list(errors) == [field]
    assert message in errors[field][0]


async def test_list_never_shows_secrets(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    created = await _create(client, admin_headers, name="listed")
    response = await client.get(TOKENS, headers=admin_headers)
    assert response.status_code == 200
    body = response.json()
    assert created["token"] not in response.text
    assert hash_token(created["token"]) not in response.text
    assert body["meta"]["total"] == 2  # the admin's own token and the new one
    newest = body["data"][0]
    assert set(newest) == RESOURCE_KEYS
    assert newest["id"] == created["id"] and newest["name"] == "listed"
    assert newest["prefix"] == created["prefix"]


async def test_list_is_paginated_newest_first(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    for name in ("one", "two", "three"):
        await _create(client, admin_headers, name=name)
    body = (await client.get(TOKENS, params={"per_page": 2}, headers=admin_headers)).json()
    assert [t["name"] for t in body["data"]] == ["three", "two"]
    assert body["meta"] == {"current_page": 1, "per_page": 2, "total": 4, "last_page": 2}
    assert body["links"]["next"] is not None


async def test_revoke_is_204_and_the_token_stops_working(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    created = await _create(client, admin_headers)
    plaintext = created["token"]
    assert (await client.get(IMPORTERS, headers=bearer(plaintext))).status_code == 200

    response = await client.delete(f"{TOKENS}/{created['id']}", headers=admin_headers)
    assert response.status_code == 204
    assert response.content == b""

    response = await client.get(IMPORTERS, headers=bearer(plaintext))
    assert response.status_code == 401
    assert response.json() == {"message": "Unauthenticated."}
    listed = (await client.get(TOKENS, headers=admin_headers)).json()["data"]
    revoked = next(t for t in listed if t["id"] == created["id"])
    assert revoked["status"] == "revoked" and revoked["revoked_at"] is not None

    # Revoking again changes nothing.
    again = await client.delete(f"{TOKENS}/{created['id']}", headers=admin_headers)
    assert again.status_code == 204
    listed = (await client.get(TOKENS, headers=admin_headers)).json()["data"]
    assert next(t for t in listed if t["id"] == created["id"]) == revoked


async def test_revoke_of_an_unknown_token_is_404(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.delete(f"{TOKENS}/999999", headers=admin_headers)
    assert response.status_code == 404
    assert response.json() == {"message": "Token 999999 not found."}


@pytest.mark.parametrize(
    ("role", "abilities"), [("admin", [VIEW, CREATE, REVIEW]), ("service", [ADMIN])]
)
async def test_token_api_needs_the_admin_ability(
    client: httpx.AsyncClient, make_token: MakeToken, role: str, abilities: list[str]
) -> None:
    headers = bearer(await make_token(role=role, abilities=abilities))
    victim = await make_token()
    assert (await client.get(TOKENS, headers=headers)).status_code == 403
    response = await client.post(TOKENS, json={"name": "n", "abilities": [ADMIN]}, headers=headers)
    assert response.status_code == 403
    assert response.json() == {"message": "This action requires the ingest:admin ability."}
    assert (await client.delete(f"{TOKENS}/1", headers=headers)).status_code == 403
    assert (await client.get(IMPORTERS, headers=bearer(victim))).status_code == 200


async def test_a_source_bound_admin_token_manages_only_its_source_tokens(
    client: httpx.AsyncClient, make_token: MakeToken, make_source: MakeSource
) -> None:
    a, b = await make_source("a"), await make_source("b")
    headers_a = bearer(await make_token(source_id=a))
    other = await _create(client, bearer(await make_token(source_id=b)), name="b-agent")
    unbound = await _create(client, bearer(await make_token()), name="unbound")

    # Issued tokens default to the caller's source, and cannot escape it.
    mine = await _create(client, headers_a, name="a-agent")
    assert mine["source_id"] == a
    response = await client.post(
        TOKENS, json={"name": "escape", "abilities": [ADMIN], "source_id": b}, headers=headers_a
    )
    assert response.status_code == 403

    listed = (await client.get(TOKENS, headers=headers_a)).json()["data"]
    assert {t["source_id"] for t in listed} == {a}
    assert mine["id"] in {t["id"] for t in listed}

    for token in (other, unbound):
        response = await client.delete(f"{TOKENS}/{token['id']}", headers=headers_a)
        assert response.status_code == 404
        assert (await client.get(IMPORTERS, headers=bearer(token["token"]))).status_code == 200


async def test_openapi_documents_the_token_routes(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert {"200", "401", "403", "422"} <= set(paths[TOKENS]["get"]["responses"])
    assert {"201", "401", "403", "422"} <= set(paths[TOKENS]["post"]["responses"])
    delete = paths[f"{TOKENS}/{{token_id}}"]["delete"]["responses"]
    assert {"204", "401", "403", "404"} <= set(delete)
    created = paths[TOKENS]["post"]["responses"]["201"]["content"]["application/json"]
    assert created["schema"]["$ref"].endswith("One_TokenCreated_")
