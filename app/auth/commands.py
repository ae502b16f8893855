"""``ingest login|logout`` (which API the CLI talks to) and ``ingest token create|list|revoke``.

The token commands go through the API and need an ``ingest:admin`` token. One exception, the
bootstrap: with no API configured (no INGEST_URL or INGEST_TOKEN, no --profile or
INGEST_PROFILE, no default profile) and INGEST_DATABASE_URL set, ``token create`` writes
straight into that database, which is how a new deployment gets its first admin token.
Errors are one line on stderr and an exit code (app/client.py), never a traceback.
"""

import os
import re
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import service
from app.auth.permissions import ABILITIES, ROLES
from app.auth.schemas import TokenCreate
from app.client import (
    EXIT_USAGE,
    NOT_CONFIGURED,
    ApiConfig,
    Client,
    ClientError,
    Profile,
    ProfileOption,
    Profiles,
    api_configured,
    check_profile_name,
    check_url,
    connect,
    fail,
    reporting,
    save_profile,
)
from app.core.config import get_settings
from app.core.db import unit_of_work
from app.core.direct import Context, in_database
from app.core.errors import validation_errors

T = TypeVar("T")

# The owner of tokens the bootstrap creates without --user (over the API: the caller).
DEFAULT_USER = "admin@localhost"
LOGIN_PROFILE = "default"

token_app = typer.Typer(
    help="Create, list and revoke service tokens.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


# --- login, logout --------------------------------------------------------------------------


def login(
    url: Annotated[
        str, typer.Argument(metavar="URL", help="The server, e.g. http://127.0.0.1:8000.")
    ],
    token: Annotated[
        str | None,
        typer.Option("--token", help="The token (default: read from stdin, or asked for)."),
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile",
            envvar="INGEST_PROFILE",
            show_envvar=False,
            help=f"Name of the profile to write (default: {LOGIN_PROFILE}).",
        ),
    ] = None,
    make_default: Annotated[
        bool, typer.Option("--default/--no-default", help="Make it the default profile.")
    ] = True,
) -> None:
    """Check a token against the API at URL and keep both in a profile (a 0600 file)."""
    with reporting():
        name = check_profile_name(profile or LOGIN_PROFILE)
        config = ApiConfig(check_url(url), _read_token(token), "this token")
        with Client(config) as api:
            try:
                # Any token may be checked here: a token without ingest:view gets 403, not 401.
                body = api.get("/", per_page=1)
            except ClientError as exc:
                if exc.status != 403:
                    raise
                body = {"meta": None}
            if "meta" not in body:
                raise ClientError(f"{config.url} answered, but not as the Ingest API")
        profiles = save_profile(name, Profile(config.url, config.token), make_default=make_default)
    default = " (the default)" if profiles.default == name else ""
    typer.echo(f"logged in to {config.url}: profile {name!r}{default} in {profiles.path}")


def _read_token(given: str | None) -> str:
    if given is None:
        if sys.stdin.isatty():
            given = typer.prompt("Token", hide_input=True, err=True)
        else:  # `ingest login URL < token.txt`, or a pipe
            given = sys.stdin.readline()
    token = (given or "").strip()
    if not token:
        raise ClientError("no token given (--token, stdin or the prompt)", EXIT_USAGE)
    if any(not char.isprintable() or char.isspace() for char in token):
        raise ClientError("a token is one word of printable characters", EXIT_USAGE)
    return token


def logout(
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile",
            envvar="INGEST_PROFILE",
            show_envvar=False,
            help="The profile to remove (default: the default profile).",
        ),
    ] = None,
) -> None:
    """Remove a profile and its token from the config file (the token itself stays valid)."""
    with reporting():
        profiles = Profiles.load()
        name = profile or profiles.default
        if name is None or name not in profiles.profiles:
            shown = f"no profile {name!r}" if name else "no default profile"
            raise ClientError(f"{shown} in {profiles.path}: nothing to log out of")
        del profiles.profiles[name]
        if profiles.default == name:
            profiles.default = None
        profiles.save()
    typer.echo(
        f"profile {name!r} removed from {profiles.path}; "
        "the token works until `ingest token revoke` revokes it"
    )
    still = [var for var in ("INGEST_URL", "INGEST_TOKEN") if os.environ.get(var)]
    if still:
        typer.echo(f"note: {' and '.join(still)} still set in this shell", err=True)


