"""``ingest workers`` and ``GET /workers``: the live workers, from their heartbeats."""

import re
import socket
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typer.testing import Result

from app.core.config import Settings
from app.worker import leases
from tests.cli.harness import Api, api_env, server_env, serving  # noqa: F401  (api_env)
from tests.runs.conftest import ingest, sql
from tests.worker.processes import FAST, fetch, start_worker, wait_for, worker_id_of, workers

Factory = async_sessionmaker[AsyncSession]

NO_WORKER = "No worker is running. Start one with `ingest worker`."


@pytest.fixture(scope="module")
def api_server(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The API judges heartbeats by its own lease: the fast one the tests' workers have."""
    log = tmp_path_factory.mktemp("api") / "api.log"
    with serving({**server_env(settings), **FAST}, log) as api:
        yield api


def lines(result: Result) -> list[str]:
    return [line.rstrip() for line in result.stdout.strip().splitlines()]


@pytest.mark.usefixtures("api_env", "queue")
async def test_workers_lists_a_running_worker_with_its_id_pid_and_heartbeat(
    settings: Settings, session_factory: Factory
) -> None:
    with workers() as started:
        proc = start_worker(settings)
        started.append(proc)
        worker_id = await wait_for(lambda: worker_id_of(session_factory, proc.pid), "a heartbeat")

        result = await ingest("workers")

    assert result.exit_code == 0, result.output
    header, row = lines(result)
    assert header.split() == ["ID", "HOST", "PID", "STARTED", "LAST", "BEAT", "JOBS"]
    # ID HOST PID STARTED(date time) LAST BEAT(date time "(N s ago)") JOBS
    cells = row.split()
    assert cells[:3] == [worker_id, socket.gethostname(), str(proc.pid)]
    assert re.fullmatch(r"\(\d+ s ago\)", " ".join(cells[7:10])), row
    assert cells[10] == "0"


@pytest.mark.usefixtures("api_env")
async def test_workers_with_no_worker_says_how_to_start_one_and_exits_0() -> None:
    result = await ingest("workers")

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == NO_WORKER


@pytest.mark.usefixtures("api_env", "queue")
async def test_a_killed_worker_leaves_the_list_once_its_lease_lapses(
    settings: Settings, session_factory: Factory
) -> None:
    with workers() as started:
        proc = start_worker(settings)
        started.append(proc)
        await wait_for(lambda: worker_id_of(session_factory, proc.pid), "a heartbeat")
        assert str(proc.pid) in (await ingest("workers")).stdout
        proc.kill()
        proc.wait(10)

        async def says_none() -> bool:
            return (await ingest("workers")).stdout.strip() == NO_WORKER

        await wait_for(says_none, "the killed worker to leave the list")

    # Its row is still there (nobody ran the reconciler): the heartbeat's age decides.
    assert await worker_id_of(session_factory, proc.pid) is not None


async def test_get_workers_leaves_out_a_worker_whose_heartbeat_lapsed(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_factory: Factory,
    settings: Settings,
) -> None:
    await leases.beat(session_factory, "host-a:1:aaa", settings.lease_seconds)
    await leases.beat(session_factory, "host-b:2:bbb", settings.lease_seconds)
    await sql(
        session_factory,
        "UPDATE workers SET last_beat = now() - make_interval(secs => :age) WHERE id = :id",
        age=settings.lease_seconds + 1,
        id="host-b:2:bbb",
    )

    response = await client.get("/api/v1/ingest/workers", headers=admin_headers)

    assert response.status_code == 200, response.text
    assert [w["id"] for w in response.json()["data"]] == ["host-a:1:aaa"]
    assert len(await fetch(session_factory, "SELECT id FROM workers")) == 2
