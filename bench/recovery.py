"""Recovery time after a SIGKILL: the same CSV uploaded twice to two workers, once left alone
and once with one worker killed (SIGKILL) when a third of the rows are processed and a new
one started at once. Prints both run times and the difference, and checks that the killed
run's counters are exact and every row was logged once.

    python -m bench.recovery [--rows 300000] [--lease 30]
"""

import argparse
import asyncio
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import asyncpg
import httpx

from bench.data import users_csv
from bench.run import (
    ALL,
    FINISHED,
    PREFIX,
    PeakRss,
    Processes,
    definition,
    free_port,
    issue_token,
    prepare_database,
    process_env,
    servers,
    settle,
)


def wait(client: httpx.Client, run_id: int, kill_at: int | None, procs: Processes) -> Any:
    killed = False
    while True:
        run = client.get(f"/{run_id}").json()["data"]
        if run["status"] in FINISHED:
            return run
        if kill_at is not None and not killed and run["progress"]["processed"] >= kill_at:
            victim = procs.workers[0]
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            progress = run["progress"]
            split = "split done" if progress["total"] >= kill_at * 3 else "split running"
            print(f"  killed worker {victim.pid} at {progress['processed']:,} rows ({split})")
            procs.workers[0] = procs._spawn("worker")
            killed = True
        time.sleep(0.2)


def timed(client: httpx.Client, path: Path, kill_at: int | None, procs: Processes) -> Any:
    start = time.time()
    with path.open("rb") as fh:
        response = client.post(f"/upload/{ALL}", files={"file": (path.name, fh, "text/csv")})
    response.raise_for_status()
    run = wait(client, response.json()["data"]["id"], kill_at, procs)
    run["seconds"] = time.time() - start
    return run


async def logged_once(db_url: str, run_id: int) -> tuple[int, int]:
    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*), count(DISTINCT row_number) FROM run_rows WHERE run_id = $1", run_id
        )
        return int(row[0]), int(row[1])
    finally:
        await conn.close()


def main() -> None:
    from app.core import embedded

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--lease", type=int, default=30)
    args = parser.parse_args()
    storage = tempfile.mkdtemp(prefix="ingest-recovery-")
    sampler = PeakRss()
    procs: Processes | None = None
    try:
        path = users_csv(args.rows, 1)
        server_url, redis_url = servers()
        db_url, version, _ = asyncio.run(prepare_database(server_url, redis_url))
        token = asyncio.run(issue_token(db_url))
        env = process_env(db_url, redis_url, storage, INGEST_LEASE_SECONDS=str(args.lease))
        procs = Processes(env, urlparse(redis_url).port or 6379, sampler)
        base = procs.start_api(free_port())
        headers = {"Authorization": f"Bearer {token}"}
        print(f"PostgreSQL {version}; {args.rows:,} rows; lease {args.lease} s; 2 workers")
        with httpx.Client(base_url=base + PREFIX, headers=headers, timeout=600) as client:
            client.post("/importers", json=definition(ALL, "all", 1000)).raise_for_status()
            results: dict[str, float] = {}
            reference: Any = None
            for name, kill_at in (("undisturbed", None), ("one worker killed", args.rows // 3)):
                asyncio.run(settle(db_url, truncate=True))
                procs.restart_workers(2)
                run = timed(client, path, kill_at, procs)
                rows, distinct = asyncio.run(logged_once(db_url, run["id"]))
                progress = run["progress"]
                # The data has invalid rows on purpose: exact means as the undisturbed run.
                outcome = (run["status"], progress, run["summary"])
                reference = reference or outcome
                exact = (
                    outcome == reference
                    and progress["processed"] == progress["total"] == args.rows
                    and rows == distinct == args.rows
                )
                results[name] = run["seconds"]
                print(
                    f"  {name}: {run['seconds']:.1f} s, {run['status']}, {progress}, "
                    f"row log {rows:,} ({'exact' if exact else 'NOT EXACT'})"
                )
        extra = results["one worker killed"] - results["undisturbed"]
        print(f"recovery cost: {extra:+.1f} s beyond the undisturbed run")
    finally:
        if procs is not None:
            procs.stop_all()
        embedded.stop_all()
        shutil.rmtree(storage, ignore_errors=True)


if __name__ == "__main__":
    main()
