"""``ingest token create|list|revoke`` against the real test database."""

import asyncio
from collections.abc import AsyncIterator, Iterator

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url
from typer.testing import CliRunner, Result

from app.cli import cli
from app.core.config import get_settings
from tests.auth.conftest import GetToken, MakeSource
from tests.auth.helpers import bearer
from tests.conftest import TEST_DB_NAME

IMPORTERS = "/api/v1/ingest/importers"
TOKENS = "/api/v1/ingest/tokens"


@pytest.fixture
def cli_database(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("INGEST_DATABASE_URL", database_url)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


async def ingest(*args: str) -> Result:
    # The commands run asyncio.run() themselves: keep them off the test's event loop.
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args))


def one_error_line(result: Result) -> str:
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.usefixtures("cli_database")
async def test_token_create_prints_a_working_token(
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
    assert plaintext.startswith("ingest_") and "\n" not in plaintext
    assert "shown only this once" in result.stderr

    stored = await get_token(plaintext)
    assert stored.name == "n8n" and stored.source_id == source
    assert sorted(stored.abilities) == ["ingest:create", "ingest:view"]
    assert stored.expires_at is not None

    assert (await client.get(IMPORTERS, headers=bearer(plaintext))).status_code == 200
    assert (await client.get(TOKENS, headers=bearer(plaintext))).status_code == 403


@pytest.mark.usefixtures("cli_database")
async def test_token_create_defaults_to_an_admin_user(client: httpx.AsyncClient) -> None:
    result = await ingest("token", "create", "--name", "ops", "--ability", "ingest:admin")
    assert result.exit_code == 0, result.output
    listed = (await client.get(TOKENS, headers=bearer(result.stdout.strip()))).json()["data"]
    assert (listed[0]["user"]["email"], listed[0]["user"]["role"]) == ("admin@localhost", "admin")


@pytest.mark.usefixtures("cli_database")
async def test_token_list_shows_tokens_but_not_their_secrets() -> None:
    created = await ingest("token", "create", "--name", "lister", "--ability", "ingest:view")
    plaintext = created.stdout.strip()

    result = await ingest("token", "list")
    assert result.exit_code == 0, result.output
    header, row = result.stdout.strip().splitlines()
    assert header.split()[:4] == ["ID", "NAME", "PREFIX", "ABILITIES"]
    assert row.split()[:4] == ["1", "lister", plaintext[:13], "ingest:view"]
    assert "active" in row
    assert plaintext not in result.output


@pytest.mark.usefixtures("cli_database")
async def test_token_revoke_stops_the_token(client: httpx.AsyncClient) -> None:
    plaintext = (
        await ingest("token", "create", "--name", "gone", "--ability", "ingest:view")
    ).stdout.strip()
    assert (await client.get(IMPORTERS, headers=bearer(plaintext))).status_code == 200

    result = await ingest("token", "revoke", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "token 1 revoked"
    assert (await client.get(IMPORTERS, headers=bearer(plaintext))).status_code == 401
    assert "revoked" in (await ingest("token", "list")).stdout

    again = await ingest("token", "revoke", "1")
    assert again.exit_code == 0 and again.stdout.strip() == "token 1 was already revoked"


@pytest.mark.usefixtures("cli_database")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "bad"], "at least one --ability is required"),
        (["--ability", "ingest:view"], "--name is required"),
        (["--name", " ", "--ability", "ingest:view"], "--name is required"),
        (["--name", "bad", "--ability", "ingest:view", "--user", "bob"], "must be an email"),
        (
            ["--name", "bad", "--ability", "ingest:everything"],
            "Unknown abilities: ingest:everything",
        ),
        (
            ["--name", "bad", "--ability", "ingest:view", "--role", "boss", "--user", "b@x.test"],
            "Unknown role",
        ),
        (["--name", "bad", "--ability", "ingest:view", "--role", "viewer"], "give --user too"),
        (
            ["--name", "bad", "--ability", "ingest:view", "--expires-in", "soon"],
            "invalid duration 'soon'",
        ),
        (
            ["--name", "bad", "--ability", "ingest:view", "--expires-in", "0d"],
            "invalid duration '0d'",
        ),
        (
            ["--name", "bad", "--ability", "ingest:view", "--source", "424242"],
            "source id is invalid",
        ),
    ],
)
async def test_token_create_with_bad_input_fails_with_one_line(
    args: list[str], message: str
) -> None:
    result = await ingest("token", "create", *args)
    line = one_error_line(result)
    assert line.startswith("error: ") and message in line
    assert (await ingest("token", "list")).stdout.strip() == "no tokens"


@pytest.mark.usefixtures("cli_database")
async def test_token_revoke_of_an_unknown_token_fails_with_one_line() -> None:
    assert one_error_line(await ingest("token", "revoke", "999999")) == (
        "error: Token 999999 not found."
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://postgres:s3cret@127.0.0.1:1/ingest", "cannot reach the database at"),
        ("", "INGEST_DATABASE_URL is not set"),
    ],
)
@pytest.mark.parametrize(
    "command", [["list"], ["revoke", "1"], ["create", "--name", "n", "--ability", "ingest:view"]]
)
async def test_token_commands_without_a_database_fail_with_one_line(
    monkeypatch: pytest.MonkeyPatch, url: str, message: str, command: list[str]
) -> None:
    monkeypatch.setenv("INGEST_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        line = one_error_line(await ingest("token", *command))
    finally:
        get_settings.cache_clear()
    assert message in line
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


async def test_token_commands_on_an_unmigrated_database_say_so(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INGEST_DATABASE_URL", empty_database_url)
    get_settings.cache_clear()
    try:
        line = one_error_line(await ingest("token", "list"))
    finally:
        get_settings.cache_clear()
    assert "is not migrated: run `ingest migrate`" in line
