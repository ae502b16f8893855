"""Console fixtures: signing in over HTTP (the session cookie and the page's CSRF token), and
for the browser tests the real app under uvicorn on loopback with Debian's chromium."""

import re
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from playwright.async_api import Browser, BrowserContext, async_playwright

from app.auth.sessions import COOKIE
from app.core.config import Settings
from app.main import create_app

SCREENSHOTS = Path(__file__).parent / "screenshots"
LOOPBACK = "127.0.0.1"
CHROMIUM = shutil.which("chromium")

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no `chromium` on PATH (Debian: apt-get install chromium): the console's browser "
    "tests need it",
)

_CSRF = re.compile(r'data-csrf="([^"]*)"')


async def sign_in(client: httpx.AsyncClient, token: str) -> str:
    """Sign ``client`` in with ``token`` through the form; returns the CSRF token its pages
    carry (the session cookie stays in the client's jar)."""
    response = await client.post("/console/sign-in", data={"token": token})
    assert response.status_code == 303, response.text
    assert COOKIE in client.cookies
    return await csrf_of(client)


async def csrf_of(client: httpx.AsyncClient) -> str:
    page = await client.get("/console/runs")
    assert page.status_code == 200, page.text
    found = _CSRF.search(page.text)
    assert found is not None and found.group(1), "no CSRF token on the page"
    return found.group(1)


@pytest.fixture
def live_url(settings: Settings) -> Iterator[str]:
    """The real app under uvicorn on a free loopback port, in a thread with its own loop."""
    config = uvicorn.Config(
        create_app(settings),
        host=LOOPBACK,
        port=0,
        loop="asyncio",
        lifespan="on",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="console-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped while starting"
        assert time.monotonic() < deadline, "uvicorn did not start in 30 s"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive(), "uvicorn did not stop"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert CHROMIUM is not None
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                # Nothing but loopback: every asset must be served by the app.
                f"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {LOOPBACK}",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    context = await browser.new_context(
        viewport={"width": 1280, "height": 900}, accept_downloads=True
    )
    errors: list[str] = []
    context.on("weberror", lambda error: errors.append(str(error.error)))
    try:
        yield context
    finally:
        await context.close()
    assert errors == [], f"JavaScript errors on the console's pages: {errors}"


async def shot(page: object, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    await page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)  # type: ignore[attr-defined]


# The review tests' factories (items in any status, sources, push importers, push).
from tests.items.conftest import make_item, make_source, push, push_importer  # noqa: E402, F401
