"""Console sessions over HTTP: the cookie, the API accepting it, CSRF, sign-out, revocation."""

import hashlib

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.models import ConsoleSession, Token
from app.auth.sessions import COOKIE, CSRF_HEADER, CSRF_MESSAGE
from app.core.security import hash_token
from tests.conftest import MakeToken
from tests.console.conftest import csrf_of, sign_in
from tests.factories import USER_FIELDS

API = "/api/v1/ingest"
IMPORTER = {"slug": "users", "collection": "users", "key": ["email"], "fields": USER_FIELDS}


async def test_sign_in_sets_an_httponly_strict_cookie_and_stores_only_its_hash(
    client: httpx.AsyncClient,
    make_token: MakeToken,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    token = await make_token(role="curator", abilities=["ingest:view", "ingest:review"])
    response = await client.post("/console/sign-in", data={"token": token})
    assert response.status_code == 303
    assert response.headers["location"] == "/console"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP here; HTTPS requests get Secure
    raw = client.cookies[COOKIE]
    async with session_factory() as session:
        stored = (await session.scalars(select(ConsoleSession))).all()
        token_id = await session.scalar(
            select(Token.id).where(Token.token_hash == hash_token(token))
        )
    assert len(stored) == 1
    assert stored[0].session_hash == hashlib.sha256(raw.encode()).hexdigest()
    assert stored[0].token_id == token_id
    assert stored[0].revoked_at is None and stored[0].expires_at > stored[0].created_at
    # A curator lands on the review queue.
    landing = await client.get("/console")
    assert landing.status_code == 303 and landing.headers["location"] == "/console/items"


async def test_sign_in_over_https_marks_the_cookie_secure(
    client: httpx.AsyncClient, make_token: MakeToken
) -> None:
    token = await make_token()
    response = await client.post("https://test/console/sign-in", data={"token": token})
    assert response.status_code == 303
    assert "Secure" in response.headers["set-cookie"]


async def test_a_bad_token_is_refused_with_the_form_again(
    client: httpx.AsyncClient, make_token: MakeToken
) -> None:
    response = await client.post("/console/sign-in", data={"token": "ingest_nonsense"})
    assert response.status_code == 401
    assert "That token was not accepted" in response.text
    assert COOKIE not in client.cookies
    # Signed out, the console sends you to the form; the API answers 401.
    page = await client.get("/console/items")
    assert page.status_code == 303 and page.headers["location"] == "/console/sign-in"
    assert (await client.get(f"{API}/")).status_code == 401


async def test_a_sign_in_posted_from_another_site_is_refused(
    client: httpx.AsyncClient, make_token: MakeToken
) -> None:
    token = await make_token()
    response = await client.post(
        "/console/sign-in", data={"token": token}, headers={"Origin": "https://evil.example"}
    )
    assert response.status_code == 403
    assert COOKIE not in client.cookies


async def test_the_api_accepts_the_session_cookie(
    client: httpx.AsyncClient, make_token: MakeToken
) -> None:
    await sign_in(client, await make_token())
    response = await client.get(f"{API}/importers")
    assert response.status_code == 200
    assert response.json()["data"] == []


async def test_a_cookie_post_to_the_api_needs_the_csrf_token(
    client: httpx.AsyncClient, make_token: MakeToken
) -> None:
    csrf = await sign_in(client, await make_token())
    refused = await client.post(f"{API}/importers", json=IMPORTER)
    assert refused.status_code == 403
    assert refused.json() == {"message": CSRF_MESSAGE}
    wrong = await client.post(f"{API}/importers", json=IMPORTER, headers={CSRF_HEADER: "x" * 43})
    assert wrong.status_code == 403
    assert (await client.get(f"{API}/importers")).json()["data"] == []

    created = await client.post(f"{API}/importers", json=IMPORTER, headers={CSRF_HEADER: csrf})
    assert created.status_code == 201, created.text
    deleted = await client.delete(f"{API}/importers/users")
    assert deleted.status_code == 403  # DELETE is a state change too


async def test_a_bearer_token_wins_over_the_cookie(
    client: httpx.AsyncClient, make_token: MakeToken
) -> None:
    await sign_in(client, await make_token())  # an admin's session
    viewer = await make_token(role="viewer", abilities=["ingest:view"])
    as_viewer = await client.post(
        f"{API}/importers", json=IMPORTER, headers={"Authorization": f"Bearer {viewer}"}
    )
    assert as_viewer.status_code == 403
    assert "requires the ingest:admin ability" in as_viewer.json()["message"]
    broken = await client.get(f"{API}/importers", headers={"Authorization": "Bearer nope"})
    assert broken.status_code == 401


async def test_sign_out_revokes_the_session_server_side(
    client: httpx.AsyncClient, make_token: MakeToken
) -> None:
    csrf = await sign_in(client, await make_token())
    raw = client.cookies[COOKIE]
    without_csrf = await client.post("/console/sign-out")
    assert without_csrf.status_code == 403
    assert (await client.get(f"{API}/importers")).status_code == 200

    out = await client.post("/console/sign-out", data={"csrf_token": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/console/sign-in"
    assert COOKIE not in client.cookies
    # The old cookie, replayed, no longer opens anything.
    client.cookies.set(COOKIE, raw)
    replay = await client.get(f"{API}/importers")
    assert replay.status_code == 401


async def test_revoking_the_token_ends_its_sessions(
    client: httpx.AsyncClient,
    make_token: MakeToken,
    admin_headers: dict[str, str],
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    token = await make_token(role="viewer", abilities=["ingest:view"])
    await sign_in(client, token)
    assert (await client.get(f"{API}/")).status_code == 200
    async with session_factory() as session:
        token_id = await session.scalar(
            select(Token.id).where(Token.token_hash == hash_token(token))
        )
    raw = client.cookies[COOKIE]
    client.cookies.clear()
    revoked = await client.delete(f"{API}/tokens/{token_id}", headers=admin_headers)
    assert revoked.status_code in (200, 204), revoked.text
    client.cookies.set(COOKIE, raw)
    assert (await client.get(f"{API}/")).status_code == 401
    page = await client.get("/console/runs")
    assert page.status_code == 303 and page.headers["location"] == "/console/sign-in"


async def test_an_expired_token_ends_its_sessions(
    client: httpx.AsyncClient,
    make_token: MakeToken,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    token = await make_token()
    await sign_in(client, token)
    async with session_factory() as session, session.begin():
        found = await session.scalar(select(Token).where(Token.token_hash == hash_token(token)))
        assert found is not None
        found.expires_at = found.created_at
    assert (await client.get(f"{API}/importers")).status_code == 401


async def test_the_csrf_token_belongs_to_its_session(app: object, make_token: MakeToken) -> None:
    """A second browser's CSRF token does not open the first one's session."""
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://test") as first,
        httpx.AsyncClient(transport=transport, base_url="http://test") as second,
    ):
        await sign_in(first, await make_token())
        other = await sign_in(second, await make_token())
        assert other != await csrf_of(first)
        refused = await first.post(f"{API}/importers", json=IMPORTER, headers={CSRF_HEADER: other})
        assert refused.status_code == 403
