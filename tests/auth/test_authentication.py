"""Bearer authentication: 401 cases, role ∩ ability, and ``last_used_at``."""

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.models import Token
from app.auth.permissions import ADMIN, CREATE, REVIEW, VIEW, effective_abilities
from app.core.db import unit_of_work
from app.core.security import generate_token
from tests.auth.conftest import GetToken
from tests.auth.helpers import bearer
from tests.auth.routes import ROUTES
from tests.conftest import MakeToken

IMPORTERS = "/api/v1/ingest/importers"
TOKENS = "/api/v1/ingest/tokens"
UNAUTHENTICATED = {"message": "Unauthenticated."}


def _bad_checksum(token: str) -> str:
    last = token[-1]
    return token[:-1] + ("A" if last != "A" else "B")


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing header"),
        pytest.param({"Authorization": "Bearer"}, id="empty bearer"),
        pytest.param({"Authorization": "Basic dXNlcjpwYXNz"}, id="basic scheme"),
        pytest.param({"Authorization": "Bearer not-a-token"}, id="garbage"),
        pytest.param({"Authorization": f"Bearer {generate_token()[:-1]}"}, id="truncated"),
        pytest.param(
            {"Authorization": f"Bearer {_bad_checksum(generate_token())}"}, id="bad checksum"
        ),
        pytest.param(
            {"Authorization": f"Bearer {generate_token().replace('ingest_', 'ingesx_')}"},
            id="wrong prefix",
        ),
    ],
)
async def test_missing_or_malformed_token_is_401_without_a_database_query(
    client: httpx.AsyncClient, queries: list[str], headers: dict[str, str]
) -> None:
    response = await client.get(IMPORTERS, headers=headers)
    assert response.status_code == 401
    assert response.json() == UNAUTHENTICATED
    assert queries == []


async def test_a_mistyped_real_token_is_refused_without_a_database_query(
    client: httpx.AsyncClient, make_token: MakeToken, queries: list[str]
) -> None:
    token = await make_token()
    response = await client.get(IMPORTERS, headers=bearer(_bad_checksum(token)))
    assert response.status_code == 401
    assert response.json() == UNAUTHENTICATED
    assert queries == []


async def test_unknown_well_formed_token_is_401_after_one_lookup(
    client: httpx.AsyncClient, queries: list[str]
) -> None:
    response = await client.get(IMPORTERS, headers=bearer(generate_token()))
    assert response.status_code == 401
    assert response.json() == UNAUTHENTICATED
    # The control for the tests above: the listener does see the app's queries.
    assert [q for q in queries if "FROM tokens" in q]


async def test_expired_token_is_401(client: httpx.AsyncClient, make_token: MakeToken) -> None:
    token = await make_token(expires_in=timedelta(seconds=-1))
    response = await client.get(IMPORTERS, headers=bearer(token))
    assert response.status_code == 401
    assert response.json() == UNAUTHENTICATED


async def test_token_before_its_expiry_works(
    client: httpx.AsyncClient, make_token: MakeToken
) -> None:
    token = await make_token(expires_in=timedelta(hours=1))
    assert (await client.get(IMPORTERS, headers=bearer(token))).status_code == 200


