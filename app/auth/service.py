"""Users and tokens. Plaintext tokens leave this module once, at creation."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.models import Token, User
from app.auth.permissions import ABILITIES, ROLES
from app.core.errors import ValidationFailed
from app.core.security import display_prefix, generate_token, hash_token


@dataclass(frozen=True)
class IssuedToken:
    token: Token
    plaintext: str


def check_abilities(abilities: list[str]) -> list[str]:
    unknown = sorted(set(abilities) - set(ABILITIES))
    if unknown or not abilities:
        message = (
            f"Unknown abilities: {', '.join(unknown)}." if unknown else "At least one ability is required."
        )
        raise ValidationFailed(message, errors={"abilities": [message]})
    return sorted(set(abilities))


async def get_or_create_user(
    session: AsyncSession, email: str, role: str = "admin", name: str = ""
) -> User:
    if role not in ROLES:
        raise ValidationFailed(f"Unknown role {role!r}.", errors={"role": [f"Unknown role {role!r}."]})
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
) -> IssuedToken:
    plaintext = generate_token()
    token = Token(
        user_id=user.id,
        name=name,
        token_hash=hash_token(plaintext),
        prefix=display_prefix(plaintext),
        abilities=check_abilities(abilities),
        source_id=source_id,
        expires_at=datetime.now(UTC) + expires_in if expires_in else None,
    )
    session.add(token)
    await session.flush()
    return IssuedToken(token=token, plaintext=plaintext)


async def revoke_source_tokens(session: AsyncSession, source_id: int) -> None:
    await session.execute(
        update(Token)
        .where(Token.source_id == source_id, Token.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
