"""`ingest dev` run as a user runs it: a real process tree with embedded PostgreSQL and Redis.

Every test starts its own `ingest dev` with no server URL set, so it starts embedded servers
with their data in a tmp dir; Ctrl-C and the hang-up come from a real pseudo-terminal. Each
process of the tree is found by a marker in its environment, which every descendant inherits,
even one that left the tree (the postmaster detaches from pg_ctl, and an orphan is
re-parented), and by descent from those.
"""

import contextlib
import os
import pty
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
import psutil
import pytest

MARK = "INGEST_TEST_DEV_TREE"
# Cold imports, initdb and the API's start-up on a loaded machine.
START_SECONDS = 120
# What the issue promises for a stop.
STOP_SECONDS = 10
BANNER = "Ingest is up"


class Terminal:
    """A pseudo-terminal for `ingest dev` to run in, as in a terminal window; what it shows
    is copied to a file."""

    def __init__(self, output: Path) -> None:
        self.master, self.slave = pty.openpty()
        self._closing = threading.Event()
        self._copier = threading.Thread(target=self._copy, args=(output,), daemon=True)
        self._copier.start()

    def _copy(self, output: Path) -> None:
        with output.open("ab") as sink:
            while not self._closing.is_set():
                if not select.select([self.master], [], [], 0.1)[0]:
                    continue
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # EIO: no process has the terminal open any more
                    return
                sink.write(data)
                sink.flush()

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def close(self) -> None:
        """Close the window: the kernel hangs the terminal up (SIGHUP to its session), and
        writing to it fails from then on."""
        if not self._closing.is_set():
            self._closing.set()
            self._copier.join()
            os.close(self.master)


