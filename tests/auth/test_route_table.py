"""Every API route answers 401 without a token and 403 with a token lacking its ability.

Built from the app's route table: a route added later without ``require(ability)`` fails here.
"""

import httpx
import pytest

from app.auth.permissions import ABILITIES
from tests.auth.helpers import bearer
from tests.auth.routes import ROUTES, RouteCase
from tests.conftest import MakeToken

UNAUTHENTICATED = {"message": "Unauthenticated."}


def _require_ability(case: RouteCase) -> None:
    if not case.abilities:
        pytest.fail(
            f"{case.name} has no require(ability) dependency: every route but /healthz and "
            "/readyz must declare one, e.g. Depends(require(VIEW))."
        )


def test_the_route_table_includes_the_token_routes() -> None:
    names = {case.name for case in ROUTES}
    assert {
        "GET /api/v1/ingest/tokens",
        "POST /api/v1/ingest/tokens",
        "DELETE /api/v1/ingest/tokens/{token_id}",
    } <= names


def test_the_route_table_includes_the_webhook_routes_and_they_require_admin() -> None:
    webhooks = {case.name: case.abilities for case in ROUTES if "/webhooks" in case.path}
    hook, deliveries = "/api/v1/ingest/webhooks/{webhook_id}", "/deliveries"
    assert set(webhooks) == {
        "GET /api/v1/ingest/webhooks",
        "POST /api/v1/ingest/webhooks",
        f"GET {hook}",
        f"PATCH {hook}",
        f"DELETE {hook}",
        f"POST {hook}/rotate-secret",
        f"GET {hook}{deliveries}",
        f"POST {hook}{deliveries}/{{delivery_id}}/redeliver",
    }
    assert set(webhooks.values()) == {frozenset({"ingest:admin"})}


def test_every_route_requires_a_known_ability() -> None:
    unprotected = [case.name for case in ROUTES if not case.abilities]
    assert not unprotected, f"routes without require(ability): {', '.join(unprotected)}"
    unknown = {case.name: case.abilities - set(ABILITIES) for case in ROUTES}
    assert not {name: a for name, a in unknown.items() if a}


@pytest.mark.parametrize("case", ROUTES, ids=lambda case: case.name)
async def test_route_without_a_token_is_401(client: httpx.AsyncClient, case: RouteCase) -> None:
    _require_ability(case)
    response = await client.request(case.method, case.url, **case.request_kwargs())
    assert response.status_code == 401, f"{case.name}: {response.status_code} {response.text}"
    assert response.json() == UNAUTHENTICATED
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("case", ROUTES, ids=lambda case: case.name)
async def test_route_with_a_token_lacking_its_ability_is_403(
    client: httpx.AsyncClient, make_token: MakeToken, case: RouteCase
) -> None:
    _require_ability(case)
    # The user's role allows everything: only the token's own abilities fall short.
    token = await make_token(role="admin", abilities=case.token_lacking_abilities())
    response = await client.request(
        case.method, case.url, headers=bearer(token), **case.request_kwargs()
    )
    assert response.status_code == 403, f"{case.name}: {response.status_code} {response.text}"
    assert "requires the ingest:" in response.json()["message"]
