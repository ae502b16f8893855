"""``ingest runs|status|cancel|retry|import|importers|prune``: operate runs from a shell.

Like artisan, the commands talk to Postgres (and to Redis, to start runs) directly, through the
same services as the API. Errors are one line on stderr and a non-zero exit, never a traceback.
"""

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, cast

import asyncpg
import typer
from arq import ArqRedis
from redis.exceptions import RedisError
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
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import app.models  # noqa: F401  (every table in the metadata: a Run row has FKs to most)
from app.core.config import Settings, get_settings
from app.core.db import create_engine, create_session_factory, unit_of_work
from app.core.errors import IngestError
from app.core.queue import close_queue, create_queue, enqueue_split
from app.core.storage import extension, new_key, path_for, remove_quietly, sanitize_filename
from app.importers import service as importers
from app.importers.models import Importer
from app.pipeline.chunks import remove_run_payloads
from app.pipeline.lifecycle import SUMMARY_KEYS
from app.runs import service
from app.runs.models import FINISHED_STATUSES, Run

T = TypeVar("T")

CONNECT_TIMEOUT_SECONDS = 10
POLL_SECONDS = 0.5
COPY_BUFFER_BYTES = 1024 * 1024
STATUS_STYLES = {
    "pending": "dim",
    "processing": "cyan",
    "completed": "green",
    "completed_with_errors": "yellow",
    "failed": "red",
    "cancelled": "magenta",
}


# --- plumbing -------------------------------------------------------------------------------


@dataclass
class Context:
    settings: Settings
    factory: async_sessionmaker[AsyncSession]
    queue: ArqRedis | None


class _Unreachable(Exception):
    pass


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _note(message: str) -> None:
    typer.echo(message, err=True)


def _reason(exc: BaseException) -> str:
    """The driver's own first line, without SQLAlchemy's wrapping."""
    inner = getattr(exc, "orig", None) or exc
    inner = inner.__cause__ or inner
    lines = str(inner).strip().splitlines()
    return lines[0] if lines else type(inner).__name__


def _message(exc: IngestError) -> str:
    if exc.errors:
        return "; ".join(msg for messages in exc.errors.values() for msg in messages)
    return exc.message


def _execute(work: Callable[[Context], Awaitable[T]], *, queue: bool = False) -> T:
    """Run ``work`` with a database (and, with ``queue``, Redis); failures become one line."""
    settings = get_settings()
    try:
        url = settings.require_database_url()
        redis_url = settings.require_redis_url() if queue else None
    except RuntimeError as exc:
        raise _fail(str(exc)) from None
    where = make_url(url).render_as_string(hide_password=True)

    async def main() -> T:
        engine = create_engine(url, connect_args={"timeout": CONNECT_TIMEOUT_SECONDS})
        pool = create_queue(redis_url, settings.queue_name) if redis_url else None
        try:
            try:
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            except (OSError, TimeoutError, DBAPIError) as exc:
                raise _Unreachable(f"cannot reach the database at {where}: {_reason(exc)}") from exc
            if pool is not None:
                try:
                    await pool.ping()
                except (OSError, TimeoutError, RedisError) as exc:
                    shown = make_url(redis_url or "").render_as_string(hide_password=True)
                    raise _Unreachable(f"cannot reach Redis at {shown}: {exc}") from exc
            return await work(Context(settings, create_session_factory(engine), pool))
        finally:
            if pool is not None:
                await close_queue(pool)
            await engine.dispose()

    try:
        return asyncio.run(main())
    except IngestError as exc:
        raise _fail(_message(exc)) from None
    except _Unreachable as exc:
        raise _fail(str(exc)) from None
    except DBAPIError as exc:
        if isinstance(getattr(exc.orig, "__cause__", None), asyncpg.UndefinedTableError):
            raise _fail(f"the database at {where} is not migrated: run `ingest migrate`") from None
        raise _fail(f"database error: {_reason(exc)}") from None
    except KeyboardInterrupt:
        raise _fail("interrupted (the run, if any, goes on)", 130) from None


def _run_id(value: str) -> int:
    """RUN as an integer (checked here so a typo is one line like every other error)."""
    if not value.strip().isdigit():
        raise _fail(f"RUN must be a run id (a positive integer), not {value!r}")
    return int(value)


async def _start(ctx: Context, run_id: int) -> None:
    """Enqueue the run's split job (after its transaction committed)."""
    assert ctx.queue is not None
    try:
        await enqueue_split(ctx.queue, run_id)
    except (OSError, RedisError) as exc:
        _note(f"warning: Redis refused the job ({exc}); a worker's reconciler starts run {run_id}")


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


