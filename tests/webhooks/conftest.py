"""Fixtures for webhooks: a real HTTP receiver on loopback, an app allowed to deliver to it,
a subscribe helper and the sender run in this process."""

import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from arq import ArqRedis
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks import Webhook

from app.core.config import Settings
from app.main import create_app
from app.webhooks import sender

# The push and review fixtures of tests/items, for item events.
from tests.items.conftest import curator_headers, push, push_importer  # noqa: F401

PREFIX = "/api/v1/ingest"
Headers = dict[str, str]
USER_FIELDS = {
    "email": {"from": "Email", "type": "email", "required": True},
    "name": {"from": "Name", "type": "string", "required": True, "min_length": 2},
}
GOOD_CSV = "Email,Name\nada@example.com,Ada\nalan@example.com,Alan\n"
MIXED_CSV = "Email,Name\nada@example.com,Ada\nnot-an-email,Bob\n"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def verify(self, secret: str) -> Any:
        """The body, verified by the standardwebhooks library (raises if it does not verify)."""
        return Webhook(secret).verify(self.body, self.headers)

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Answers POSTs with the queued answers in order (then 200 "ok") and keeps every
    request. ``/redirect`` answers 302 to ``/landed``; ``/big`` answers 200 with 1 MB."""

    port: int = 0
    received: list[Received] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    # Seconds each answer takes (so that concurrent senders overlap).
    delay: float = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            time.sleep(receiver.delay)
            with receiver.lock:
                receiver.received.append(Received(self.path, dict(self.headers), body))
                code = receiver.answers.pop(0) if receiver.answers else 200
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", receiver.url("/landed"))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            payload = b"x" * (1 << 20) if self.path == "/big" else b"ok"
            self.send_response(code)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            # The sender may stop reading a large answer: what it should do.
            with contextlib.suppress(OSError):
                self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(found))
    server.daemon_threads = True
    found.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    """Loopback allowed (the receiver), retries at once, disabled after 3 failures."""
    return settings.model_copy(
        update={
            "allow_private_urls": True,
            "webhook_retry_seconds": [0.0, 0.0],
            "webhook_disable_after": 3,
            "webhook_timeout_seconds": 5.0,
        }
    )


@pytest.fixture
async def app(hook_settings: Settings, queue: ArqRedis) -> AsyncIterator[FastAPI]:
    app = create_app(hook_settings)
    async with app.router.lifespan_context(app):
        yield app


Deliver = Callable[..., Awaitable[int]]


@pytest.fixture
def deliver(session_factory: async_sessionmaker[AsyncSession], hook_settings: Settings) -> Deliver:
    """``await deliver()``: what a worker's send job does, until nothing is due."""

    async def run(settings: Settings | None = None) -> int:
        return await sender.send_due(session_factory, settings or hook_settings)

    return run


Subscribe = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
def subscribe(client: httpx.AsyncClient, admin_headers: Headers, receiver: Receiver) -> Subscribe:
    """``await subscribe(["run.completed"], importer=..., path="/hook")`` -> the created
    subscription, secret included."""

    async def create(
        events: list[str], *, path: str = "/hook", headers: Headers | None = None, **fields: Any
    ) -> dict[str, Any]:
        response = await client.post(
            f"{PREFIX}/webhooks",
            json={"url": receiver.url(path), "events": events, **fields},
            headers=headers or admin_headers,
        )
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    return create


async def deliveries(
    client: httpx.AsyncClient, headers: Headers, webhook_id: int, **params: Any
) -> list[dict[str, Any]]:
    response = await client.get(
        f"{PREFIX}/webhooks/{webhook_id}/deliveries",
        params={"per_page": 100, **params},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["data"]
    return found


async def outbox_rows(session_factory: async_sessionmaker[AsyncSession]) -> int:
    async with session_factory() as session:
        return int(await session.scalar(text("SELECT count(*) FROM webhook_deliveries")) or 0)
