"""``ingest runs|status|events|cancel|retry|import|importers`` over the HTTP API, and
``ingest prune`` straight in Postgres.

The API commands find the API as app/client.py says (INGEST_URL + INGEST_TOKEN, or a profile)
and render what it answers. ``prune`` is a server-side chore like ``ingest migrate``: it needs
INGEST_DATABASE_URL and the storage directory. Errors are one line on stderr and an exit code
(app/client.py), never a traceback.
"""

import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args
from urllib.parse import quote

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
)
from rich.table import Table
from rich.text import Text

import app.models  # noqa: F401  (every table in the metadata: a Run row has FKs to most)
from app.client import EXIT_USAGE, Client, ProfileOption, connect, fail
from app.core.db import unit_of_work
from app.core.direct import Context, in_database
from app.core.storage import Storage, storage_of
from app.pipeline.chunks import remove_run_payloads
from app.pipeline.lifecycle import SUMMARY_KEYS
from app.pipeline.readers.base import plural
from app.runs import service
from app.runs.events import CURSOR_PATTERN, TYPES
from app.runs.models import FINISHED_STATUSES
from app.runs.schemas import RunStatus

T = TypeVar("T")

RUN_STATUSES: tuple[str, ...] = get_args(RunStatus.__value__)
POLL_SECONDS = 0.5
EVENTS_PAGE = 100
STATUS_STYLES = {
    "pending": "dim",
    "processing": "cyan",
    "completed": "green",
    "completed_with_errors": "yellow",
    "failed": "red",
    "cancelled": "magenta",
}

Run = dict[str, Any]  # an IngestRunResource, as the API answers it


# --- straight to Postgres (prune) -----------------------------------------------------------


def _note(message: str) -> None:
    typer.echo(message, err=True)


# --- output ---------------------------------------------------------------------------------


def _run_id(value: str) -> int:
    """RUN as an integer (checked here so a typo is one line like every other error)."""
    if not value.strip().isdigit():
        raise fail(f"RUN must be a run id (a positive integer), not {value!r}", EXIT_USAGE)
    return int(value)


def _console() -> Console:
    # Built per command: CliRunner swaps sys.stdout, and the width follows $COLUMNS.
    console = Console(highlight=False)
    if not console.is_terminal:
        # Piped into grep or a file: whole lines, never cut to a guessed 80 columns.
        console.width = max(console.width, 240)
    return console


def _print_table(
    console: Console,
    columns: list[tuple[str, bool]],
    rows: list[list[str | Text]],
    right: tuple[str, ...] = ("ID", "FAILED"),
) -> None:
    """A borderless table at its natural width. When the terminal is narrower, the columns
    marked True (names, files) are cut with an ellipsis, down to 12 characters; the others
    always show in full (a still-too-narrow terminal gets long lines, never lost columns).
    The ``right`` columns (numbers) are right-aligned."""
    widths = [
        max([len(name), *(len(str(row[i])) for row in rows)]) for i, (name, _) in enumerate(columns)
    ]
    gaps = 2 * (len(columns) - 1)
    excess = sum(widths) + gaps - console.width
    for i, (_, shrinks) in enumerate(columns):
        if excess > 0 and shrinks:
            cut = min(excess, widths[i] - min(widths[i], 12))
            widths[i] -= cut
            excess -= cut
    table = Table(box=None, header_style="bold", pad_edge=False)
    for (name, _), width in zip(columns, widths, strict=True):
        justify: Literal["left", "right"] = "right" if name in right else "left"
        table.add_column(name, no_wrap=True, overflow="ellipsis", width=width, justify=justify)
    for row in rows:
        table.add_row(*row)
    console.width = max(console.width, sum(widths) + gaps)
    console.print(table, crop=False)