# --- rendering ------------------------------------------------------------------------------


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


def _render_run(console: Console, run: Run) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("run", Text(str(run.id)))
    grid.add_row("status", _status(run.status))
    grid.add_row("importer", run.importer_slug)
    origin = f"retry of run {run.parent_run_id}" if run.parent_run_id is not None else run.kind
    origin += ", dry run" if run.dry_run else ""
    grid.add_row("file", f"{run.original_filename or '-'} ({origin})")
    total = str(run.total) if run.chunks_total is not None or run.total else "?"
    grid.add_row(
        "progress",
        f"{run.processed} of {total} rows processed: {run.successful} successful, "
        f"{run.failed} failed, {run.skipped} skipped",
    )
    grid.add_row("created", _when(run.created_at))
    grid.add_row("started", _when(run.started_at))
    if run.started_at is not None:
        end = run.completed_at or datetime.now(UTC)
        seconds = max((end - run.started_at).total_seconds(), 0.0)
        rate = f", {run.processed / seconds:,.0f} rows/s" if seconds > 0 else ""
        label = "took" if run.completed_at is not None else "running for"
        grid.add_row("completed", f"{_when(run.completed_at)} ({label} {_duration(seconds)}{rate})")
    else:
        grid.add_row("completed", _when(run.completed_at))
    if run.cancel_requested and run.status not in FINISHED_STATUSES:
        grid.add_row("cancel", "requested: no new chunk starts")
    if run.status in FINISHED_STATUSES and run.summary:
        # JSONB does not keep key order: show the summary in SPEC order.
        keys = [*SUMMARY_KEYS, *(k for k in run.summary if k not in SUMMARY_KEYS)]
        shown = ", ".join(f"{k} {run.summary[k]}" for k in keys if k in run.summary)
        grid.add_row("summary", shown)
    if run.error_message:
        grid.add_row("error", Text(run.error_message, style="red"))
    console.print(grid)


class RateColumn(ProgressColumn):
    """Rows per second since the run started (from Postgres, not from sampling)."""

    def render(self, task: Task) -> Text:
        rate = task.fields.get("rate")
        shown = "- rows/s" if rate is None else f"{rate:,.0f} rows/s"
        return Text(shown, style="progress.data.speed")


class EtaColumn(ProgressColumn):
    """Time left at the current rate, once the total is known."""

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
    if run.started_at is None or run.processed == 0:
        return None, None
    end = run.completed_at or datetime.now(UTC)
    elapsed = (end - run.started_at).total_seconds()
    if elapsed <= 0:
        return None, None
    rate = run.processed / elapsed
    known = run.chunks_total is not None  # the total grows while the input is being read
    return rate, (max(run.total - run.processed, 0) / rate if known else None)


def _phase(run: Run) -> str:
    if run.status == "pending":
        return f"run {run.id}: waiting for a worker"
    if run.cancel_requested:
        return f"run {run.id}: cancelling"
    if run.chunks_total is None:
        return f"run {run.id}: reading"
    return f"run {run.id}: processing"


async def _load(ctx: Context, run_id: int) -> Run:
    async with ctx.factory() as session:
        return await service.get_run(session, run_id)


async def _watch(ctx: Context, run: Run, console: Console) -> Run:
    """Poll Postgres and draw a live bar until the run finishes."""
    if run.status in FINISHED_STATUSES:
        return run
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        EtaColumn(),
        console=console,
    )
    with progress:
        rate, eta = _speed(run)
        task = progress.add_task(
            _phase(run), total=run.total or None, completed=run.processed, rate=rate, eta=eta
        )
        while run.status not in FINISHED_STATUSES:
            await asyncio.sleep(POLL_SECONDS)
            run = await _load(ctx, run.id)
            rate, eta = _speed(run)
            progress.update(
                task,
                description=_phase(run),
                total=run.total or None,
                completed=run.processed,
                rate=rate,
                eta=eta,
            )
    return run


def _finish(console: Console, run: Run) -> None:
    """Print the run and exit with its outcome: 0 when it completed, 1 when it did not."""
    _render_run(console, run)
    if run.status == "failed":
        raise _fail(f"run {run.id} failed: {run.error_message or 'no reason recorded'}")
    if run.status == "cancelled":
        raise _fail(f"run {run.id} was cancelled")


# --- commands -------------------------------------------------------------------------------


