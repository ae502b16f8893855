"""Authentication of bearer tokens (or of the console's session cookie) and the per-route
ability check."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import sessions
from app.auth.models import Token, User
from app.auth.permissions import effective_abilities
from app.core.db import unit_of_work
from app.core.errors import Forbidden, Unauthenticated
from app.core.security import hash_token, is_well_formed

bearer = HTTPBearer(auto_error=False, description="A service token (`ingest_...`).")

# `last_used_at` is written at most this often per token, not on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class Principal:
    user_id: int
    token_id: int
    role: str
    abilities: frozenset[str]
    # A token bound to one source sees only that source's data.
    source_id: int | None = None
    # Set when the request came with the console's session cookie instead of a bearer token.
    console_session_id: int | None = None
    csrf_secret: str | None = field(default=None, repr=False)

    def can(self, ability: str) -> bool:
        return ability in self.abilities


async def authenticate(session: AsyncSession, raw_token: str | None) -> Principal:
    """The principal behind ``raw_token``, or ``Unauthenticated`` (missing, malformed, unknown,
    expired or revoked: one answer for all, so a caller learns nothing about which)."""
    # The format and checksum are checked before any query: garbage never reaches the DB.
    if not raw_token or not is_well_formed(raw_token):
        raise Unauthenticated()
    # Looked up by SHA-256, never compared as plaintext: what the index lookup's timing could
    # hint at is the hash, which does not help anyone find a token.
    row = (
        await session.execute(
            select(Token, User.role)
            .join(User, User.id == Token.user_id)
            .where(Token.token_hash == hash_token(raw_token))
        )
    ).first()
    if row is None:
        raise Unauthenticated()
    token, role = row
    return await _principal_of(session, token, role)


async def authenticate_session(session: AsyncSession, raw_session: str | None) -> Principal:
    """The principal behind a console session cookie: the session must be live *and* its token
    still valid (a revoked or expired token ends every session opened with it)."""
    found = await sessions.find(session, raw_session)
    if found is None:
        raise Unauthenticated()
    console_session, token, role = found
    principal = await _principal_of(session, token, role)
    return Principal(
        user_id=principal.user_id,
        token_id=principal.token_id,
        role=principal.role,
        abilities=principal.abilities,
        source_id=principal.source_id,
        console_session_id=console_session.id,
        csrf_secret=console_session.csrf_secret,
    )


async def _principal_of(session: AsyncSession, token: Token, role: str) -> Principal:
    now = datetime.now(UTC)
    if token.revoked_at is not None or (token.expires_at is not None and token.expires_at <= now):
        raise Unauthenticated()
    if token.last_used_at is None or token.last_used_at < now - LAST_USED_RESOLUTION:
        # The condition is repeated in SQL so concurrent requests write it once.
        await session.execute(
            update(Token)
            .where(
                Token.id == token.id,
                or_(
                    Token.last_used_at.is_(None),
                    Token.last_used_at < func.now() - LAST_USED_RESOLUTION,
                ),
            )
            .values(last_used_at=func.now())
            .execution_options(synchronize_session=False)
        )
    return Principal(
        user_id=token.user_id,
        token_id=token.id,
        role=role,
        abilities=effective_abilities(token.abilities, role),
        source_id=token.source_id,
    )


async def current_principal(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> Principal:
    if "authorization" not in request.headers and sessions.COOKIE in request.cookies:
        # The console's cookie, only when no Authorization header is sent: a bearer wins.
        async with unit_of_work(request.app.state.session_factory) as session:
            principal = await authenticate_session(session, request.cookies[sessions.COOKIE])
        # A browser sends the cookie with any request a page makes it send: a state change
        # must also prove it comes from a console page, which alone knows the secret.
        if request.method not in sessions.SAFE_METHODS:
            assert principal.csrf_secret is not None
            sessions.check_csrf(principal.csrf_secret, await sessions.presented_csrf(request))
        request.state.principal = principal
        return principal
    raw_token = credentials.credentials if credentials else None
    if not raw_token or not is_well_formed(raw_token):
        raise Unauthenticated()
    # Authentication is its own short transaction, not part of the request's unit of work:
    # the `last_used_at` write is kept even when the request then fails (403, 404, 422), and
    # the token row is not locked for the length of the request (a long upload would block
    # the token's revocation and its other requests).
    async with unit_of_work(request.app.state.session_factory) as session:
        principal = await authenticate(session, raw_token)
    request.state.principal = principal
    return principal


def require(ability: str) -> Callable[..., Awaitable[Principal]]:
    """Dependency: an authenticated principal holding ``ability`` (else 401 / 403)."""

    async def dependency(principal: Principal = Depends(current_principal)) -> Principal:
        if not principal.can(ability):
            raise Forbidden(f"This action requires the {ability} ability.")
        return principal

    # The route-table test finds each route's ability here; a route without one fails CI.
    dependency.required_ability = ability  # type: ignore[attr-defined]
    return dependency
