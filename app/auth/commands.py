"""``ingest token create|list|revoke``: manage service tokens straight in Postgres.

Errors are one line on stderr and a non-zero exit, never a traceback.
"""

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

import asyncpg
import typer
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import service
from app.auth.permissions import ABILITIES, ROLES
from app.auth.schemas import looks_like_email
from app.core.config import get_settings
from app.core.db import create_engine, create_session_factory, unit_of_work
from app.core.errors import IngestError

T = TypeVar("T")

# The owner of tokens created without --user.
DEFAULT_USER = "admin@localhost"
CONNECT_TIMEOUT_SECONDS = 10

token_app = typer.Typer(
    help="Create, list and revoke service tokens.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(1)


_DURATION_RE = re.compile(r"^\s*(\d+)\s*([dhm])\s*$", re.IGNORECASE)
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h`` or ``45m`` as a timedelta."""
    match = _DURATION_RE.match(text)
    if match is None or int(match.group(1)) == 0:
        raise ValueError(
            f"invalid duration {text!r}: use a positive number of days, hours or "
            "minutes, e.g. 30d, 12h or 45m"
        )
    return timedelta(**{_UNITS[match.group(2).lower()]: int(match.group(1))})


class _Unreachable(Exception):
    pass


def _reason(exc: BaseException) -> str:
    """The driver's own first line, without SQLAlchemy's wrapping."""
    inner = getattr(exc, "orig", None) or exc
    inner = inner.__cause__ or inner
    lines = str(inner).strip().splitlines()
    return lines[0] if lines else type(inner).__name__


def _run(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``work`` in one transaction on INGEST_DATABASE_URL; turn failures into one line."""
    try:
        url = get_settings().require_database_url()
    except RuntimeError as exc:
        raise _fail(str(exc)) from None
    where = make_url(url).render_as_string(hide_password=True)

    async def main() -> T:
        engine = create_engine(url, connect_args={"timeout": CONNECT_TIMEOUT_SECONDS})
        try:
            async with unit_of_work(create_session_factory(engine)) as session:
                try:
                    await session.connection()
                except (OSError, TimeoutError, DBAPIError) as exc:
                    raise _Unreachable(_reason(exc)) from exc
                return await work(session)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except IngestError as exc:
        raise _fail(_ingest_message(exc)) from None
    except _Unreachable as exc:
        raise _fail(f"cannot reach the database at {where}: {exc}") from None
    except DBAPIError as exc:
        if isinstance(getattr(exc.orig, "__cause__", None), asyncpg.UndefinedTableError):
            raise _fail(f"the database at {where} is not migrated: run `ingest migrate`") from None
        raise _fail(f"database error: {_reason(exc)}") from None


def _ingest_message(exc: IngestError) -> str:
    if exc.errors:
        return "; ".join(msg for messages in exc.errors.values() for msg in messages)
    return exc.message


@token_app.command("create")
def create(
    # Checked here rather than by Typer, so a mistake is one line like every other error.
    name: Annotated[
        str | None, typer.Option("--name", help="What the token is for (required).")
    ] = None,
    ability: Annotated[
        list[str] | None,
        typer.Option("--ability", help=f"Required, repeatable: {', '.join(ABILITIES)}."),
    ] = None,
    user: Annotated[
        str | None, typer.Option("--user", help=f"Owner's email (default {DEFAULT_USER}).")
    ] = None,
    role: Annotated[
        str | None,
        typer.Option("--role", help=f"Role of a new user: {', '.join(ROLES)} (default admin)."),
    ] = None,
    source: Annotated[
        int | None, typer.Option("--source", help="Bind the token to this source id.")
    ] = None,
    expires_in: Annotated[
        str | None, typer.Option("--expires-in", help="Lifetime: 30d, 12h or 45m.")
    ] = None,
) -> None:
    """Create a token and print it (once: it is stored only as a hash)."""
    name = (name or "").strip()
    if not name:
        raise _fail("--name is required")
    if not ability:
        raise _fail(f"at least one --ability is required ({', '.join(ABILITIES)})")
    try:
        abilities = service.check_abilities(ability)
        if role is not None:
            service.check_role(role)
    except IngestError as exc:
        raise _fail(_ingest_message(exc)) from None
    if role is not None and user is None:
        raise _fail("--role sets the role of a new user: give --user too")
    if user is not None and not looks_like_email(user):
        raise _fail(f"--user must be an email address, not {user!r}")
    try:
        lifetime = parse_duration(expires_in) if expires_in is not None else None
    except ValueError as exc:
        raise _fail(str(exc)) from None

    async def work(session: AsyncSession) -> tuple[str, dict[str, Any]]:
        issued = await service.create_token(
            session,
            name=name,
            abilities=abilities,
            user_email=user or DEFAULT_USER,
            role=role,
            source_id=source,
            expires_in=lifetime,
        )
        return issued.plaintext, service.to_resource(issued.token)

    plaintext, token = _run(work)
    # The token alone on stdout (so `TOKEN=$(ingest token create ...)` works); notes on stderr.
    typer.echo(plaintext)
    typer.echo(
        f"token {token['id']} created for {token['user']['email']} "
        f"({', '.join(token['abilities'])}); it is shown only this once.",
        err=True,
    )


@token_app.command("list")
def list_tokens() -> None:
    """List tokens, newest first (never their secrets)."""

    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        tokens = (await session.scalars(service.list_query())).all()
        return [service.to_resource(t) for t in tokens]

    tokens = _run(work)
    if not tokens:
        typer.echo("no tokens")
        return
    header = (
        "ID",
        "NAME",
        "PREFIX",
        "ABILITIES",
        "USER",
        "ROLE",
        "SOURCE",
        "STATUS",
        "EXPIRES",
        "LAST USED",
    )
    rows = [header] + [
        (
            str(t["id"]),
            t["name"],
            t["prefix"],
            ",".join(t["abilities"]),
            t["user"]["email"],
            t["user"]["role"],
            "-" if t["source_id"] is None else str(t["source_id"]),
            t["status"],
            _when(t["expires_at"]),
            _when(t["last_used_at"]),
        )
        for t in tokens
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        typer.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%MZ")


@token_app.command("revoke")
def revoke(token_id: Annotated[int, typer.Argument(metavar="ID", help="The token's id.")]) -> None:
    """Revoke a token: it stops working at once."""

    async def work(session: AsyncSession) -> bool:
        token = await service.get_token(session, token_id)
        already = token.revoked_at is not None
        await service.revoke_token(session, token_id)
        return already

    already = _run(work)
    typer.echo(f"token {token_id} was already revoked" if already else f"token {token_id} revoked")