# Run in a new session whose controlling terminal is stdin, as a terminal emulator runs its
# shell: the terminal's Ctrl-C and hang-up then reach this process.
IN_TERMINAL = (
    "import fcntl, os, sys, termios; os.setsid(); fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


@dataclass
class Dev:
    process: subprocess.Popen[bytes]
    output: Path
    port: int
    mark: str
    terminal: Terminal | None

    seen: dict[int, psutil.Process] = field(default_factory=dict)

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def tree(self) -> list[psutil.Process]:
        """The marked processes and all their descendants (redis-server and the postmaster's
        children write their process titles over their environment)."""
        for proc in _processes_marked(self.mark):
            self.seen[proc.pid] = proc
            with contextlib.suppress(psutil.NoSuchProcess):
                self.seen.update((child.pid, child) for child in proc.children(recursive=True))
        return [proc for proc in self.seen.values() if _alive(proc)]


class StartDev(Protocol):
    def __call__(self, port: int, in_terminal: bool = False) -> Dev: ...


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _processes_marked(mark: str) -> list[psutil.Process]:
    """Every live process whose environment carries ``mark``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARK) == mark and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def start_dev(tmp_path: Path) -> Iterator[StartDev]:
    started: list[Dev] = []
    # Not under tmp_path: as root the embedded PostgreSQL runs as its own user, and every new
    # pytest session takes the group and other bits off pytest-of-root again.
    data_dir = Path(tempfile.mkdtemp(prefix="ingest-test-dev-"))

    def start(port: int, in_terminal: bool = False) -> Dev:
        mark = uuid.uuid4().hex
        # No INGEST_* from the outside: no server URL, so the embedded servers start.
        env = {key: value for key, value in os.environ.items() if not key.startswith("INGEST_")}
        env[MARK] = mark
        env["XDG_CONFIG_HOME"] = str(tmp_path / "config")  # its CLI profile, not the user's
        output = tmp_path / f"dev-{mark}.log"
        output.touch()
        args = ["-m", "app.cli", "dev", "--port", str(port), "--data-dir", str(data_dir)]
        terminal = None
        if in_terminal:
            terminal = Terminal(output)
            process = subprocess.Popen(
                [sys.executable, "-c", IN_TERMINAL, *args],
                cwd=tmp_path,  # no .env of the checkout
                env=env,
                stdin=terminal.slave,
                stdout=terminal.slave,
                stderr=terminal.slave,
            )
            os.close(terminal.slave)
        else:
            with output.open("ab") as sink:
                process = subprocess.Popen(
                    [sys.executable, *args],
                    cwd=tmp_path,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a process group of its own, as in a terminal
                )
        dev = Dev(process, output, port, mark, terminal)
        started.append(dev)
        return dev

    yield start
    for dev in started:
        # A failed test must not leave servers behind for the rest of the suite. Found
        # first: closing the terminal may orphan some, and an orphan is no descendant.
        tree = dev.tree()
        if dev.terminal:
            dev.terminal.close()
        for proc in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        dev.process.kill()
        dev.process.wait()
    shutil.rmtree(data_dir, ignore_errors=True)


def _still_running(tree: list[psutil.Process], mark: str) -> list[str]:
    left = {proc.pid: proc for proc in tree if _alive(proc)}
    left.update((proc.pid, proc) for proc in _processes_marked(mark))
    names = []
    for pid, proc in left.items():
        with contextlib.suppress(psutil.NoSuchProcess):
            names.append(f"{pid} {proc.name()}")
    return names


def _wait_for_banner(dev: Dev) -> None:
    deadline = time.monotonic() + START_SECONDS
    while BANNER not in dev.text():
        if dev.process.poll() is not None:
            pytest.fail(f"ingest dev exited ({dev.process.returncode}):\n{dev.text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no banner within {START_SECONDS} s:\n{dev.text()}")
        time.sleep(0.1)


def _check_dev_profile(dev: Dev, use_it: bool) -> None:
    """`ingest dev` keeps its URL and token in a private CLI profile, the default one, and says
    where; with it, an operator command in another shell needs no variable."""
    config_home = dev.output.parent / "config"
    path = config_home / "ingest" / "config.toml"
    token = re.search(r"dev admin token: (\S+)", dev.text())
    assert token, dev.text()
    assert f"CLI profile 'dev' (the default) in {path}" in dev.text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    saved = tomllib.loads(path.read_text())
    assert saved["default"] == "dev"
    assert saved["profiles"]["dev"] == {
        "url": f"http://127.0.0.1:{dev.port}",
        "token": token.group(1),
    }
    if use_it:
        env = {key: value for key, value in os.environ.items() if not key.startswith("INGEST_")}
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", "importers"],
            env={**env, "XDG_CONFIG_HOME": str(config_home)},
            cwd=dev.output.parent,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "user-importer" in done.stdout  # examples/importers, loaded by `ingest dev`


def _close_terminal(dev: Dev) -> None:
    assert dev.terminal
    dev.terminal.close()


def _ctrl_c(dev: Dev) -> None:
    assert dev.terminal
    dev.terminal.type(b"\x03")


def _sigterm(dev: Dev) -> None:
    dev.process.send_signal(signal.SIGTERM)


@pytest.mark.parametrize(
    ("in_terminal", "stop"),
    [
        pytest.param(True, _close_terminal, id="SIGHUP-closed-terminal"),
        pytest.param(True, _ctrl_c, id="SIGINT-ctrl-c"),
        pytest.param(False, _sigterm, id="SIGTERM"),
    ],
)
def test_dev_is_ready_at_its_banner_and_a_stop_signal_ends_every_process_it_started(
    start_dev: StartDev, in_terminal: bool, stop: Callable[[Dev], None]
) -> None:
    dev = start_dev(_free_port(), in_terminal=in_terminal)
    _wait_for_banner(dev)
    assert httpx.get(f"http://127.0.0.1:{dev.port}/readyz", timeout=5).status_code == 200
    _check_dev_profile(dev, use_it=not in_terminal)

    tree = dev.tree()
    names = [proc.name() for proc in tree]
    assert names.count("postgres") > 1, names  # the postmaster and its children
    assert "redis-server" in names, names
    assert dev.process.pid in [proc.pid for proc in tree]
    assert len(psutil.Process(dev.process.pid).children()) >= 3  # API, worker, redis-server

    stop(dev)

    deadline = time.monotonic() + STOP_SECONDS
    code = dev.process.wait(STOP_SECONDS)
    while left := _still_running(tree, dev.mark):
        assert time.monotonic() < deadline, f"still running: {left}\n{dev.text()}"
        time.sleep(0.1)
    assert code == 0, dev.text()


def test_dev_on_a_taken_port_says_so_and_exits_before_starting_anything(
    start_dev: StartDev,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        dev = start_dev(port)
        code = dev.process.wait(START_SECONDS)

        assert code != 0
        output = dev.text()
        assert f"Port {port} on 127.0.0.1 is already in use" in output
        assert "--port" in output
        assert BANNER not in output
        assert "embedded" not in output
        assert _processes_marked(dev.mark) == []
