"""Users and tokens. Plaintext tokens leave this module once, at creation."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload

from app.auth.models import Token, User
from app.auth.permissions import ABILITIES, ROLES, effective_abilities
from app.core.errors import Forbidden, NotFound, ValidationFailed
from app.core.security import display_prefix, generate_token, hash_token
from app.sources.models import Source


@dataclass(frozen=True)
class IssuedToken:
    token: Token
    plaintext: str


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, errors={field: [message]})


def check_abilities(abilities: list[str]) -> list[str]:
    unknown = sorted(set(abilities) - set(ABILITIES))
    if unknown:
        raise _invalid(
            "abilities",
            f"Unknown abilities: {', '.join(unknown)} (choose from {', '.join(ABILITIES)}).",
        )
    if not abilities:
        raise _invalid("abilities", "At least one ability is required.")
    return sorted(set(abilities))


def check_role(role: str) -> str:
    if role not in ROLES:
        raise _invalid("role", f"Unknown role {role!r} (choose from {', '.join(ROLES)}).")
    return role


async def get_or_create_user(
    session: AsyncSession, email: str, role: str = "admin", name: str = ""
) -> User:
    """The user with ``email``; created with ``role`` when new (an existing user keeps theirs)."""
    check_role(role)
    user = await session.scalar(select(User).where(User.email == email))
    if user is None:
        user = User(email=email, role=role, name=name or email.split("@")[0])
        session.add(user)
        await session.flush()
    return user


async def issue_token(
    session: AsyncSession,
    user: User,
    name: str,
    abilities: list[str],
    *,
    source_id: int | None = None,
    expires_in: timedelta | None = None,
    expires_at: datetime | None = None,
) -> IssuedToken:
    plaintext = generate_token()
    if expires_in is not None:
        expires_at = datetime.now(UTC) + expires_in
    token = Token(
        user_id=user.id,
        user=user,
        name=name,
        token_hash=hash_token(plaintext),
        prefix=display_prefix(plaintext),
        abilities=check_abilities(abilities),
        source_id=source_id,
        expires_at=expires_at,
    )
    session.add(token)
    await session.flush()
    return IssuedToken(token=token, plaintext=plaintext)


async def create_token(
    session: AsyncSession,
    *,
    name: str,
    abilities: list[str],
    user_email: str,
    role: str | None = None,
    source_id: int | None = None,
    expires_in: timedelta | None = None,
    expires_at: datetime | None = None,
    scope_source_id: int | None = None,
) -> IssuedToken:
    """Issue a token for ``user_email``, creating that user with ``role`` (default admin) when
    new. ``scope_source_id`` is the caller's own source scope: a source-bound caller only issues
    tokens bound to that source, so it cannot mint its way out of its scope."""
    abilities = check_abilities(abilities)
    if role is not None:
        check_role(role)
    if scope_source_id is not None:
        if source_id is None:
            source_id = scope_source_id
        elif source_id != scope_source_id:
            raise Forbidden("A source-bound token can only issue tokens for its own source.")
    if source_id is not None and await session.get(Source, source_id) is None:
        raise _invalid("source_id", "The selected source id is invalid.")

    user = await session.scalar(select(User).where(User.email == user_email))
    if user is None:
        user = await get_or_create_user(session, user_email, role or "admin")
    elif role is not None and role != user.role:
        # Changing someone's role is not a side effect a token request should have.
        raise _invalid("role", f"The user {user_email} already exists with the role {user.role!r}.")
    return await issue_token(
        session,
        user,
        name,
        abilities,
        source_id=source_id,
        expires_in=expires_in,
        expires_at=expires_at,
    )


def list_query(scope_source_id: int | None = None) -> Select[Token]:
    """Tokens with their users, newest first."""
    stmt = select(Token).options(joinedload(Token.user))
    if scope_source_id is not None:
        stmt = stmt.where(Token.source_id == scope_source_id)
    return stmt.order_by(Token.created_at.desc(), Token.id.desc())


async def get_token(
    session: AsyncSession, token_id: int, *, scope_source_id: int | None = None
) -> Token:
    token = await session.scalar(list_query(scope_source_id).where(Token.id == token_id))
    if token is None:
        raise NotFound(f"Token {token_id} not found.")
    return token


async def revoke_token(
    session: AsyncSession, token_id: int, *, scope_source_id: int | None = None
) -> Token:
    """Revoke one token; revoking a revoked token keeps its first ``revoked_at``."""
    token = await get_token(session, token_id, scope_source_id=scope_source_id)
    if token.revoked_at is None:
        token.revoked_at = datetime.now(UTC)
        await session.flush()
    return token


async def revoke_source_tokens(session: AsyncSession, source_id: int) -> None:
    await session.execute(
        update(Token)
        .where(Token.source_id == source_id, Token.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )


def status_of(token: Token, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= now:
        return "expired"
    return "active"


def to_resource(token: Token) -> dict[str, Any]:
    """A token as the API and CLI show it: never its hash, never its plaintext."""
    user = token.user
    return {
        "id": token.id,
        "name": token.name,
        "prefix": token.prefix,
        "abilities": sorted(token.abilities),
        # What the token can do now: its abilities ∩ its user's role.
        "effective_abilities": sorted(effective_abilities(token.abilities, user.role)),
        "status": status_of(token),
        "user": {"id": user.id, "email": user.email, "role": user.role},
        "source_id": token.source_id,
        "expires_at": token.expires_at,
        "revoked_at": token.revoked_at,
        "last_used_at": token.last_used_at,
        "created_at": token.created_at,
    }
