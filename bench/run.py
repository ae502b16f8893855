"""`make bench`: the whole ingest path against a raw Postgres COPY, measured in one run.

Generates the users CSVs (bench/data.py), creates a fresh ``ingest_bench`` database, starts the
real API and arq workers as subprocesses, uploads over HTTP and waits for each run to finish.
Prints rows/s beside asyncpg ``copy_records_to_table`` of the same rows, and peak RSS. Workers
are restarted before every measured upload so each peak RSS belongs to that upload alone.

    python -m bench.run [--rows 1000000] [--small 100000] [--workers 1,2] [--pairs 3]
                        [--chunk-sizes 1000]
"""

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import asyncpg
import httpx
import psutil
from sqlalchemy.engine import make_url

from bench.data import COUNTRIES, DATA_DIR, HEADER, resent_csv, typed_batches, users_csv

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "/api/v1/ingest"
DB_NAME = "ingest_bench"
REDIS_DB = 13
QUEUE = "ingest:bench"
STALL_SECONDS = 120  # a run whose progress stands still this long fails the benchmark
# Each poll is a GET of the run with its first rows, served by the API while the run goes
# on; the end time comes from the run's completed_at, not from the poll.
POLL_SECONDS = 0.5
FINISHED = ("completed", "completed_with_errors", "failed", "cancelled")
FIELDS = {
    "id": {"type": "integer", "required": True},
    "email": {"type": "email", "required": True},
    "name": {"type": "string", "required": True},
    "age": {"type": "integer", "min": 0, "max": 150},
    "country": {"type": "string", "in": COUNTRIES},
    "signup_date": {"type": "date", "format": "%Y-%m-%d"},
    "score": {"type": "number"},
    "tags": {"type": "list", "separator": ";"},
    "notes": {"type": "string"},
}
ALL, FAILED = "bench-users", "bench-users-failed"  # the importers: log_rows all / failed
VERDICT = {True: "met", False: "MISSED", None: "(no target)"}
CPU_ROLES = ("worker", "api", "postgres")
TABLE = "ingest_data.bench_users"  # the importers' collection table
TRUNCATE = f"TRUNCATE {TABLE}, run_rows, run_chunks, runs, idempotency_keys CASCADE"


def plain(url: str, database: str | None = None) -> str:
    """The URL as asyncpg takes it (no +driver), optionally naming another database."""
    parsed = make_url(url).set(drivername="postgresql")
    if database:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def definition(slug: str, log_rows: str, chunk_size: int | None) -> dict[str, Any]:
    """The bench importer; `chunk_size` None leaves chunk sizes to the service."""
    return {
        "slug": slug,
        "format": "csv",
        "collection": "bench_users",
        "key": ["email"],
        "on_duplicate": "update",
        "action": "upsert",
        **({"chunk_size": chunk_size} if chunk_size is not None else {}),
        "log_rows": log_rows,
        "fields": FIELDS,
    }


# --- servers, database, token ---------------------------------------------------------------


def postgres_server() -> str:
    """The Postgres server URL: from the environment, else an embedded server."""
    from app.core import embedded

    pg = os.environ.get("INGEST_BENCH_DATABASE_URL") or os.environ.get("INGEST_DATABASE_URL")
    if not pg:
        print("starting embedded PostgreSQL ...", flush=True)
        pg = embedded.start_postgres(ROOT / ".ingest" / "bench-pg")
    return pg


def servers() -> tuple[str, str]:
    """(Postgres server URL, Redis URL): from the environment, else embedded servers."""
    from app.core import embedded

    pg = postgres_server()
    redis = os.environ.get("INGEST_BENCH_REDIS_URL") or os.environ.get("INGEST_REDIS_URL")
    if not redis:
        print("starting embedded Redis ...", flush=True)
        redis = embedded.start_redis(ROOT / ".ingest" / "bench-redis")
    return pg, urlparse(redis)._replace(path=f"/{REDIS_DB}").geturl()


