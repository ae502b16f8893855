"""``ingest workers``: the live workers, as ``GET /workers`` lists them, from a shell.

Built like the other operator commands: over the HTTP API (app.client), their table and
one-line errors.
"""

from datetime import UTC, datetime
from typing import Any

import typer
from rich.text import Text

from app.client import ProfileOption, connect
from app.runs.commands import _console, _duration, _print_table, _when

NO_WORKER = "No worker is running. Start one with `ingest worker`."


def _ago(seconds: float) -> str:
    # A beat a little ahead of this host's clock is "0 s ago", not a negative age.
    seconds = max(seconds, 0.0)
    return f"{int(seconds)} s ago" if seconds < 60 else f"{_duration(seconds)} ago"


def list_workers(profile: ProfileOption = None) -> None:
    """List the live workers: heartbeat, and the splits and chunks each holds (admin)."""
    with connect(profile) as api:
        workers = api.pages("/workers")
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
    now = datetime.now(UTC)
    # Worker ids are names (host:pid:random), not numbers: left-aligned.
    _print_table(console, columns, [_row(w, now) for w in workers], right=("PID", "JOBS"))


def _row(worker: dict[str, Any], now: datetime) -> list[str | Text]:
    beat = datetime.fromisoformat(worker["last_beat"])
    return [
        worker["id"],
        worker["host"],
        str(worker["pid"]),
        _when(datetime.fromisoformat(worker["started_at"])),
        f"{_when(beat)} ({_ago((now - beat).total_seconds())})",
        str(worker["jobs"]),
    ]


def register(cli: typer.Typer) -> None:
    """Add the worker commands to the ``ingest`` command line."""
    cli.command("workers")(list_workers)
