"""The operator commands as a shell runs them: `python -m app.cli ...` processes talking to a
real API process (and a real worker process), configured by `ingest login` profiles or by
INGEST_URL + INGEST_TOKEN, with the exit codes scripts rely on."""

import asyncio
import os
import pty
import select
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from app.core.config import Settings
from tests.cli.harness import ROOT, Api, free_port, ingest_process, outside_env
from tests.conftest import CreateImporter, MakeToken
from tests.factories import USER_FIELDS
from tests.worker.processes import start_worker, workers

DEFECTS_CSV = (
    "Email,Name,Age\n"
    "ada@example.com,Ada,36\n"
    ",Bob,30\n"  # no email
    "eve@example.com,E,x\n"  # short name, age not an integer
)


def config_of(home: Path) -> Path:
    return home / "ingest" / "config.toml"


def write_profiles(home: Path, default: str, **profiles: tuple[str, str]) -> None:
    """A profile file as a person might write it by hand."""
    lines = [f'default = "{default}"']
    for name, (url, token) in profiles.items():
        lines += [f"[profiles.{name}]", f'url = "{url}"', f'token = "{token}"']
    config_of(home).parent.mkdir(parents=True, exist_ok=True)
    config_of(home).write_text("\n".join(lines) + "\n")


def dead_url() -> str:
    """A loopback port nothing listens on."""
    return f"http://127.0.0.1:{free_port()}"


# --- login, profiles, logout -------------------------------------------------------------------


async def test_login_writes_a_private_profile_that_later_commands_use(
    api_server: Api, make_token: MakeToken, tmp_path: Path
) -> None:
    token = await make_token()
    env = outside_env(XDG_CONFIG_HOME=str(tmp_path))

    login = await ingest_process("login", api_server.url, env=env, input=f"{token}\n")

    assert login.code == 0, login.stderr
    path = config_of(tmp_path)
    assert login.stdout.strip() == (
        f"logged in to {api_server.url}: profile 'default' (the default) in {path}"
    )
    assert token not in login.stdout + login.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    saved = tomllib.loads(path.read_text())
    assert saved["default"] == "default"
    assert saved["profiles"]["default"] == {"url": api_server.url, "token": token}

    # No INGEST_* variable: the profile says where and who.
    importers = await ingest_process("importers", env=env)
    assert (importers.code, importers.stdout.strip()) == (0, "no importers")

    logout = await ingest_process("logout", env=env)
    assert logout.code == 0 and "profile 'default' removed" in logout.stdout
    assert not path.exists()
    after = await ingest_process("runs", env=env)
    assert after.code == 2 and "no API configured" in after.error_line()