def _at(value: str | None) -> datetime | None:
    """An API timestamp (``2023-10-27T10:00:00.000000Z``) as an aware datetime."""
    return None if value is None else datetime.fromisoformat(value)


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _status(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def _finished(run: Run) -> bool:
    return run["status"] in FINISHED_STATUSES


def _render_run(console: Console, run: Run) -> None:
    progress = run["progress"]
    started, completed = _at(run["started_at"]), _at(run["completed_at"])
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("run", Text(str(run["id"])))
    grid.add_row("status", _status(run["status"]))
    grid.add_row("importer", run["importer"])
    parent = run["parent_run_id"]
    origin = f"retry of run {parent}" if parent is not None else run["kind"]
    origin += ", dry run" if run["dry_run"] else ""
    grid.add_row("file", f"{run['original_filename'] or '-'} ({origin})")
    # Nothing counted yet: the input is still being read.
    total = str(progress["total"]) if progress["total"] or _finished(run) else "?"
    grid.add_row(
        "progress",
        f"{progress['processed']} of {total} rows processed: {progress['successful']} "
        f"successful, {progress['failed']} failed, {progress['skipped']} skipped",
    )
    grid.add_row("created", _when(_at(run["created_at"])))
    grid.add_row("started", _when(started))
    if started is not None:
        end = completed or datetime.now(UTC)
        seconds = max((end - started).total_seconds(), 0.0)
        rate = f", {progress['processed'] / seconds:,.0f} rows/s" if seconds > 0 else ""
        label = "took" if completed is not None else "running for"
        grid.add_row("completed", f"{_when(completed)} ({label} {_duration(seconds)}{rate})")
    else:
        grid.add_row("completed", _when(completed))
    if run["cancel_requested"] and not _finished(run):
        grid.add_row("cancel", "requested: no new chunk starts")
    if _finished(run) and run["summary"]:
        # In the order the API answers it (SPEC's).
        grid.add_row("summary", ", ".join(f"{k} {v}" for k, v in run["summary"].items()))
    if run["error_message"]:
        grid.add_row("error", Text(run["error_message"], style="red"))
    console.print(grid)


class RateColumn(ProgressColumn):
    """Rows per second since the run started (from the run's counters, not from sampling)."""

    def render(self, task: Task) -> Text:
        rate = task.fields.get("rate")
        shown = "- rows/s" if rate is None else f"{rate:,.0f} rows/s"
        return Text(shown, style="progress.data.speed")


class EtaColumn(ProgressColumn):
    """Time left at the current rate, once there is a total."""

    def render(self, task: Task) -> Text:
        eta = task.fields.get("eta")
        return Text(
            "ETA -:--:--" if eta is None else f"ETA {_clock(eta)}", style="progress.remaining"
        )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _speed(run: Run) -> tuple[float | None, float | None]:
    """Rows/s and seconds left, from the run's counters and start time."""
    started = _at(run["started_at"])
    processed, total = _counts(run)
    if started is None or processed == 0:
        return None, None
    end = _at(run["completed_at"]) or datetime.now(UTC)
    elapsed = (end - started).total_seconds()
    if elapsed <= 0:
        return None, None
    rate = processed / elapsed
    return rate, (max(total - processed, 0) / rate if total else None)


def _counts(run: Run) -> tuple[int, int]:
    return run["progress"]["processed"], run["progress"]["total"]


def _phase(run: Run) -> str:
    if run["status"] == "pending":
        return f"run {run['id']}: waiting for a worker"
    if run["cancel_requested"]:
        return f"run {run['id']}: cancelling"
    if not run["progress"]["total"]:
        return f"run {run['id']}: reading"
    return f"run {run['id']}: processing"


def _watch(api: Client, run: Run, console: Console) -> Run:
    """Draw a live bar until the run finishes: from the run's event stream
    (``GET /{run}/stream``) when the API offers it, else (or once it breaks) by polling
    ``GET /{run}``."""
    if _finished(run):
        return run
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        EtaColumn(),
        console=console,
    )

    def draw(run: Run) -> None:
        processed, total = _counts(run)
        rate, eta = _speed(run)
        progress.update(
            task,
            description=_phase(run),
            total=total or None,
            completed=processed,
            rate=rate,
            eta=eta,
        )

    try:
        with progress:
            # No total yet: an indeterminate bar (rich's own default would be 100).
            task = progress.add_task(_phase(run), total=_counts(run)[1] or None)
            draw(run)
            for event, data in api.server_events(f"/{run['id']}/stream"):
                run = _streamed(run, event, data)
                draw(run)
                if event == "end":
                    return run
            while True:
                run = api.get(f"/{run['id']}")["data"]
                draw(run)
                if _finished(run):
                    return run
                time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        raise fail(f"interrupted (run {run['id']} goes on)", 130) from None


def _streamed(run: Run, event: str, data: Any) -> Run:
    """The run as one message of its stream leaves it."""
    if event == "end":
        return dict(data)
    if event == "progress":
        return {**run, "status": data["status"], "progress": data["progress"]}
    if event == "split_started" and run["started_at"] is None:
        return {**run, "started_at": data["at"]}  # for the rate, as the run will show it
    if event == "cancel_requested":
        return {**run, "cancel_requested": True}
    return run


