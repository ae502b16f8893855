"""``ingest workers``: the live workers, as ``GET /workers`` lists them, from a shell.

Built like the run commands (straight to Postgres, their table and one-line errors).
"""

from datetime import datetime

import typer
from rich.text import Text
from sqlalchemy import func, select

from app.runs.commands import Context, _console, _duration, _execute, _print_table, _when
from app.runs.models import Worker
from app.worker.service import live_workers_query

NO_WORKER = "No worker is running. Start one with `ingest worker`."


def _ago(seconds: float) -> str:
    # A beat committed just after this transaction began is "0 s ago", not a negative age.
    seconds = max(seconds, 0.0)
    return f"{int(seconds)} s ago" if seconds < 60 else f"{_duration(seconds)} ago"


def list_workers() -> None:
    """List the live workers: heartbeat, and the splits and chunks each holds."""

    async def work(ctx: Context) -> tuple[list[Worker], datetime]:
        async with ctx.factory() as session:
            query = live_workers_query(ctx.settings.lease_seconds)
            found = list((await session.scalars(query)).all())
            # Ages by Postgres' clock, which wrote the heartbeats, not this host's.
            now = (await session.execute(select(func.now()))).scalar_one()
            return found, now

    workers, now = _execute(work)
    console = _console()
    if not workers:
        console.print(NO_WORKER)
        return
    columns = [
        ("ID", False),
        ("HOST", True),
        ("PID", False),
        ("STARTED", False),
        ("LAST BEAT", False),
        ("JOBS", False),
    ]
    rows: list[list[str | Text]] = [
        [
            w.id,
            w.host,
            str(w.pid),
            _when(w.started_at),
            f"{_when(w.last_beat)} ({_ago((now - w.last_beat).total_seconds())})",
            str(w.jobs),
        ]
        for w in workers
    ]
    # Worker ids are names (host:pid:random), not numbers: left-aligned.
    _print_table(console, columns, rows, right=("PID", "JOBS"))


def register(cli: typer.Typer) -> None:
    """Add the worker commands to the ``ingest`` command line."""
    cli.command("workers")(list_workers)
