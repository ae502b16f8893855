"""``ingest token create|list|revoke`` over a real API process, and the bootstrap ``token
create`` straight into the test database when no API is configured."""

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typer.testing import CliRunner, Result

from app.auth.models import Token
from app.cli import cli
from app.core.config import get_settings
from tests.auth.conftest import GetToken, MakeSource
from tests.auth.helpers import bearer
from tests.cli.harness import api_env, api_server  # noqa: F401  (fixtures)
from tests.conftest import TEST_DB_NAME, MakeToken

IMPORTERS = "/api/v1/ingest/importers"
TOKENS = "/api/v1/ingest/tokens"


@pytest.fixture
def no_api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No INGEST_* variable at all and an empty config directory: no API is configured."""
    for name in [name for name in os.environ if name.startswith("INGEST_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def bootstrap(no_api: None, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No API configured, and INGEST_DATABASE_URL set: `token create` writes to the database."""
    monkeypatch.setenv("INGEST_DATABASE_URL", database_url)
    get_settings.cache_clear()


@pytest.fixture(params=["api", "bootstrap"])
def either_way(request: pytest.FixtureRequest) -> str:
    """`token create` over the API, then straight into the database: the same answers."""
    request.getfixturevalue("api_env" if request.param == "api" else "bootstrap")
    return str(request.param)


async def ingest(*args: str) -> Result:
    # Off the test's event loop: the bootstrap runs asyncio.run() itself.
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args))


def one_error_line(result: Result) -> str:
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def rows(result: Result) -> list[list[str]]:
    return [line.split() for line in result.stdout.strip().splitlines()[1:]]


# --- over the API ------------------------------------------------------------------------------


@pytest.mark.usefixtures("api_env")
async def test_token_create_prints_a_working_token(
    client: httpx.AsyncClient, get_token: GetToken, make_source: MakeSource
) -> None:
    source = await make_source("feed")
    result = await ingest(
        *("token", "create", "--name", "n8n", "--ability", "ingest:view"),
        *("--ability", "ingest:create", "--user", "bot@example.test", "--role", "service"),
        *("--source", str(source), "--expires-in", "12h"),
    )
    assert result.exit_code == 0, result.output
    plaintext = result.stdout.strip()
    assert plaintext.startswith("ingest_") and "\n" not in plaintext
    assert "created for bot@example.test" in result.stderr
    assert "shown only this once" in result.stderr

    stored = await get_token(plaintext)
    assert stored.name == "n8n" and stored.source_id == source
    assert sorted(stored.abilities) == ["ingest:create", "ingest:view"]
    assert stored.expires_at is not None
    # Hours pass through the API's expires_at.
    assert abs(stored.expires_at - (datetime.now(UTC) + timedelta(hours=12))) < timedelta(minutes=1)

    assert (await client.get(IMPORTERS, headers=bearer(plaintext))).status_code == 200
    assert (await client.get(TOKENS, headers=bearer(plaintext))).status_code == 403


@pytest.mark.usefixtures("api_env")
async def test_token_create_over_the_api_is_for_the_caller_by_default(
    get_token: GetToken,
) -> None:
    result = await ingest("token", "create", "--name", "mine", "--ability", "ingest:view")
    assert result.exit_code == 0, result.output
    stored = await get_token(result.stdout.strip())
    assert "created for ops@example.test (ingest:view)" in result.stderr  # api_env's user
    assert stored.name == "mine"


