"""Authentication of bearer tokens and the per-route ability check."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.models import Token, User
from app.auth.permissions import effective_abilities
from app.core.deps import SessionDep
from app.core.errors import Forbidden, Unauthenticated
from app.core.security import hash_token, is_well_formed

bearer = HTTPBearer(auto_error=False, description="A service token (`ingest_...`).")


@dataclass(frozen=True)
class Principal:
    user_id: int
    token_id: int
    role: str
    abilities: frozenset[str]
    # A token bound to one source sees only that source's data.
    source_id: int | None = None

    def can(self, ability: str) -> bool:
        return ability in self.abilities


async def authenticate(session: AsyncSession, raw_token: str | None) -> Principal:
    # The format and checksum are checked before any query: garbage never reaches the DB.
    if not raw_token or not is_well_formed(raw_token):
        raise Unauthenticated()
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
    now = datetime.now(UTC)
    if token.revoked_at is not None or (token.expires_at is not None and token.expires_at <= now):
        raise Unauthenticated()
    # Written at most once a minute per token, not on every request.
    await session.execute(
        text(
            "UPDATE tokens SET last_used_at = now() WHERE id = :id AND "
            "(last_used_at IS NULL OR last_used_at < now() - interval '1 minute')"
        ),
        {"id": token.id},
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
    session: SessionDep,
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> Principal:
    principal = await authenticate(session, credentials.credentials if credentials else None)
    request.state.principal = principal
    return principal


def require(ability: str) -> Callable[..., Awaitable[Principal]]:
    """Dependency: an authenticated principal holding ``ability`` (else 401 / 403)."""

    async def dependency(principal: Principal = Depends(current_principal)) -> Principal:
        if not principal.can(ability):
            raise Forbidden(f"This action requires the {ability} ability.")
        return principal

    dependency.required_ability = ability  # type: ignore[attr-defined]
    return dependency