def _finish(console: Console, run: Run) -> None:
    """Print the run and exit with its outcome: 0 when it completed, 1 when it did not."""
    _render_run(console, run)
    if run["status"] == "failed":
        raise fail(f"run {run['id']} failed: {run['error_message'] or 'no reason recorded'}")
    if run["status"] == "cancelled":
        raise fail(f"run {run['id']} was cancelled")


# --- commands over the API ------------------------------------------------------------------


def list_runs(
    status: Annotated[
        str | None,
        typer.Option("--status", help=f"Only runs in this status: {', '.join(RUN_STATUSES)}."),
    ] = None,
    importer: Annotated[
        str | None, typer.Option("--importer", help="Only runs of this importer (slug).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="How many runs (1-1000).")] = 20,
    profile: ProfileOption = None,
) -> None:
    """List runs, newest first."""
    if status is not None and status not in RUN_STATUSES:
        raise fail(f"--status must be one of {', '.join(RUN_STATUSES)}, not {status!r}", EXIT_USAGE)
    if not 1 <= limit <= 1000:
        raise fail(f"--limit must be between 1 and 1000, not {limit}", EXIT_USAGE)
    with connect(profile) as api:
        if importer is not None:
            api.get(f"/importers/{quote(importer, safe='')}")  # an unknown slug: its 404
        runs = api.pages("/", limit, status=status, importer=importer)
    console = _console()
    if not runs:
        console.print("no runs")
        return
    columns = [
        ("ID", False),
        ("IMPORTER", True),
        ("KIND", False),
        ("STATUS", False),
        ("ROWS", False),
        ("FAILED", False),
        ("FILE", True),
        ("CREATED", False),
    ]
    rows: list[list[str | Text]] = [
        [
            str(run["id"]),
            run["importer"],
            run["kind"] + (" (dry)" if run["dry_run"] else ""),
            _status(run["status"]),
            f"{run['progress']['processed']}/{run['progress']['total']}",
            str(run["progress"]["failed"]),
            run["original_filename"] or "-",
            _when(_at(run["created_at"])),
        ]
        for run in runs
    ]
    _print_table(console, columns, rows)


def show_status(
    run: Annotated[str, typer.Argument(metavar="RUN", help="The run's id.")],
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="Draw a live bar until the run ends.")
    ] = True,
    profile: ProfileOption = None,
) -> None:
    """Show a run, with a live progress bar while it runs; exit 1 if it failed or was cancelled."""
    run_id = _run_id(run)
    console = _console()
    with connect(profile) as api:
        found = api.get(f"/{run_id}")["data"]
        if follow:
            found = _watch(api, found, console)
    _finish(console, found)


def list_events(
    run: Annotated[str, typer.Argument(metavar="RUN", help="The run's id.")],
    types: Annotated[
        list[str] | None,
        typer.Option("--type", help=f"Only events of this type (repeatable): {', '.join(TYPES)}."),
    ] = None,
    after: Annotated[
        str | None,
        typer.Option(
            "--after",
            help="Only events after this one: its id (as listed) or its API cursor.",
        ),
    ] = None,
    profile: ProfileOption = None,
) -> None:
    """List a run's events, oldest first: what happened to it, chunk by chunk."""
    run_id = _run_id(run)
    for name in types or ():
        if name not in TYPES:
            raise fail(f"--type must be one of {', '.join(TYPES)}, not {name!r}", EXIT_USAGE)
    if after is not None and not re.fullmatch(CURSOR_PATTERN, after):
        raise fail(f"--after must be an event's cursor or id (0 or more), not {after}", EXIT_USAGE)
    found: list[dict[str, Any]] = []
    with connect(profile) as api:
        # By keyset after the first page: events added meanwhile are never skipped.
        cursor = None if after in (None, "0") else after
        while True:
            body = api.get(
                f"/{run_id}/events", type=types or None, after=cursor, per_page=EVENTS_PAGE
            )
            found += body["data"]
            if len(body["data"]) < EVENTS_PAGE:
                break
            cursor = body["data"][-1]["cursor"]
    console = _console()
    if not found:
        console.print(f"no events for run {run_id}")
        return
    columns = [("ID", False), ("AT", False), ("TYPE", False), ("SUMMARY", True)]
    rows: list[list[str | Text]] = [
        [str(e["id"]), _when(_at(e["at"])), e["type"], event_summary(e["type"], e["data"])]
        for e in found
    ]
    _print_table(console, columns, rows, right=("ID",))