async def fresh_database(server_url: str, name: str) -> tuple[str, str, int | None]:
    """Database ``name`` created anew and migrated. Returns its URL, the Postgres version,
    and the server's pid when it runs on this machine."""
    from app.core import migrate

    conn = await asyncpg.connect(plain(server_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
        version = await conn.fetchval("SHOW server_version")
        server_pid = None
        with contextlib.suppress(psutil.Error):  # a local server: its CPU time is reported
            server_pid = psutil.Process(await conn.fetchval("SELECT pg_backend_pid()")).ppid()
    finally:
        await conn.close()
    url = plain(server_url, name)
    await asyncio.to_thread(migrate.upgrade, url)
    return url, version, server_pid


async def prepare_database(server_url: str, redis_url: str) -> tuple[str, str, int | None]:
    """A fresh, migrated ``ingest_bench`` database (see fresh_database) and a flushed Redis
    db."""
    from app.core.queue import close_queue, create_queue

    url, version, server_pid = await fresh_database(server_url, DB_NAME)
    queue = create_queue(redis_url, QUEUE)
    await queue.flushdb()
    await close_queue(queue)
    return url, version, server_pid


async def issue_token(url: str) -> str:
    from app.auth import service as auth
    from app.core.db import create_engine, create_session_factory, unit_of_work

    engine = create_engine(url)
    try:
        async with unit_of_work(create_session_factory(engine)) as session:
            user = await auth.get_or_create_user(session, "bench@localhost", "admin", "bench")
            issued = await auth.issue_token(session, user, "bench", ["ingest:admin"])
        return issued.plaintext
    finally:
        await engine.dispose()


async def settle(url: str, *, truncate: bool) -> None:
    """Start a measured upload from a settled database: emptied (for a first upload), or with
    the vacuum and statistics that the previous upload's writes call for done now, rather
    than by autovacuum during this one; then a checkpoint, so none lands in the next run."""
    conn = await asyncpg.connect(url)
    try:
        if truncate:
            await conn.execute(TRUNCATE)
        else:
            await conn.execute(f"VACUUM (ANALYZE) {TABLE}, run_rows, run_chunks, runs")
        with contextlib.suppress(asyncpg.PostgresError):
            await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def copy_baseline(url: str, path: Path) -> dict[str, Any]:
    """asyncpg COPY of the file's rows, parsed beforehand (per 200k-row batch), into a typed
    table; only the COPY calls are timed."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "DROP TABLE IF EXISTS bench_copy; CREATE TABLE bench_copy (id bigint, email text, "
            "name text, age int, country text, signup_date date, score double precision, "
            "tags text[], notes text)"
        )
        await conn.execute("CHECKPOINT")
        rows, seconds = 0, 0.0
        for batch in typed_batches(path):
            start = time.perf_counter()
            await conn.copy_records_to_table("bench_copy", records=batch, columns=HEADER)
            seconds += time.perf_counter() - start
            rows += len(batch)
        await conn.execute("DROP TABLE bench_copy")
    finally:
        await conn.close()
    return {"variant": "asyncpg COPY, typed table", "rows": rows, "seconds": seconds}


# --- processes and memory -------------------------------------------------------------------


def process_env(db_url: str, redis_url: str, storage: str, **extra: str) -> dict[str, str]:
    """The environment of the API and worker processes a benchmark starts."""
    env = {
        **os.environ,
        "INGEST_DATABASE_URL": db_url,
        "INGEST_REDIS_URL": redis_url,
        "INGEST_QUEUE_NAME": QUEUE,
        "INGEST_STORAGE_DIR": storage,
        "INGEST_LOG_LEVEL": "WARNING",
        "INGEST_MAX_UPLOAD_MB": "4096",
        **extra,
    }
    env.pop("INGEST_IMPORTERS_DIR", None)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    with contextlib.suppress(psutil.Error):
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
    return total


def cpu_seconds(proc: psutil.Process) -> float:
    """CPU time of a process and its children, live or already reaped."""
    with contextlib.suppress(psutil.Error):
        t = proc.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                c = child.cpu_times()
                total += c.user + c.system
        return total
    return 0.0


class PeakRss(threading.Thread):
    """Samples the RSS of watched processes (with their children) every 0.2 s; also reads
    their CPU time."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.watched: dict[str, list[psutil.Process]] = {}
        self.peaks: dict[str, int] = {}
        self.done = threading.Event()

    def watch(self, role: str, pids: list[int]) -> None:
        self.watched[role] = [psutil.Process(pid) for pid in pids]

    def reset(self) -> None:
        self.peaks = {}

    def cpu(self, role: str) -> float:
        return sum(cpu_seconds(p) for p in self.watched.get(role, []))

    def peak_mb(self, role: str) -> float:
        """The highest RSS any one process of ``role`` reached since the reset."""
        return round(self.peaks.get(role, 0) / 2**20, 1)

    def run(self) -> None:
        while not self.done.wait(0.2):
            for role, procs in list(self.watched.items()):
                if role == "postgres":
                    continue  # CPU only: a server's RSS counts shared buffers in every backend
                peak = max((tree_rss(p) for p in procs), default=0)
                self.peaks[role] = max(self.peaks.get(role, 0), peak)


class Processes:
    """The API and the workers, as subprocesses of this one."""

    def __init__(self, env: dict[str, str], redis_port: int, sampler: PeakRss):
        self.env = env
        self.redis_port = redis_port
        self.sampler = sampler
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        # A session of its own: Ctrl-C stops it through stop(), in order, not all at once.
        command = [sys.executable, "-m", "app.cli", *args]
        return subprocess.Popen(command, cwd=ROOT, env=self.env, start_new_session=True)

    def start_api(self, port: int) -> str:
        self.api = self._spawn("serve", "--port", str(port))
        self.sampler.watch("api", [self.api.pid])
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.api.poll() is not None:
                raise RuntimeError("the API process exited during start-up")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    return base
            time.sleep(0.2)
        raise RuntimeError("the API was not ready within 60 s")

    def restart_workers(self, count: int) -> None:
        """Fresh workers, each connected to Redis (so polling the queue) before returning."""
        self.stop(self.workers)
        self.workers = [self._spawn("worker") for _ in range(count)]
        self.sampler.watch("worker", [w.pid for w in self.workers])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(w.poll() is not None for w in self.workers):
                raise RuntimeError("a worker process exited during start-up")
            if all(self._on_redis(w.pid) for w in self.workers):
                time.sleep(0.5)  # the first poll follows the connection
                return
            time.sleep(0.1)
        raise RuntimeError("the workers did not connect to Redis within 60 s")

    def _on_redis(self, pid: int) -> bool:
        with contextlib.suppress(psutil.Error):
            return any(
                c.raddr and c.raddr.port == self.redis_port and c.status == "ESTABLISHED"
                for c in psutil.Process(pid).net_connections("tcp")
            )
        return False

    @staticmethod
    def stop(procs: list[subprocess.Popen[bytes]]) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        self.stop([*self.workers, *([self.api] if self.api else [])])


# --- measuring ------------------------------------------------------------------------------


def upload_and_wait(
    client: httpx.Client, slug: str, path: Path, rows: int, procs: Processes
) -> dict[str, Any]:
    """Upload ``path`` to importer ``slug`` and poll the run until it finished. Times are from
    the upload's start: the upload answered, every row was split (the run's total reached the
    file's ``rows``, seen by polling), the run finished (its own ``completed_at``, so the
    figure does not depend on when the poll came)."""
    sampler = procs.sampler
    sampler.reset()
    cpu = {role: sampler.cpu(role) for role in CPU_ROLES}
    started_at = time.time()
    start = time.perf_counter()
    with path.open("rb") as fh:
        response = client.post(f"/upload/{slug}", files={"file": (path.name, fh, "text/csv")})
    response.raise_for_status()
    uploaded = time.perf_counter() - start
    run_id = response.json()["data"]["id"]
    split, seen, moved = None, None, time.monotonic()
    while True:
        run = client.get(f"/{run_id}").json()["data"]
        if split is None and run["progress"]["total"] >= rows:
            split = time.perf_counter() - start
        if run["status"] in FINISHED:
            break
        if any(w.poll() is not None for w in procs.workers):
            raise RuntimeError(f"a worker exited while run {run_id} was {run['status']}")
        if (run["status"], run["progress"]) != seen:
            seen, moved = (run["status"], run["progress"]), time.monotonic()
        elif time.monotonic() - moved > STALL_SECONDS:
            raise RuntimeError(f"run {run_id} made no progress for {STALL_SECONDS} s: {run}")
        time.sleep(POLL_SECONDS)
    completed = datetime.fromisoformat(run["completed_at"].replace("Z", "+00:00"))
    seconds = completed.timestamp() - started_at
    return {
        "seconds": seconds,
        "upload_seconds": round(uploaded, 2),
        "split_seconds": round(min(split or seconds, seconds), 2),
        "worker_peak_rss_mb": sampler.peak_mb("worker"),
        "api_peak_rss_mb": sampler.peak_mb("api"),
        **{f"{role}_cpu_s": round(sampler.cpu(role) - cpu[role], 1) for role in CPU_ROLES},
        "status": run["status"],
        "progress": run["progress"],
        "summary": run["summary"],
        "error_message": run["error_message"],
    }


def set_chunk_size(client: httpx.Client, size: int | None) -> None:
    for slug, log_rows in ((ALL, "all"), (FAILED, "failed")):
        client.put(f"/importers/{slug}", json=definition(slug, log_rows, size)).raise_for_status()


def outcome(result: dict) -> str:
    counts = {k: v for k, v in (result.get("summary") or {}).items() if v}
    counts["failed"] = result["progress"]["failed"]
    text = ", ".join(f"{k} {v}" for k, v in counts.items())
    error = result["error_message"]
    return f"{result['status']}: {text}" + (f" ({error})" if error else "")


def label(rows: int) -> str:
    return f"{rows / 1e6:g}M" if rows >= 1_000_000 else f"{rows / 1000:g}k"


def measure_all(
    args: argparse.Namespace,
    db_url: str,
    procs: Processes,
    client: httpx.Client,
    files: dict[str, Path],
) -> list[dict[str, Any]]:
    """Every variant, per worker count and chunk size. Each upload gets fresh workers; a
    "fresh" one also starts from empty tables, so it is a first upload."""
    results: list[dict[str, Any]] = []
    big, small = label(args.rows), label(args.small)
    for workers in args.workers:
        for n, size in enumerate(args.chunk_sizes):
            set_chunk_size(client, size)
            size = size or "auto"
            steps = [
                ("big-all", f"{big} log_rows=all cs={size}", ALL, "big", True),
                ("big-failed", f"{big} log_rows=failed cs={size}", FAILED, "big", True),
            ]
            if n == 0:
                # Short runs vary most from one to the next: the pair that (d) compares is
                # measured `pairs` times.
                for _ in range(args.pairs):
                    steps += [
                        ("small-first", f"{small} first upload", ALL, "small", True),
                        ("small-unchanged", f"{small} re-upload, unchanged", ALL, "small", False),
                    ]
                steps += [
                    # The same file again reuses its split; the same rows in another file
                    # show the cost of unchanged rows alone.
                    ("small-resent", f"{small} same rows, another file", ALL, "resent", False),
                    ("small-changed", f"{small} re-upload, all changed", ALL, "changed", False),
                ]
            for kind, variant, slug, file, fresh in steps:
                procs.stop(procs.workers)
                asyncio.run(settle(db_url, truncate=fresh))
                procs.restart_workers(workers)
                expected = args.rows if file == "big" else args.small
                run = upload_and_wait(client, slug, files[file], expected, procs)
                rows = run["progress"]["total"]
                result = {
                    "kind": kind if n == 0 else f"{kind}-cs{size}",
                    "variant": variant,
                    "workers": workers,
                    "chunk_size": size,
                    "rows": rows,
                    "rows_per_s": rows / run["seconds"],
                    **run,
                }
                results.append(result)
                print(
                    f"  {variant:<34} w={workers} {run['seconds']:6.1f} s (split "
                    f"{run['split_seconds']:.1f} s) {result['rows_per_s']:8,.0f} rows/s  "
                    f"{outcome(result)}",
                    flush=True,
                )
    return results


# --- report ---------------------------------------------------------------------------------


def check_targets(results: list[dict], copy_rate: float) -> list[dict]:
    """The issue's targets, per worker count, from the main chunk size's runs."""
    checks = []
    for workers in sorted({r["workers"] for r in results}):
        runs = {r["kind"]: r for r in results if r["workers"] == workers}
        firsts = [r for r in results if r["workers"] == workers and r["kind"] == "small-first"]
        unchanged = [
            r for r in results if r["workers"] == workers and r["kind"] == "small-unchanged"
        ]

        def add(name: str, value: float, unit: str, ok: bool | None, w: int = workers) -> None:
            checks.append(
                {"workers": w, "target": name, "value": round(value, 2), "unit": unit, "met": ok}
            )

        if "big-all" in runs and "big-failed" in runs:
            big = runs["big-all"]
            share = big["rows_per_s"] / copy_rate
            floor = 0.25 if workers >= 2 else 0.18
            add(f"big file, log_rows=all >= {floor} x COPY", share, "x", share >= floor)
            failed_share = runs["big-failed"]["rows_per_s"] / copy_rate
            add("big file, log_rows=failed, x COPY", failed_share, "x", None)
            cpu = big["worker_cpu_s"] / big["rows"] * 1e6
            add("worker CPU per row, big file <= 8 us", cpu, "us", cpu <= 8)
            big_rss = max(big["worker_peak_rss_mb"], runs["big-failed"]["worker_peak_rss_mb"])
            add("worker peak RSS, big file <= 300 MB", big_rss, "MB", big_rss <= 300)
            if firsts:
                small_rss = statistics.median(r["worker_peak_rss_mb"] for r in firsts)
                ratio = big_rss / max(small_rss, 1)
                add("worker peak RSS big / small <= 1.20", ratio, "x", ratio <= 1.2)
        if firsts and "small-resent" in runs:
            first_rate = statistics.median(r["rows_per_s"] for r in firsts)
            ratio = runs["small-resent"]["rows_per_s"] / first_rate
            add("same rows, another file >= 2x first upload", ratio, "x", ratio >= 2)
        if firsts and unchanged:
            # Each re-upload of the same file against the first upload just before it.
            speedups = sorted(
                again["rows_per_s"] / first["rows_per_s"]
                for first, again in zip(firsts, unchanged, strict=False)
            )
            speedup = statistics.median(speedups)
            name = "same file again vs first upload"
            if len(speedups) > 1:
                spread = ", ".join(f"{value:.2f}" for value in speedups)
                name += f" (median of {spread})"
            add(name, speedup, "x", None)
        if firsts and "small-changed" in runs:
            first_rate = statistics.median(r["rows_per_s"] for r in firsts)
            ratio = runs["small-changed"]["rows_per_s"] / first_rate
            add("changed re-upload vs first upload", ratio, "x", None)
    return checks


def report(copy: dict, results: list[dict], checks: list[dict], meta: dict) -> None:
    copy_rate = copy["rows"] / copy["seconds"]
    head = (
        f"{'variant':<34} {'w':>2} {'rows':>9} {'seconds':>7} {'rows/s':>8} {'% COPY':>6} "
        f"{'worker MB':>9} {'API MB':>6} {'upload s':>8} {'split s':>7}  CPU s worker/pg/api"
    )
    print("\n" + head + "\n" + "-" * len(head))
    print(
        f"{copy['variant']:<34} {'':>2} {copy['rows']:>9,} {copy['seconds']:>7.1f} "
        f"{copy_rate:>8,.0f} {100:>5.0f}%"
    )
    for r in results:
        print(
            f"{r['variant']:<34} {r['workers']:>2} {r['rows']:>9,} {r['seconds']:>7.1f} "
            f"{r['rows_per_s']:>8,.0f} {100 * r['rows_per_s'] / copy_rate:>5.1f}% "
            f"{r['worker_peak_rss_mb']:>9.0f} {r['api_peak_rss_mb']:>6.0f} "
            f"{r['upload_seconds']:>8.1f} {r['split_seconds']:>7.1f}  "
            f"{r['worker_cpu_s']:.1f}/{r['postgres_cpu_s']:.1f}/{r['api_cpu_s']:.1f}"
        )
    print("\ntargets (issue 14: row engine v2)")
    for c in checks:
        print(
            f"  w={c['workers']}  {c['target']:<46} {c['value']:>8} {c['unit']:<3} "
            f"{VERDICT[c['met']]}"
        )
    out = DATA_DIR / "results.json"
    for r in results:
        r["pct_of_copy"] = round(100 * r["rows_per_s"] / copy_rate, 1)
    doc = {
        "meta": meta,
        "copy": {**copy, "rows_per_s": copy_rate},
        "runs": results,
        "targets": checks,
    }
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nresults: {out.relative_to(ROOT)}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    ints = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    sizes = lambda text: [None if x == "auto" else int(x) for x in text.split(",")]  # noqa: E731
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the big file")
    parser.add_argument("--small", type=int, default=100_000, help="rows of the small file")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workers", type=ints, default=[1, 2], help="worker counts, e.g. 1,2")
    parser.add_argument(
        "--pairs", type=int, default=3, help="first and unchanged uploads of the small file"
    )
    parser.add_argument(
        "--chunk-sizes",
        type=sizes,
        default=[None],
        help="chunk sizes (auto: the service's); the first is the main one, others rerun the "
        "big file",
    )
    return parser.parse_args()


def main() -> None:
    from app.core import embedded

    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sampler = PeakRss()
    sampler.start()
    storage = tempfile.mkdtemp(prefix="ingest-bench-storage-")
    procs: Processes | None = None
    try:
        start = time.perf_counter()
        git = ["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--exclude", "*"]
        commit = subprocess.run(git, capture_output=True, text=True).stdout.strip()
        files = {
            "big": users_csv(args.rows, args.seed),
            "small": users_csv(args.small, args.seed),
            "changed": users_csv(args.small, args.seed, changed=True),
        }
        files["resent"] = resent_csv(files["small"])
        print(
            f"data: {', '.join(p.name for p in files.values())} "
            f"({time.perf_counter() - start:.1f} s)",
            flush=True,
        )
        server_url, redis_url = servers()
        db_url, version, server_pid = asyncio.run(prepare_database(server_url, redis_url))
        token = asyncio.run(issue_token(db_url))
        print(f"PostgreSQL {version}, database {DB_NAME}; Redis db {REDIS_DB}", flush=True)

        copy = asyncio.run(copy_baseline(db_url, files["big"]))
        print(f"  COPY baseline: {copy['rows'] / copy['seconds']:,.0f} rows/s", flush=True)

        env = process_env(db_url, redis_url, storage)
        procs = Processes(env, urlparse(redis_url).port or 6379, sampler)
        if server_pid is not None:
            sampler.watch("postgres", [server_pid])
        base = procs.start_api(free_port())
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base + PREFIX, headers=headers, timeout=600) as client:
            for slug, log_rows in ((ALL, "all"), (FAILED, "failed")):
                body = definition(slug, log_rows, args.chunk_sizes[0])
                client.post("/importers", json=body).raise_for_status()
            results = measure_all(args, db_url, procs, client, files)
        meta = {
            "commit": commit,
            "python": platform.python_version(),
            "postgres": version,
            "cpus": os.cpu_count(),
            "seed": args.seed,
            "files": {k: p.name for k, p in files.items()},
            "total_seconds": round(time.perf_counter() - start, 1),
        }
        report(copy, results, check_targets(results, copy["rows"] / copy["seconds"]), meta)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the processes ...", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    finally:
        sampler.done.set()
        if procs is not None:
            procs.stop_all()
        embedded.stop_all()
        shutil.rmtree(storage, ignore_errors=True)


if __name__ == "__main__":
    main()