def list_runs(
    status: Annotated[
        str | None,
        typer.Option(
            "--status", help=f"Only runs in this status: {', '.join(service.RUN_STATUSES)}."
        ),
    ] = None,
    importer: Annotated[
        str | None, typer.Option("--importer", help="Only runs of this importer (slug).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="How many runs (1-1000).")] = 20,
) -> None:
    """List runs, newest first."""
    if status is not None and status not in service.RUN_STATUSES:
        raise _fail(f"--status must be one of {', '.join(service.RUN_STATUSES)}, not {status!r}")
    if not 1 <= limit <= 1000:
        raise _fail(f"--limit must be between 1 and 1000, not {limit}")

    async def work(ctx: Context) -> list[Run]:
        async with unit_of_work(ctx.factory) as session:
            if importer is not None:
                await importers.get_by_slug(session, importer)
            stmt = service.list_query(status=status, importer=importer).limit(limit)
            return list((await session.scalars(stmt)).all())

    runs = _execute(work)
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
            str(run.id),
            run.importer_slug,
            run.kind + (" (dry)" if run.dry_run else ""),
            _status(run.status),
            f"{run.processed}/{run.total}",
            str(run.failed),
            run.original_filename or "-",
            _when(run.created_at),
        ]
        for run in runs
    ]
    _print_table(console, columns, rows)


def show_status(
    run: Annotated[str, typer.Argument(metavar="RUN", help="The run's id.")],
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="Draw a live bar until the run ends.")
    ] = True,
) -> None:
    """Show a run, with a live progress bar while it runs; exit 1 if it failed or was cancelled."""
    run_id = _run_id(run)
    console = _console()

    async def work(ctx: Context) -> Run:
        found = await _load(ctx, run_id)
        return await _watch(ctx, found, console) if follow else found

    _finish(console, _execute(work))


def cancel(run: Annotated[str, typer.Argument(metavar="RUN", help="The run's id.")]) -> None:
    """Cancel an unfinished run: chunks in flight finish, no new chunk starts."""
    run_id = _run_id(run)

    async def work(ctx: Context) -> str:
        async with unit_of_work(ctx.factory) as session:
            return await service.cancel_run(session, await service.get_run(session, run_id))

    if _execute(work) == "cancelled":
        typer.echo(f"run {run_id} cancelled (it had not started)")
    else:
        typer.echo(f"cancellation request sent: run {run_id} stops after the chunks in flight")


def retry(
    run: Annotated[str, typer.Argument(metavar="RUN", help="The run whose failed rows to retry.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would happen; write nothing.")
    ] = False,
) -> None:
    """Start a new run with exactly the failed rows of RUN; prints the new run's id."""
    run_id = _run_id(run)

    async def work(ctx: Context) -> Run:
        async with unit_of_work(ctx.factory) as session:
            created = await service.create_retry(session, run_id, dry_run=dry_run)
        await _start(ctx, created.id)
        return created

    created = _execute(work, queue=True)
    # The id alone on stdout (NEW=$(ingest retry 5) works); the note on stderr.
    typer.echo(str(created.id))
    _note(
        f"run {created.id} started: the failed rows of run {run_id}"
        + (" (dry run)" if dry_run else "")
    )


def _copy_into_storage(source: Path, storage_dir: Path) -> tuple[str, Path, str, int]:
    """Copy a local file under a server-made key, like an upload: (key, path, sha256, size)."""
    key = new_key(extension(sanitize_filename(source.name)))
    target = path_for(storage_dir, key)
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    try:
        with source.open("rb") as src, target.open("wb") as dst:
            while block := src.read(COPY_BUFFER_BYTES):
                digest.update(block)
                size += len(block)
                dst.write(block)
    except BaseException:
        remove_quietly(target)
        raise
    return key, target, digest.hexdigest(), size