def _rows_by_outcome(rows: dict[str, Any]) -> str:
    # In the summary's order (jsonb keeps its own), failed last.
    order = [*SUMMARY_KEYS, "failed"]
    outcomes = sorted(rows, key=lambda k: order.index(k) if k in order else len(order))
    counted = [f"{rows[outcome]} {outcome}" for outcome in outcomes if rows[outcome]]
    return ", ".join(counted) or "no rows"


def event_summary(type: str, data: dict[str, Any]) -> str:
    """One line of an event's data, as an operator reads it."""
    index = data.get("index")
    if type == "created":
        dry = " (dry run)" if data.get("dry_run") else ""
        parent = f", retry of run {data['parent_run_id']}" if data.get("parent_run_id") else ""
        return f"{data.get('kind')} run of {data.get('importer')}{dry}{parent}"
    if type == "split_started":
        attempt = f"attempt {data.get('attempt')}" if data.get("attempt") else "no claim"
        resumed = f", after {data['resumed_from']} chunks" if data.get("resumed_from") else ""
        return f"{attempt}{resumed}" + (f" on {data['worker']}" if data.get("worker") else "")
    if type == "split_finished":
        size = f", {_size(data['bytes'])}" if data.get("bytes") is not None else ""
        reused = f", chunks of run {data['reused_from']}" if data.get("reused_from") else ""
        counted = (
            f"{plural(data.get('rows') or 0, 'row')} in {plural(data.get('chunks') or 0, 'chunk')}"
        )
        return f"{counted}{size}{reused}"
    if type == "chunk_applied":
        failed = " (its rows failed)" if data.get("status") == "failed" else ""
        attempt = f", attempt {data['attempt']}" if data.get("attempt") else ""
        return (
            f"chunk {index}{failed}: {_rows_by_outcome(data.get('rows') or {})} in "
            f"{data.get('duration_ms')} ms{attempt}"
        )
    if type == "chunk_retried":
        return f"chunk {index}, attempt {data.get('attempt')}: {data.get('reason')}"
    if type == "lease_reclaimed":
        what = "split" if data.get("what") == "split" else f"chunk {index}"
        return f"{what} taken over from {data.get('previous')} (attempt {data.get('attempt')})"
    if type == "cancel_requested":
        return f"run {data.get('status')}"
    if type == "finalized":
        return f"{data.get('status')}: {_rows_by_outcome(data.get('summary') or {})}"
    if type == "failed":
        return " ".join(str(data.get("message")).split())
    return ", ".join(f"{key}={value}" for key, value in data.items())


def cancel(
    run: Annotated[str, typer.Argument(metavar="RUN", help="The run's id.")],
    profile: ProfileOption = None,
) -> None:
    """Cancel an unfinished run: chunks in flight finish, no new chunk starts."""
    run_id = _run_id(run)
    with connect(profile) as api:
        api.post(f"/{run_id}/cancel")
        status = api.get(f"/{run_id}")["data"]["status"]
    if status == "cancelled":  # it had not started, or has just stopped
        typer.echo(f"run {run_id} cancelled")
    else:
        typer.echo(f"cancellation request sent: run {run_id} stops after the chunks in flight")


def retry(
    run: Annotated[str, typer.Argument(metavar="RUN", help="The run whose failed rows to retry.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would happen; write nothing.")
    ] = False,
    profile: ProfileOption = None,
) -> None:
    """Start a new run with exactly the failed rows of RUN; prints the new run's id."""
    run_id = _run_id(run)
    with connect(profile) as api:
        created = api.post(f"/{run_id}/retry", json={"dry_run": dry_run})["data"]
    # The id alone on stdout (NEW=$(ingest retry 5) works); the note on stderr.
    typer.echo(str(created["id"]))
    _note(
        f"run {created['id']} started: the failed rows of run {run_id}"
        + (" (dry run)" if dry_run else "")
    )


