"""A real API process for the CLI's tests, and the environments that point the CLI at it.

The fixtures are imported by the modules that use them (tests/runs and tests/auth too, whose
conftests cannot reach here): one API process per module, on the tests' database, Redis and
storage, so runs it starts are drained by the tests' workers.
"""

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.core.config import Settings, get_settings
from tests.conftest import MakeToken

ROOT = Path(__file__).resolve().parents[2]
START_SECONDS = 60


@dataclass(frozen=True)
class Api:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def outside_env(**variables: str) -> dict[str, str]:
    """This process's environment without any INGEST_* variable, plus ``variables``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("INGEST_")}
    env.update(variables)
    return env


def server_env(settings: Settings) -> dict[str, str]:
    return outside_env(
        INGEST_DATABASE_URL=settings.require_database_url(),
        INGEST_REDIS_URL=settings.require_redis_url(),
        INGEST_QUEUE_NAME=settings.queue_name,
        INGEST_STORAGE_DIR=str(settings.storage_dir),
        INGEST_LOG_LEVEL="WARNING",
    )


@contextmanager
def serving(env: dict[str, str], log: Path) -> Iterator[Api]:
    """`ingest serve` with `env` on a free loopback port, ready (``/readyz`` 200) when
    yielded, stopped afterwards."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    api = Api(f"http://127.0.0.1:{port}", process, log)
    try:
        _wait_until_ready(api)
        yield api
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def api_server(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """`ingest serve` on the tests' database, Redis and storage, for a module."""
    with serving(server_env(settings), tmp_path_factory.mktemp("api") / "api.log") as api:
        yield api


def _wait_until_ready(api: Api) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if api.process.poll() is not None:
            pytest.fail(f"the API exited ({api.process.returncode}):\n{api.log.read_text()}")
        try:
            if httpx.get(f"{api.url}/readyz", timeout=5, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"the API was not ready within {START_SECONDS} s:\n{api.log.read_text()}")


@pytest.fixture
async def api_env(
    api_server: Api, make_token: MakeToken, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> str:
    """The CLI in this process pointed at the API by INGEST_URL + INGEST_TOKEN (an admin
    token, returned), with no database or Redis URL and a config directory of its own."""
    token = await make_token(email="ops@example.test")
    for name in [name for name in os.environ if name.startswith("INGEST_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("INGEST_URL", api_server.url)
    monkeypatch.setenv("INGEST_TOKEN", token)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("COLUMNS", "200")  # wide enough that rich never folds a table cell
    get_settings.cache_clear()
    return token


@dataclass(frozen=True)
class Done:
    code: int
    stdout: str
    stderr: str

    def error_line(self) -> str:
        """A failed command's one line on stderr (and no traceback)."""
        assert self.code != 0, self.stdout
        assert "Traceback" not in self.stderr, self.stderr
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1, self.stderr
        return lines[0]


async def ingest_process(
    *args: str, env: dict[str, str], input: str = "", deadline_s: float = 60
) -> Done:
    """``python -m app.cli ARGS`` as a shell runs it, off the test's event loop."""

    def run() -> Done:
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            cwd=ROOT,
            env={"COLUMNS": "200", **env},
            input=input,  # stdin is this text (empty by default), never the terminal
            capture_output=True,
            text=True,
            timeout=deadline_s,
        )
        return Done(done.returncode, done.stdout, done.stderr)

    return await asyncio.to_thread(run)