# Run in a new session whose controlling terminal is stdin, as a terminal emulator runs its
# shell (tests/core/test_dev.py does the same).
IN_TERMINAL = (
    "import fcntl, os, sys, termios; os.setsid(); fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


def login_in_a_terminal(url: str, token: str, home: Path) -> tuple[int, bytes]:
    """`ingest login URL` in a pseudo-terminal, typing the token at its prompt: the exit code
    and everything the terminal showed."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-c", IN_TERMINAL, "-m", "app.cli", "login", url],
        cwd=ROOT,
        env=outside_env(XDG_CONFIG_HOME=str(home)),
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    shown = b""
    typed = False
    try:
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            if select.select([master], [], [], 0.1)[0]:
                try:
                    shown += os.read(master, 4096)
                except OSError:  # EIO: the process closed the terminal
                    break
            # click prints "Token:", then getpass turns echo off, flushing unread input, and
            # writes its " ": typed before that, the token would be thrown away.
            if not typed and b"Token: " in shown:
                os.write(master, f"{token}\n".encode())
                typed = True
        return process.wait(30), shown
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)


async def test_login_asks_for_the_token_without_echoing_it(
    api_server: Api, make_token: MakeToken, tmp_path: Path
) -> None:
    token = await make_token()
    code, shown = await asyncio.to_thread(login_in_a_terminal, api_server.url, token, tmp_path)
    assert code == 0, shown.decode(errors="replace")
    assert b"Token:" in shown and b"logged in to" in shown
    assert token.encode() not in shown  # the terminal never echoed it
    assert tomllib.loads(config_of(tmp_path).read_text())["profiles"]["default"]["token"] == token


async def test_login_with_a_token_the_api_refuses_writes_nothing(
    api_server: Api, tmp_path: Path
) -> None:
    env = outside_env(XDG_CONFIG_HOME=str(tmp_path))
    done = await ingest_process("login", api_server.url, "--token", "ingest_nope", env=env)
    assert done.error_line() == "error: Unauthenticated. (the API refused this token)"
    assert done.code == 1
    assert not config_of(tmp_path).exists()


async def test_profile_option_and_ingest_profile_choose_the_profile(
    api_server: Api, make_token: MakeToken, tmp_path: Path
) -> None:
    write_profiles(
        tmp_path, "gone", gone=(dead_url(), "ingest_old"), live=(api_server.url, await make_token())
    )
    env = outside_env(XDG_CONFIG_HOME=str(tmp_path))

    assert (await ingest_process("runs", env=env)).code == 3  # the default's server is down
    chosen = await ingest_process("runs", "--profile", "live", env=env)
    assert (chosen.code, chosen.stdout.strip()) == (0, "no runs")
    by_env = await ingest_process("runs", env={**env, "INGEST_PROFILE": "live"})
    assert (by_env.code, by_env.stdout.strip()) == (0, "no runs")

    ghost = await ingest_process("runs", "--profile", "ghost", env=env)
    assert ghost.code == 2
    assert ghost.error_line().startswith("error: no profile 'ghost' in ")
    assert "(profiles: gone, live)" in ghost.error_line()


async def test_environment_variables_win_over_the_profile(
    api_server: Api, make_token: MakeToken, tmp_path: Path
) -> None:
    token = await make_token()
    write_profiles(tmp_path, "gone", gone=(dead_url(), "ingest_old"))
    env = outside_env(XDG_CONFIG_HOME=str(tmp_path))

    both = await ingest_process(
        "runs", env={**env, "INGEST_URL": api_server.url, "INGEST_TOKEN": token}
    )
    assert (both.code, both.stdout.strip()) == (0, "no runs")

    # The profile's token is never sent to another server than its own.
    url_only = await ingest_process("runs", env={**env, "INGEST_URL": api_server.url})
    assert url_only.code == 2
    assert url_only.error_line() == (
        f"error: INGEST_URL is set but not INGEST_TOKEN, the token for {api_server.url}"
    )


# --- what scripts see --------------------------------------------------------------------------


async def test_no_configuration_exits_2_with_the_way_to_configure(tmp_path: Path) -> None:
    done = await ingest_process("status", "3", env=outside_env(XDG_CONFIG_HOME=str(tmp_path)))
    assert done.code == 2
    line = done.error_line()
    assert line.startswith("error: no API configured: set INGEST_URL and INGEST_TOKEN")
    assert "`ingest login URL`" in line and "`make run`" in line


async def test_nothing_listening_exits_3(tmp_path: Path) -> None:
    url = dead_url()
    env = outside_env(XDG_CONFIG_HOME=str(tmp_path), INGEST_URL=url, INGEST_TOKEN="ingest_x")
    done = await ingest_process("status", "3", env=env)
    assert done.code == 3
    assert done.error_line() == (
        f"error: cannot reach the API at {url}: connection refused "
        "(is `ingest dev` or `make run` running?)"
    )


async def test_a_token_the_api_refuses_is_one_line_and_exit_1(
    api_server: Api, tmp_path: Path
) -> None:
    env = outside_env(
        XDG_CONFIG_HOME=str(tmp_path), INGEST_URL=api_server.url, INGEST_TOKEN="ingest_nope"
    )
    done = await ingest_process("runs", env=env)
    assert done.code == 1
    assert done.error_line() == (
        "error: Unauthenticated. (the API refused the token in INGEST_TOKEN)"
    )


async def test_import_status_retry_and_cancel_with_a_real_worker(
    api_server: Api,
    make_token: MakeToken,
    create_importer: CreateImporter,
    settings: Settings,
    tmp_path: Path,
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    env = outside_env(
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        INGEST_URL=api_server.url,
        INGEST_TOKEN=await make_token(),
    )
    defects = tmp_path / "users.csv"
    defects.write_text(DEFECTS_CSV)
    no_key = tmp_path / "no-key.csv"
    no_key.write_text("Name,Age\nAda,36\n")

    with workers() as started:
        started.append(start_worker(settings))

        imported = await ingest_process("import", "users", str(defects), "--wait", env=env)
        assert imported.code == 0, imported.stderr
        run_id = int(imported.stdout.splitlines()[0])
        assert imported.stderr.strip() == f"run {run_id} started: users.csv into users"
        assert "status     completed_with_errors" in imported.stdout
        assert "3 of 3 rows processed: 1 successful, 2 failed, 0 skipped" in imported.stdout
        assert "summary    created 1, updated 0, unchanged 0, skipped 0, staged 0, deleted 0" in (
            imported.stdout
        )

        status = await ingest_process("status", str(run_id), env=env)
        assert status.code == 0 and "status     completed_with_errors" in status.stdout

        retried = await ingest_process("retry", str(run_id), env=env)
        assert retried.code == 0, retried.stderr
        retry_id = int(retried.stdout.strip())
        # `status` follows the retry until the worker has done it.
        followed = await ingest_process("status", str(retry_id), env=env)
        assert followed.code == 0, followed.stderr
        assert f"file       users.csv (retry of run {run_id})" in followed.stdout
        assert "2 of 2 rows processed: 0 successful, 2 failed" in followed.stdout

        failed = await ingest_process("import", "users", str(no_key), "--wait", env=env)
        failed_id = int(failed.stdout.splitlines()[0])
        assert failed.code == 1
        assert failed.stderr.strip().splitlines()[-1] == (
            f'error: run {failed_id} failed: Missing key column "Email"'
        )
        status = await ingest_process("status", str(failed_id), env=env)
        assert status.code == 1
        assert 'error      Missing key column "Email"' in status.stdout

        cancel = await ingest_process("cancel", str(run_id), env=env)
        assert cancel.code == 1
        assert cancel.error_line() == (
            f"error: Run {run_id} has already finished (completed_with_errors)."
        )


async def test_events_prints_a_runs_log_over_the_api(
    api_server: Api,
    make_token: MakeToken,
    create_importer: CreateImporter,
    settings: Settings,
    tmp_path: Path,
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    env = outside_env(
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        INGEST_URL=api_server.url,
        INGEST_TOKEN=await make_token(),
        COLUMNS="200",
    )
    defects = tmp_path / "users.csv"
    defects.write_text(DEFECTS_CSV)
    with workers() as started:
        started.append(start_worker(settings))
        imported = await ingest_process("import", "users", str(defects), "--wait", env=env)
    assert imported.code == 0, imported.stderr
    run_id = int(imported.stdout.splitlines()[0])

    done = await ingest_process("events", str(run_id), env=env)
    assert done.code == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].split() == ["ID", "AT", "TYPE", "SUMMARY"]
    rows = [line.split() for line in lines[1:]]  # id, date, time, type, summary...
    assert [row[3] for row in rows] == [
        "created",
        "split_started",
        "split_finished",
        "chunk_applied",
        "finalized",
    ]
    ids = [int(row[0]) for row in rows]
    assert ids == sorted(ids)
    text = done.stdout
    assert "upload run of users" in text
    assert f"3 rows in 1 chunk, {len(DEFECTS_CSV)} B" in text
    assert "chunk 0: 1 created, 2 failed in " in text
    assert "completed_with_errors: 1 created" in text

    only = await ingest_process(
        "events", str(run_id), "--type", "created", "--type", "finalized", env=env
    )
    assert only.code == 0, only.stderr
    assert [line.split()[3] for line in only.stdout.strip().splitlines()[1:]] == [
        "created",
        "finalized",
    ]
    after = await ingest_process("events", str(run_id), "--after", str(ids[-2]), env=env)
    assert after.code == 0 and len(after.stdout.strip().splitlines()) == 2  # header + finalized
    assert "finalized" in after.stdout

    unknown = await ingest_process("events", str(run_id), "--type", "exploded", env=env)
    assert unknown.code == 2
    assert unknown.error_line().startswith("error: --type must be one of created, ")
    missing = await ingest_process("events", "999999", env=env)
    assert missing.code == 1
    assert missing.error_line() == "error: Run 999999 not found."