def _check_file(path: Path, expected: str) -> None:
    """Refuse at the door what cannot be read or is obviously not the importer's format."""
    from app.pipeline.readers import ReadError, detect_format

    try:
        detected = detect_format(path, path.name)
        with path.open("rb") as fh:
            is_zip = fh.read(4) == b"PK\x03\x04"
    except (ReadError, OSError) as exc:
        raise _fail(f"{path}: {exc}") from None
    fmt = detected if expected == "auto" else expected
    if is_zip != (fmt == "xlsx"):
        found = "a ZIP archive" if is_zip else f"{detected}, not a ZIP archive"
        raise _fail(f"{path} is {found}, but the importer reads it as {fmt}")


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
) -> None:
    """Start a run of importer SLUG from a local file (prints the run's id)."""
    if not file.exists():
        raise _fail(f"file not found: {file}")
    if not file.is_file():
        raise _fail(f"not a file: {file}")
    try:
        with file.open("rb"):
            pass
    except OSError as exc:
        raise _fail(f"cannot read {file}: {exc.strerror or exc}") from None
    if file.stat().st_size == 0:
        raise _fail(f"{file} is empty")
    console = _console()

    async def work(ctx: Context) -> Run:
        async with unit_of_work(ctx.factory) as session:
            importer = await importers.get_by_slug(session, slug)
            _check_file(file, importers.definition_of(importer).format)
            try:
                key, stored, sha256, size = await asyncio.to_thread(
                    _copy_into_storage, file, ctx.settings.storage_dir
                )
            except OSError as exc:
                raise _fail(f"cannot store {file}: {exc}") from None
            try:
                run = await service.create_run(
                    session,
                    importer,
                    kind="cli",
                    dry_run=dry_run,
                    original_filename=sanitize_filename(file.name),
                    file_key=key,
                    file_sha256=sha256,
                    file_size=size,
                )
                await session.commit()
            except BaseException:
                remove_quietly(stored)
                raise
        await _start(ctx, run.id)
        typer.echo(str(run.id))
        _note(f"run {run.id} started: {file.name} into {slug}" + (" (dry run)" if dry_run else ""))
        return await _watch(ctx, run, console) if wait else run

    run = _execute(work, queue=True)
    if wait:
        _finish(console, run)


def list_importers() -> None:
    """List importers with their format, source and schedule."""

    async def work(ctx: Context) -> list[dict[str, Any]]:
        async with unit_of_work(ctx.factory) as session:
            found = cast(list[Importer], (await session.scalars(importers.list_query())).all())
            return [{"importer": i, "definition": importers.definition_of(i)} for i in found]

    rows = _execute(work)
    console = _console()
    if not rows:
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
    cells: list[list[str | Text]] = [
        [
            d.slug,
            d.name,
            d.format,
            d.source.type,
            d.source.schedule or "-",
            d.collection,
            d.approval,
        ]
        for d in (row["definition"] for row in rows)
    ]
    _print_table(console, columns, cells)


def prune(
    days: Annotated[
        int | None, typer.Option("--days", help="Prune runs finished more than N days ago.")
    ] = None,
) -> None:
    """Delete the row logs, chunks and stored files of old finished runs (records stay)."""
    if days is None:
        raise _fail("--days is required, e.g. `ingest prune --days 30`")
    if days < 0:
        raise _fail(f"--days must be 0 or more, not {days}")

    async def work(ctx: Context) -> dict[str, int]:
        totals = {"runs": 0, "rows": 0, "chunks": 0, "files": 0, "bytes": 0}
        while True:
            async with unit_of_work(ctx.factory) as session:
                batch = await service.prunable_runs(session, days)
                counts = await service.prune_runs(session, [run_id for run_id, _ in batch])
            if not batch:
                return totals
            totals["runs"] += len(batch)
            totals["rows"] += counts["rows"]
            totals["chunks"] += counts["chunks"]
            # Files go after the commit: a rolled-back prune never loses a file.
            for run_id, key in batch:
                remove_run_payloads(ctx.settings.storage_dir, run_id)
                if key is not None:
                    removed = _remove_file(ctx.settings.storage_dir, key)
                    if removed is not None:
                        totals["files"] += 1
                        totals["bytes"] += removed

    totals = _execute(work)
    if not totals["runs"]:
        typer.echo(
            f"nothing to prune: no run finished more than {days} days ago holds row logs or files"
        )
        return
    typer.echo(
        f"pruned {totals['runs']} run(s) finished more than {days} days ago: "
        f"{totals['rows']} row log entries, {totals['chunks']} chunks and "
        f"{totals['files']} stored file(s) ({_size(totals['bytes'])}) removed; records kept"
    )


def _remove_file(storage_dir: Path, key: str) -> int | None:
    """Remove a stored file; its size, or None when it was already gone (or not removable)."""
    try:
        path = path_for(storage_dir, key)
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        _note(f"warning: could not remove stored file {key}: {exc}")
        return None
    return size


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
    cli.command("cancel")(cancel)
    cli.command("retry")(retry)
    cli.command("import")(import_file)
    cli.command("importers")(list_importers)
    cli.command("prune")(prune)