def import_file(
    slug: Annotated[str, typer.Argument(metavar="SLUG", help="The importer.")],
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="A local CSV/XLSX/JSON/NDJSON file.")
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would happen; write nothing.")
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="Draw a live bar until the run ends, then its summary.")
    ] = False,
    profile: ProfileOption = None,
) -> None:
    """Upload FILE to importer SLUG and start a run (prints the run's id)."""
    if not file.exists():
        raise fail(f"file not found: {file}")
    if not file.is_file():
        raise fail(f"not a file: {file}")
    console = _console()
    with connect(profile) as api:
        try:
            with file.open("rb") as content:
                run = api.post(
                    f"/upload/{quote(slug, safe='')}",
                    files={"file": (file.name, content, "application/octet-stream")},
                    data={"dry_run": "true" if dry_run else "false"},
                )["data"]
        except OSError as exc:
            raise fail(f"cannot read {file}: {exc.strerror or exc}") from None
        typer.echo(str(run["id"]))
        _note(
            f"run {run['id']} started: {file.name} into {slug}" + (" (dry run)" if dry_run else "")
        )
        if wait:
            run = _watch(api, run, console)
    if wait:
        _finish(console, run)


def list_importers(profile: ProfileOption = None) -> None:
    """List importers with their format, source and schedule."""
    with connect(profile) as api:
        found = api.pages("/importers")
    console = _console()
    if not found:
        console.print("no importers")
        return
    columns = [
        ("SLUG", False),
        ("NAME", True),
        ("FORMAT", False),
        ("SOURCE", False),
        ("SCHEDULE", False),
        ("COLLECTION", True),
        ("APPROVAL", False),
    ]
    _print_table(console, columns, [_importer_row(importer) for importer in found])


def _importer_row(importer: dict[str, Any]) -> list[str | Text]:
    definition = importer["definition"]
    return [
        importer["slug"],
        importer["name"],
        definition["format"],
        definition["source"]["type"],
        definition["source"].get("schedule") or "-",
        definition["collection"],
        definition["approval"],
    ]


# --- straight to Postgres -------------------------------------------------------------------


def prune(
    days: Annotated[
        int | None, typer.Option("--days", help="Prune runs finished more than N days ago.")
    ] = None,
) -> None:
    """Delete the row logs, chunks, events and stored files of old finished runs (records
    stay)."""
    if days is None:
        raise fail("--days is required, e.g. `ingest prune --days 30`")
    if days < 0:
        raise fail(f"--days must be 0 or more, not {days}")

    from app.auth import sessions  # console sign-ins end too; imported here: the API's stack

    async def work(ctx: Context) -> dict[str, int]:
        totals = {"runs": 0, "rows": 0, "chunks": 0, "events": 0, "files": 0, "bytes": 0}
        async with unit_of_work(ctx.factory) as session:
            totals["sessions"] = await sessions.prune(session, days)
        while True:
            async with unit_of_work(ctx.factory) as session:
                batch = await service.prunable_runs(session, days)
                counts = await service.prune_runs(session, [run_id for run_id, _ in batch])
            if not batch:
                return totals
            totals["runs"] += len(batch)
            totals["rows"] += counts["rows"]
            totals["chunks"] += counts["chunks"]
            totals["events"] += counts["events"]
            # Files go after the commit: a rolled-back prune never loses a file.
            storage = storage_of(ctx.settings)
            for run_id, key in batch:
                await remove_run_payloads(storage, run_id)
                if key is not None:
                    removed = await _remove_file(storage, key)
                    if removed is not None:
                        totals["files"] += 1
                        totals["bytes"] += removed

    totals = in_database(work)
    if totals["sessions"]:
        typer.echo(
            f"removed {totals['sessions']} console session(s) that ended more than {days} days ago"
        )
    if not totals["runs"]:
        typer.echo(
            f"nothing to prune: no run finished more than {days} days ago holds row logs or files"
        )
        return
    typer.echo(
        f"pruned {totals['runs']} run(s) finished more than {days} days ago: "
        f"{totals['rows']} row log entries, {totals['chunks']} chunks, {totals['events']} events "
        f"and {totals['files']} stored file(s) ({_size(totals['bytes'])}) removed; records kept"
    )


async def _remove_file(storage: Storage, key: str) -> int | None:
    """Remove a stored file; its size, or None when it was already gone (or not removable)."""
    try:
        return await storage.delete(key)
    except (OSError, ValueError) as exc:
        _note(f"warning: could not remove stored file {key}: {exc}")
        return None


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{count} B"  # pragma: no cover


def register(cli: typer.Typer) -> None:
    """Add the run commands to the ``ingest`` command line."""
    cli.command("runs")(list_runs)
    cli.command("status")(show_status)
    cli.command("events")(list_events)
    cli.command("cancel")(cancel)
    cli.command("retry")(retry)
    cli.command("import")(import_file)
    cli.command("importers")(list_importers)
    cli.command("prune")(prune)