# --- tokens ---------------------------------------------------------------------------------


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
        str | None,
        typer.Option(
            "--user",
            help=f"Owner's email (default: yourself; {DEFAULT_USER} for the bootstrap).",
        ),
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
    profile: ProfileOption = None,
) -> None:
    """Create a token and print it (once: it is stored only as a hash). With no API
    configured and INGEST_DATABASE_URL set, it is written straight into that database."""
    name = (name or "").strip()
    if not name:
        raise fail("--name is required", EXIT_USAGE)
    if not ability:
        raise fail(f"at least one --ability is required ({', '.join(ABILITIES)})", EXIT_USAGE)
    if role is not None and user is None:
        raise fail("--role sets the role of a new user: give --user too", EXIT_USAGE)
    try:
        lifetime = parse_duration(expires_in) if expires_in is not None else None
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    body: dict[str, Any] = {"name": name, "abilities": ability}
    for key, value in (("user_email", user), ("role", role), ("source_id", source)):
        if value is not None:
            body[key] = value
    if lifetime is not None:
        body["expires_at"] = (datetime.now(UTC) + lifetime).isoformat()

    with reporting():
        through_api = api_configured(profile)
    if through_api:
        with connect(profile) as api:
            token = api.post("/tokens", json=body)["data"]
    elif get_settings().database_url:
        token = _bootstrap(body)
    else:
        raise fail(
            f"{NOT_CONFIGURED}; or set INGEST_DATABASE_URL to create the first token "
            "straight in the database",
            EXIT_USAGE,
        )
    # The token alone on stdout (so `TOKEN=$(ingest token create ...)` works); notes on stderr.
    typer.echo(token["token"])
    typer.echo(
        f"token {token['id']} created for {token['user']['email']} "
        f"({', '.join(token['abilities'])}); it is shown only this once.",
        err=True,
    )


@token_app.command("list")
def list_tokens(profile: ProfileOption = None) -> None:
    """List tokens, newest first (never their secrets)."""
    with connect(profile) as api:
        tokens = api.pages("/tokens")
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


def _when(value: str | None) -> str:
    if value is None:
        return "-"
    return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%MZ")


@token_app.command("revoke")
def revoke(
    token_id: Annotated[int, typer.Argument(metavar="ID", help="The token's id.")],
    profile: ProfileOption = None,
) -> None:
    """Revoke a token: it stops working at once (revoking twice is harmless)."""
    with connect(profile) as api:
        api.delete(f"/tokens/{token_id}")
    typer.echo(f"token {token_id} revoked")


# --- the bootstrap: straight into Postgres --------------------------------------------------


def _bootstrap(body: dict[str, Any]) -> dict[str, Any]:
    """``POST /tokens`` without the API: the same request schema and service, in one
    transaction on INGEST_DATABASE_URL."""
    try:
        request = TokenCreate.model_validate(body)
    except ValidationError as exc:
        messages = validation_errors(exc.errors())
        raise fail(next(iter(messages.values()))[0]) from None

    async def work(session: AsyncSession) -> dict[str, Any]:
        issued = await service.create_token(
            session,
            name=request.name,
            abilities=request.abilities,
            user_email=request.user_email or DEFAULT_USER,
            role=request.role,
            source_id=request.source_id,
            expires_at=request.expires_at,
        )
        return {**service.to_resource(issued.token), "token": issued.plaintext}

    return _in_database(work)


def _in_database(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``work`` in one transaction on INGEST_DATABASE_URL; failures become one line."""

    async def in_session(ctx: Context) -> T:
        async with unit_of_work(ctx.factory) as session:
            return await work(session)

    return in_database(in_session)


def register(cli: typer.Typer) -> None:
    """Add ``login``, ``logout`` and ``token ...`` to the ``ingest`` command line."""
    cli.command("login")(login)
    cli.command("logout")(logout)
    cli.add_typer(token_app, name="token", help="Create, list and revoke service tokens.")