@pytest.mark.usefixtures("api_env")
async def test_token_create_goes_through_the_api_even_with_a_database_url_set(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INGEST_DATABASE_URL", database_url)
    get_settings.cache_clear()
    result = await ingest("token", "create", "--name", "ops", "--ability", "ingest:view")
    assert result.exit_code == 0, result.output
    # The caller's user, not the bootstrap's admin@localhost.
    assert "created for ops@example.test" in result.stderr


@pytest.mark.usefixtures("api_env")
async def test_token_list_shows_tokens_but_not_their_secrets() -> None:
    created = await ingest("token", "create", "--name", "lister", "--ability", "ingest:view")
    plaintext = created.stdout.strip()

    result = await ingest("token", "list")
    assert result.exit_code == 0, result.output
    header = result.stdout.strip().splitlines()[0]
    assert header.split()[:4] == ["ID", "NAME", "PREFIX", "ABILITIES"]
    newest, caller = rows(result)
    assert newest[:4] == ["2", "lister", plaintext[:13], "ingest:view"]
    assert newest[4:8] == ["ops@example.test", "admin", "-", "active"]
    assert caller[:2] == ["1", "test"]  # api_env's own token, used just now
    assert caller[-2:] != ["-", "-"]
    assert plaintext not in result.output


@pytest.mark.usefixtures("api_env")
async def test_token_revoke_stops_the_token(client: httpx.AsyncClient) -> None:
    plaintext = (
        await ingest("token", "create", "--name", "gone", "--ability", "ingest:view")
    ).stdout.strip()
    assert (await client.get(IMPORTERS, headers=bearer(plaintext))).status_code == 200

    result = await ingest("token", "revoke", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "token 2 revoked"
    assert (await client.get(IMPORTERS, headers=bearer(plaintext))).status_code == 401
    assert rows(await ingest("token", "list"))[0][7] == "revoked"

    again = await ingest("token", "revoke", "2")  # harmless, as the API says
    assert again.exit_code == 0 and again.stdout.strip() == "token 2 revoked"


@pytest.mark.usefixtures("api_env")
async def test_token_revoke_of_an_unknown_token_fails_with_one_line() -> None:
    result = await ingest("token", "revoke", "999999")
    assert one_error_line(result) == "error: Token 999999 not found."
    assert result.exit_code == 1


@pytest.mark.usefixtures("api_env")
async def test_token_commands_need_an_admin_token(
    make_token: MakeToken, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INGEST_TOKEN", await make_token("viewer", ["ingest:view"]))
    create = ["create", "--name", "n", "--ability", "ingest:view"]
    for command in (["list"], ["revoke", "1"], create):
        result = await ingest("token", *command)
        assert one_error_line(result) == "error: This action requires the ingest:admin ability."
        assert result.exit_code == 1


# --- either way: the same request schema answers -----------------------------------------------


@pytest.mark.usefixtures("either_way")
@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["--name", "bad"], "at least one --ability is required", 2),
        (["--ability", "ingest:view"], "--name is required", 2),
        (["--name", " ", "--ability", "ingest:view"], "--name is required", 2),
        (["--name", "bad", "--ability", "ingest:view", "--role", "viewer"], "give --user too", 2),
        (
            ["--name", "bad", "--ability", "ingest:view", "--expires-in", "soon"],
            "invalid duration 'soon'",
            2,
        ),
        (
            ["--name", "bad", "--ability", "ingest:view", "--expires-in", "0d"],
            "invalid duration '0d'",
            2,
        ),
        (
            ["--name", "bad", "--ability", "ingest:view", "--user", "bob"],
            "The user email must be a valid email address.",
            1,
        ),
        (
            ["--name", "bad", "--ability", "ingest:everything"],
            "The selected ability 'ingest:everything' is invalid",
            1,
        ),
        (
            ["--name", "bad", "--ability", "ingest:view", "--role", "boss", "--user", "b@x.test"],
            "The selected role is invalid",
            1,
        ),
        (
            ["--name", "bad", "--ability", "ingest:view", "--source", "424242"],
            "The selected source id is invalid.",
            1,
        ),
    ],
)
async def test_token_create_with_bad_input_fails_with_one_line(
    args: list[str], message: str, code: int, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    result = await ingest("token", "create", *args)
    line = one_error_line(result)
    assert line.startswith("error: ") and message in line
    assert result.exit_code == code
    async with session_factory() as session:
        assert await session.scalar(select(Token).where(Token.name == "bad")) is None


# --- the bootstrap: no API configured, INGEST_DATABASE_URL set ---------------------------------


@pytest.mark.usefixtures("bootstrap")
async def test_bootstrap_token_create_writes_straight_to_the_database(
    client: httpx.AsyncClient, get_token: GetToken, make_source: MakeSource
) -> None:
    source = await make_source("feed")
    result = await ingest(
        *("token", "create", "--name", "n8n", "--ability", "ingest:view"),
        *("--ability", "ingest:create", "--user", "bot@example.test", "--role", "service"),
        *("--source", str(source), "--expires-in", "30d"),
    )
    assert result.exit_code == 0, result.output
    plaintext = result.stdout.strip()
    assert plaintext.startswith("ingest_") and "shown only this once" in result.stderr
    stored = await get_token(plaintext)
    assert stored.name == "n8n" and stored.source_id == source
    assert sorted(stored.abilities) == ["ingest:create", "ingest:view"]
    assert stored.expires_at is not None
    assert (await client.get(IMPORTERS, headers=bearer(plaintext))).status_code == 200


@pytest.mark.usefixtures("bootstrap")
async def test_bootstrap_token_create_defaults_to_an_admin_user(client: httpx.AsyncClient) -> None:
    result = await ingest("token", "create", "--name", "ops", "--ability", "ingest:admin")
    assert result.exit_code == 0, result.output
    listed = (await client.get(TOKENS, headers=bearer(result.stdout.strip()))).json()["data"]
    assert (listed[0]["user"]["email"], listed[0]["user"]["role"]) == ("admin@localhost", "admin")


@pytest.mark.usefixtures("bootstrap")
async def test_only_token_create_bootstraps_list_and_revoke_need_the_api() -> None:
    for command in (["list"], ["revoke", "1"]):
        result = await ingest("token", *command)
        assert "error: no API configured: set INGEST_URL and INGEST_TOKEN" in one_error_line(result)
        assert result.exit_code == 2


@pytest.mark.usefixtures("no_api")
async def test_token_create_with_neither_api_nor_database_says_how_to_get_either() -> None:
    result = await ingest("token", "create", "--name", "n", "--ability", "ingest:view")
    line = one_error_line(result)
    assert "no API configured" in line and "`ingest login URL`" in line
    assert "set INGEST_DATABASE_URL to create the first token" in line
    assert result.exit_code == 2


@pytest.mark.usefixtures("no_api")
async def test_bootstrap_without_a_reachable_database_fails_with_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INGEST_DATABASE_URL", "postgresql://postgres:s3cret@127.0.0.1:1/ingest")
    get_settings.cache_clear()
    result = await ingest("token", "create", "--name", "n", "--ability", "ingest:view")
    line = one_error_line(result)
    assert "cannot reach the database at" in line
    assert "s3cret" not in line


@pytest.fixture
async def empty_database_url(database_url: str) -> AsyncIterator[str]:
    """A database with no tables, as before ``ingest migrate``."""
    name = f"{TEST_DB_NAME}_empty"
    server = make_url(database_url).set(drivername="postgresql")
    conn = await asyncpg.connect(server.render_as_string(hide_password=False))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
        yield server.set(database=name).render_as_string(hide_password=False)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.mark.usefixtures("no_api")
async def test_bootstrap_on_an_unmigrated_database_says_so(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INGEST_DATABASE_URL", empty_database_url)
    get_settings.cache_clear()
    result = await ingest("token", "create", "--name", "n", "--ability", "ingest:view")
    assert "is not migrated: run `ingest migrate`" in one_error_line(result)
