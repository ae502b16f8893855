"""The ``ingest`` command line: run the processes (straight on Postgres and Redis), and operate
runs, importers and tokens (over the HTTP API, app/client.py)."""

import asyncio
import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from app.auth.commands import register as register_auth_commands
from app.client import ClientError, fail, save_dev_profile
from app.core.config import Settings, get_settings
from app.runs.commands import register as register_run_commands
from app.worker.commands import register as register_worker_commands

cli = typer.Typer(
    name="ingest",
    help="Ingest: validate, de-duplicate and store rows from files, URLs and agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

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


DEV_HOST = "127.0.0.1"
# How long the API may take to start and answer /readyz with 200.
DEV_READY_SECONDS = 60
# The API and the worker get this long to stop before they are killed; the servers stop
# after them, all within the 10 s `ingest dev` promises.
DEV_STOP_SECONDS = 5


@cli.command()
def dev(
    port: Annotated[int, typer.Option(help="API port.", min=1, max=65535)] = 8000,
    data_dir: Annotated[Path, typer.Option(help="Where embedded servers keep data.")] = Path(
        ".ingest"
    ),
) -> None:
    """Everything in one process tree: embedded Postgres/Redis when no URL is set, migrations,
    example importers, a dev admin token (kept in the CLI profile `dev`), the API and a worker.
    Ctrl-C, SIGTERM or closing the terminal stops it all."""
    from app.core import embedded
    from app.core import migrate as migrations

    _check_port(DEV_HOST, port)
    settings = get_settings()
    env = dict(os.environ)
    signals = _StopSignals()
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        signals.install()
        # Deferred: a stop that arrives while a server starts waits until it is recorded.
        if not settings.database_url:
            typer.echo("starting embedded PostgreSQL ...")
            with signals.deferred():
                env["INGEST_DATABASE_URL"] = embedded.start_postgres(data_dir.resolve() / "pg")
        if not settings.redis_url:
            typer.echo("starting embedded Redis ...")
            with signals.deferred():
                env["INGEST_REDIS_URL"] = embedded.start_redis(data_dir.resolve() / "redis")
        env.setdefault("INGEST_IMPORTERS_DIR", str(ROOT / "examples" / "importers"))
        env.setdefault("INGEST_STORAGE_DIR", str(data_dir.resolve() / "storage"))

        migrations.upgrade(env["INGEST_DATABASE_URL"])
        token = asyncio.run(_dev_token(env["INGEST_DATABASE_URL"]))

        exe = [sys.executable, "-m", "app.cli"]
        with signals.deferred():
            for name, command in (
                ("API", ["serve", "--host", DEV_HOST, "--port", str(port)]),
                ("worker", ["worker"]),
            ):
                # Their own session: a terminal's Ctrl-C or hang-up reaches `ingest dev` only,
                # which stops the API and the worker before the servers they use.
                children[name] = subprocess.Popen(
                    [*exe, *command], env=env, stdin=subprocess.DEVNULL, start_new_session=True
                )
        _wait_until_ready(f"http://{DEV_HOST}:{port}/readyz", children)

        url = f"http://{DEV_HOST}:{port}"
        typer.secho(f"\nIngest is up: {url}/console (API docs: {url}/docs)", fg=typer.colors.GREEN)
        typer.echo(f"dev admin token: {token}")
        _write_dev_profile(url, token)
        typer.echo(f"try: curl -H 'Authorization: Bearer {token}' {url}/api/v1/ingest/importers")
        if not settings.database_url:  # the embedded server's URL holds no secret
            typer.echo(f"database: psql {env['INGEST_DATABASE_URL']}")
        typer.echo("Ctrl-C stops everything.\n")
        while not (exited := _exited(children)):
            time.sleep(0.2)
        raise fail(f"the {exited}")
    except embedded.EmbeddedUnavailable as exc:
        raise fail(str(exc)) from None
    except _Stop:
        pass
    finally:
        signals.stopping = True
        # After a hang-up the terminal is gone and writing to it fails: stop all the same.
        with contextlib.suppress(OSError):
            typer.echo("\nstopping ...")
        _stop(list(children.values()))
        embedded.stop_all()


def _write_dev_profile(url: str, token: str) -> None:
    """Keep the instance's URL and token where `ingest status` & co. find them, and say so."""
    try:
        profiles = save_dev_profile(url, token)
    except (ClientError, OSError) as exc:  # the API runs all the same
        message = exc.message if isinstance(exc, ClientError) else str(exc)
        typer.secho(f"warning: no CLI profile written: {message}", fg=typer.colors.YELLOW)
        return
    if profiles.default == "dev":
        typer.echo(
            f"CLI profile 'dev' (the default) in {profiles.path}: "
            "`ingest runs`, `ingest status RUN` ... work from another shell"
        )
    else:
        typer.echo(
            f"CLI profile 'dev' in {profiles.path} (the default is {profiles.default!r}): "
            "add `--profile dev` (`ingest runs --profile dev`) or set INGEST_PROFILE=dev"
        )


def _check_port(host: str, port: int) -> None:
    """Fail before anything starts when the API could not listen on ``host:port``."""
    with socket.socket() as sock:
        # As uvicorn binds: a port only left in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise fail(
                    f"Port {port} on {host} is already in use; "
                    "pass --port or stop the other process."
                ) from None
            raise fail(f"cannot listen on {host}:{port}: {exc.strerror}") from None


class _Stop(BaseException):
    """SIGINT, SIGTERM or SIGHUP reached `ingest dev`: stop everything it started."""


class _StopSignals:
    """Turns SIGINT, SIGTERM and SIGHUP (a closed terminal) into one ``_Stop`` in the main
    thread. Python's defaults would end the process on SIGTERM and SIGHUP without running
    any clean-up, leaving the children and the embedded servers running."""

    def __init__(self) -> None:
        self.stopping = False
        self._deferring = False
        self._pending = False

    def install(self) -> None:
        for name in ("SIGINT", "SIGTERM", "SIGHUP"):  # no SIGHUP on Windows
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            return  # the stop under way has its own deadlines
        if self._deferring:
            self._pending = True
            return
        self.stopping = True
        raise _Stop

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A signal received inside the block stops everything once the block is done."""
        self._deferring = True
        try:
            yield
        except Exception:
            if not self._pending:
                raise
            # A terminal's signal reaches the block's own children too (initdb, pg_ctl): their
            # failure is the stop that was asked for, not an error to report.
        finally:
            self._deferring = False
        if self._pending:
            self.stopping = True
            raise _Stop


def _exited(children: dict[str, subprocess.Popen[bytes]]) -> str | None:
    """``"API exited (1)"`` for the first child that has exited, else None."""
    for name, child in children.items():
        if child.poll() is not None:
            return f"{name} exited ({child.returncode})"
    return None


def _wait_until_ready(url: str, children: dict[str, subprocess.Popen[bytes]]) -> None:
    import httpx

    deadline = time.monotonic() + DEV_READY_SECONDS
    last = "no answer"
    while True:
        if exited := _exited(children):
            raise fail(f"the {exited} before the API was ready; its output is above")
        try:
            # The readiness probe itself waits up to 3 s for each of Postgres and Redis.
            response = httpx.get(url, timeout=10, trust_env=False)
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code == 200:
                return
            last = f"{response.status_code}: {response.text[:300]}"
        if time.monotonic() > deadline:
            raise fail(f"the API did not answer {url} within {DEV_READY_SECONDS} s ({last})")
        time.sleep(0.2)


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + DEV_STOP_SECONDS
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
register_worker_commands(cli)
register_auth_commands(cli)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
