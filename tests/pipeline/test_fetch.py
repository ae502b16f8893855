"""URL sources' secrets: configured headers stay on the source's origin across redirects, and
credentials in the URL (userinfo, query) are sent to it."""

import base64
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from tests.conftest import CreateImporter
from tests.pipeline.test_intake import drain
from tests.pipeline.test_pipeline import USER_FIELDS, USERS_CSV, records, run_of

API = "/api/v1/ingest"
SECRET_HEADERS = {"Authorization": "Bearer s3cret", "X-Api-Key": "k3y"}


@dataclass
class Server:
    """A local HTTP server: ``redirects`` maps a path to a Location; every other path serves
    ``USERS_CSV``. ``seen`` records (path, headers) of every request, in order."""

    url: str = ""
    redirects: dict[str, str] = field(default_factory=dict)
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def headers_at(self, path: str) -> list[dict[str, str]]:
        return [headers for seen_path, headers in self.seen if seen_path == path]


def start(server: Server) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            location = server.redirects.get(self.path)
            if location is not None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = USERS_CSV.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/csv")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture
def servers() -> Iterator[tuple[Server, Server]]:
    """Two servers on 127.0.0.1, on different ports: two origins."""
    pair = (Server(), Server())
    running = [start(server) for server in pair]
    yield pair
    for httpd in running:
        httpd.shutdown()
        httpd.server_close()


async def trigger(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
) -> dict[str, Any]:
    """Trigger the ``users`` importer and let a worker run it; returns the ended run."""
    response = await client.post(f"{API}/trigger/users", headers=admin_headers)
    assert response.status_code == 202, response.text
    await drain(settings.model_copy(update={"allow_private_urls": True}))
    return await run_of(session_factory, response.json()["data"]["id"])


async def test_configured_headers_are_not_sent_to_a_redirect_on_another_origin(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    create_importer: CreateImporter,
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    servers: tuple[Server, Server],
) -> None:
    first, second = servers
    first.redirects["/users.csv"] = f"{second.url}/users.csv"
    source = {"type": "url", "url": f"{first.url}/users.csv", "headers": SECRET_HEADERS}

    await create_importer(key=["email"], fields=USER_FIELDS, format="csv", source=source)
    run = await trigger(client, admin_headers, settings, session_factory)

    assert run["status"] == "completed", run["error_message"]
    [at_first] = first.headers_at("/users.csv")
    assert at_first["authorization"] == "Bearer s3cret"
    assert at_first["x-api-key"] == "k3y"
    [at_second] = second.headers_at("/users.csv")
    assert "authorization" not in at_second
    assert "x-api-key" not in at_second
    assert len(await records(session_factory, "users")) == 3


async def test_configured_headers_follow_a_redirect_on_the_same_origin(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    create_importer: CreateImporter,
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    servers: tuple[Server, Server],
) -> None:
    first, _ = servers
    first.redirects["/latest"] = "/users.csv"
    source = {"type": "url", "url": f"{first.url}/latest", "headers": SECRET_HEADERS}

    await create_importer(key=["email"], fields=USER_FIELDS, format="csv", source=source)
    run = await trigger(client, admin_headers, settings, session_factory)

    assert run["status"] == "completed", run["error_message"]
    assert [h["authorization"] for h in first.headers_at("/latest")] == ["Bearer s3cret"]
    assert [h["authorization"] for h in first.headers_at("/users.csv")] == ["Bearer s3cret"]


async def test_headers_dropped_at_another_origin_stay_dropped_when_redirected_back(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    create_importer: CreateImporter,
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    servers: tuple[Server, Server],
) -> None:
    first, second = servers
    first.redirects["/start"] = f"{second.url}/bounce"
    second.redirects["/bounce"] = f"{first.url}/users.csv"
    source = {"type": "url", "url": f"{first.url}/start", "headers": SECRET_HEADERS}

    await create_importer(key=["email"], fields=USER_FIELDS, format="csv", source=source)
    run = await trigger(client, admin_headers, settings, session_factory)

    assert run["status"] == "completed", run["error_message"]
    assert [p for p, _ in first.seen] == ["/start", "/users.csv"]
    assert first.headers_at("/start")[0]["authorization"] == "Bearer s3cret"
    assert "authorization" not in second.headers_at("/bounce")[0]
    assert "authorization" not in first.headers_at("/users.csv")[0]


async def test_a_url_put_back_as_shown_still_fetches_with_the_stored_credentials(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    create_importer: CreateImporter,
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    servers: tuple[Server, Server],
) -> None:
    first, _ = servers
    host = first.url.removeprefix("http://")
    url = f"http://user:pa55word@{host}/users.csv?api_key=k3y&page=1"
    source = {"type": "url", "url": url, "headers": {"X-Api-Key": "h3ader"}}
    await create_importer(key=["email"], fields=USER_FIELDS, format="csv", source=source)

    shown = (await client.get(f"{API}/importers/users", headers=admin_headers)).json()["data"]
    definition = shown["definition"]
    assert definition["source"]["url"] == f"http://user:***@{host}/users.csv?api_key=***&page=1"
    # A client edits what it was shown (a non-secret parameter) and PUTs it back.
    definition["source"]["url"] = definition["source"]["url"].replace("page=1", "page=2")
    put = await client.put(f"{API}/importers/users", json=definition, headers=admin_headers)
    assert put.status_code == 200, put.text
    run = await trigger(client, admin_headers, settings, session_factory)

    assert run["status"] == "completed", run["error_message"]
    [(path, headers)] = first.seen
    assert path == "/users.csv?api_key=k3y&page=2"
    assert headers["authorization"] == "Basic " + base64.b64encode(b"user:pa55word").decode()
    assert headers["x-api-key"] == "h3ader"


async def test_a_fetch_error_naming_a_url_masks_its_credentials(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    create_importer: CreateImporter,
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    servers: tuple[Server, Server],
) -> None:
    first, _ = servers
    first.redirects["/users.csv"] = "ftp://user:pa55word@127.0.0.1/users.csv?token=t0k"
    source = {"type": "url", "url": f"{first.url}/users.csv"}
    await create_importer(key=["email"], fields=USER_FIELDS, format="csv", source=source)

    run = await trigger(client, admin_headers, settings, session_factory)

    assert run["status"] == "failed"
    assert run["error_message"] == (
        "Only http and https URLs can be fetched: ftp://user:***@127.0.0.1/users.csv?token=***"
    )
