"""The ``ingest`` command line: run the processes, and operate runs, importers and tokens."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from app.auth.commands import token_app
from app.core.config import Settings, get_settings
from app.runs.commands import register as register_run_commands

cli = typer.Typer(
    name="ingest",
    help="Ingest: validate, de-duplicate and store rows from files, URLs and agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
cli.add_typer(token_app, name="token", help="Create, list and revoke service tokens.")

ROOT = Path(__file__).resolve().parents[1]


def settings_with_servers() -> Settings:
    """The settings, or a one-line error when the database or Redis URL is not set."""
    settings = get_settings()
    try:
        settings.require_database_url()
        settings.require_redis_url()
    except RuntimeError as exc:
        raise fail(str(exc)) from None
    return settings


def fail(message: str, code: int = 1) -> typer.Exit:
    """One clear line on stderr, no traceback."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option(help="Uvicorn worker processes.")] = 1,
) -> None:
    """Run the HTTP API."""
    import uvicorn

    settings = settings_with_servers()
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level.lower(),
    )


@cli.command()
def worker(
    burst: Annotated[bool, typer.Option(help="Exit when the queue is empty.")] = False,
) -> None:
    """Run an arq worker (chunks, splitting, schedules, the reconciler)."""
    from app.worker.settings import run_worker

    settings = settings_with_servers()
    run_worker(settings, burst=burst)


@cli.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    down: Annotated[bool, typer.Option("--down", help="Downgrade to REVISION instead.")] = False,
) -> None:
    """Apply the database migrations (or roll them back with --down)."""
    from app.core import migrate as migrations

    try:
        url = get_settings().require_database_url()
        (migrations.downgrade if down else migrations.upgrade)(url, revision)
    except RuntimeError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot reach the database: {exc}") from None
    typer.echo(f"database at {'revision ' + revision if down else 'the latest revision'}")


@cli.command()
def dev(
    port: Annotated[int, typer.Option(help="API port.")] = 8000,
    data_dir: Annotated[Path, typer.Option(help="Where embedded servers keep data.")] = Path(
        ".ingest"
    ),
) -> None:
    """Everything in one process tree: embedded Postgres/Redis when no URL is set, migrations,
    example importers, a dev admin token, the API and a worker. Ctrl-C stops it all."""
    from app.core import embedded
    from app.core import migrate as migrations

    settings = get_settings()
    env = dict(os.environ)
    try:
        if not settings.database_url:
            typer.echo("starting embedded PostgreSQL ...")
            env["INGEST_DATABASE_URL"] = embedded.start_postgres(data_dir.resolve() / "pg")
        if not settings.redis_url:
            typer.echo("starting embedded Redis ...")
            env["INGEST_REDIS_URL"] = embedded.start_redis(data_dir.resolve() / "redis")
    except embedded.EmbeddedUnavailable as exc:
        raise fail(str(exc)) from None
    env.setdefault("INGEST_IMPORTERS_DIR", str(ROOT / "examples" / "importers"))
    env.setdefault("INGEST_STORAGE_DIR", str(data_dir.resolve() / "storage"))

    migrations.upgrade(env["INGEST_DATABASE_URL"])
    token = asyncio.run(_dev_token(env["INGEST_DATABASE_URL"]))

    exe = [sys.executable, "-m", "app.cli"]
    children = [
        subprocess.Popen([*exe, "serve", "--port", str(port)], env=env),
        subprocess.Popen([*exe, "worker"], env=env),
    ]
    typer.secho(f"\nIngest is up: http://127.0.0.1:{port}/docs", fg=typer.colors.GREEN)
    typer.echo(f"dev admin token: {token}")
    typer.echo(
        f"try: curl -H 'Authorization: Bearer {token}' http://127.0.0.1:{port}/api/v1/ingest/importers"
    )
    typer.echo("Ctrl-C stops everything.\n")
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        # Ctrl-C reaches the whole process group, so the children may see it first.
        codes = [child.returncode for child in children if child.returncode not in (None, 0)]
        if codes:
            typer.secho(f"a child process exited ({codes[0]}); stopping", fg="red", err=True)
    except KeyboardInterrupt:
        pass
    finally:
        typer.echo("\nstopping ...")
        _stop(children)
        embedded.stop_all()


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


async def _dev_token(database_url: str) -> str:
    from sqlalchemy import text

    from app.auth import service as auth_service
    from app.core.db import create_engine, create_session_factory, unit_of_work

    engine = create_engine(database_url)
    try:
        async with unit_of_work(create_session_factory(engine)) as session:
            user = await auth_service.get_or_create_user(session, "dev@localhost", "admin", "dev")
            # One live dev token at a time: the one printed by the latest `ingest dev`.
            await session.execute(
                text(
                    "UPDATE tokens SET revoked_at = now() WHERE user_id = :user "
                    "AND name = 'dev' AND revoked_at IS NULL"
                ),
                {"user": user.id},
            )
            issued = await auth_service.issue_token(session, user, "dev", ["ingest:admin"])
        return issued.plaintext
    finally:
        await engine.dispose()


register_run_commands(cli)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