async def test_revoked_token_is_401(
    client: httpx.AsyncClient,
    make_token: MakeToken,
    get_token: GetToken,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    token = await make_token()
    assert (await client.get(IMPORTERS, headers=bearer(token))).status_code == 200
    token_id = (await get_token(token)).id
    async with unit_of_work(session_factory) as session:
        await session.execute(
            update(Token).where(Token.id == token_id).values(revoked_at=datetime.now(UTC))
        )
    response = await client.get(IMPORTERS, headers=bearer(token))
    assert response.status_code == 401
    assert response.json() == UNAUTHENTICATED


@pytest.mark.parametrize(
    ("abilities", "role", "expected"),
    [
        ([ADMIN], "admin", {VIEW, CREATE, REVIEW, ADMIN}),
        ([ADMIN], "curator", {VIEW, REVIEW}),
        ([ADMIN], "service", {VIEW, CREATE}),
        ([ADMIN], "viewer", {VIEW}),
        ([VIEW, CREATE], "curator", {VIEW}),
        ([REVIEW], "service", set()),
        ([VIEW], "no-such-role", set()),
    ],
)
def test_effective_abilities_are_the_token_abilities_within_the_role(
    abilities: list[str], role: str, expected: set[str]
) -> None:
    assert effective_abilities(abilities, role) == expected


async def test_an_ability_the_role_lacks_is_403(
    client: httpx.AsyncClient, make_token: MakeToken
) -> None:
    token = await make_token(role="service", abilities=[ADMIN])
    assert (await client.get(IMPORTERS, headers=bearer(token))).status_code == 200
    response = await client.get(TOKENS, headers=bearer(token))
    assert response.status_code == 403
    assert response.json() == {"message": "This action requires the ingest:admin ability."}


async def test_demoting_a_user_to_viewer_limits_all_their_tokens_at_once(
    client: httpx.AsyncClient,
    make_token: MakeToken,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    email = "ops@example.test"
    granted = {"admin": [ADMIN], "service": [VIEW, CREATE]}
    tokens = {
        name: await make_token(role="admin", abilities=abilities, email=email)
        for name, abilities in granted.items()
    }
    # Routes that need more than view: each token gets past the ability check where its own
    # abilities cover the route (the answer is then whatever the route says, never 403).
    beyond_view = [case for case in ROUTES if case.abilities - {VIEW}]
    assert beyond_view
    for name, token in tokens.items():
        for case in beyond_view:
            if case.abilities <= effective_abilities(granted[name], "admin"):
                response = await client.request(
                    case.method, case.url, headers=bearer(token), **case.request_kwargs()
                )
                assert response.status_code != 403, f"{name} token, {case.name}"

    async with unit_of_work(session_factory) as session:
        await session.execute(
            text("UPDATE users SET role = 'viewer' WHERE email = :email"), {"email": email}
        )

    for name, token in tokens.items():
        assert (await client.get(IMPORTERS, headers=bearer(token))).status_code == 200
        for case in beyond_view:
            response = await client.request(
                case.method, case.url, headers=bearer(token), **case.request_kwargs()
            )
            assert response.status_code == 403, f"{name} token, {case.name}: {response.text}"


async def test_last_used_at_is_set_on_first_use_and_kept_within_a_minute(
    client: httpx.AsyncClient, make_token: MakeToken, get_token: GetToken
) -> None:
    token = await make_token()
    assert (await get_token(token)).last_used_at is None

    assert (await client.get(IMPORTERS, headers=bearer(token))).status_code == 200
    first = (await get_token(token)).last_used_at
    assert first is not None

    assert (await client.get(IMPORTERS, headers=bearer(token))).status_code == 200
    assert (await get_token(token)).last_used_at == first


async def test_last_used_at_is_refreshed_once_a_minute_has_passed(
    client: httpx.AsyncClient,
    make_token: MakeToken,
    get_token: GetToken,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    token = await make_token()
    stale = datetime.now(UTC) - timedelta(minutes=2)
    token_id = (await get_token(token)).id
    async with unit_of_work(session_factory) as session:
        await session.execute(update(Token).where(Token.id == token_id).values(last_used_at=stale))

    assert (await client.get(IMPORTERS, headers=bearer(token))).status_code == 200
    refreshed = (await get_token(token)).last_used_at
    assert refreshed is not None and refreshed > stale + timedelta(minutes=1)


async def test_last_used_at_is_recorded_even_when_the_request_is_refused(
    client: httpx.AsyncClient, make_token: MakeToken, get_token: GetToken
) -> None:
    token = await make_token(abilities=[VIEW])
    assert (await client.get(TOKENS, headers=bearer(token))).status_code == 403
    assert (await get_token(token)).last_used_at is not None


async def test_openapi_declares_the_bearer_scheme_on_protected_routes(
    client: httpx.AsyncClient,
) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for case in ROUTES:
        operation = spec["paths"][case.path][case.method.lower()]
        assert {"HTTPBearer": []} in operation["security"], case.name
        assert {"401", "403"} <= set(operation["responses"]), case.name
