"""Console sessions: the cookie a browser gets for a token pasted once, and its CSRF secret.

The cookie's value is a random id; only its SHA-256 is stored, beside the token it stands for,
so a session can never outlive (or outrank) that token: every request re-checks the token.
"""

import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta

from fastapi import Request
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.models import ConsoleSession, Token, User
from app.core.errors import Forbidden

COOKIE = "ingest_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_MESSAGE = "CSRF token missing or invalid: reload the page and try again."


def _hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


async def start(
    session: AsyncSession, token_id: int, token_expires_at: datetime | None, lifetime: timedelta
) -> tuple[str, ConsoleSession]:
    """A new session for ``token_id``: the cookie's value (shown once) and its row."""
    raw = secrets.token_urlsafe(32)
    expires_at = datetime.now(UTC) + lifetime
    if token_expires_at is not None:
        expires_at = min(expires_at, token_expires_at)
    row = ConsoleSession(
        session_hash=_hash(raw),
        token_id=token_id,
        csrf_secret=secrets.token_urlsafe(32),
        expires_at=expires_at,
    )
    session.add(row)
    await session.flush()
    return raw, row


async def find(session: AsyncSession, raw: str | None) -> tuple[ConsoleSession, Token, str] | None:
    """The live session behind a cookie value, with its token and the token's user's role
    (None when unknown, revoked or expired; the token's own checks are the caller's)."""
    if not raw or len(raw) > 100:
        return None
    row = (
        await session.execute(
            select(ConsoleSession, Token, User.role)
            .join(Token, Token.id == ConsoleSession.token_id)
            .join(User, User.id == Token.user_id)
            .where(ConsoleSession.session_hash == _hash(raw))
        )
    ).first()
    if row is None:
        return None
    console_session, token, role = row
    if console_session.revoked_at is not None or console_session.expires_at <= datetime.now(UTC):
        return None
    return console_session, token, role


async def end(session: AsyncSession, raw: str | None) -> None:
    """Revoke the session behind a cookie value (nothing happens for an unknown one)."""
    if not raw:
        return
    await session.execute(
        update(ConsoleSession)
        .where(ConsoleSession.session_hash == _hash(raw), ConsoleSession.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
        .execution_options(synchronize_session=False)
    )


def check_csrf(expected: str, presented: str | None) -> None:
    """403 unless the request carries this session's CSRF secret."""
    if not presented or not hmac.compare_digest(expected.encode(), presented.encode()):
        raise Forbidden(CSRF_MESSAGE)


async def presented_csrf(request: Request) -> str | None:
    """The CSRF token a request carries: the ``X-CSRF-Token`` header, or the ``csrf_token``
    field of a urlencoded form (a console form post). A multipart body is never read here: an
    upload's stream belongs to its route, so a fetch sends the header."""
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        value = (await request.form()).get(CSRF_FIELD)
        return value if isinstance(value, str) else None
    return None


async def prune(session: AsyncSession, days: int) -> int:
    """Delete the sessions that ended (revoked, or expired) more than ``days`` days ago."""
    before = func.now() - timedelta(days=days)
    result = await session.execute(
        delete(ConsoleSession).where(
            or_(ConsoleSession.revoked_at < before, ConsoleSession.expires_at < before)
        )
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
