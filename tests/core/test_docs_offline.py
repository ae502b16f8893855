"""/docs and /redoc work without internet: every asset they load is served by the app itself.

The HTTP tests read the pages and fetch what they reference. The browser tests run the real
app under uvicorn on loopback and open both pages in headless Chromium (Debian's ``chromium``)
with every request to a host other than 127.0.0.1 aborted and recorded; they save screenshots
to ``tests/core/screenshots/`` (git-ignored).
"""

import asyncio
import re
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from playwright.async_api import Browser, Page, Request, Route, async_playwright

from app.core.config import Settings
from app.main import create_app

SCREENSHOTS = Path(__file__).parent / "screenshots"
LOOPBACK = "127.0.0.1"
OPERATION = "/api/v1/ingest/importers"
CHROMIUM = shutil.which("chromium")

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no `chromium` on PATH (Debian: apt-get install chromium); the browser check needs it",
)


class _Assets(HTMLParser):
    """The URLs a page loads: <script src>, <link href> (stylesheet, icon)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script" and found.get("src"):
            self.urls.append(("script", found["src"] or ""))
        if tag == "link" and found.get("href"):
            self.urls.append((found.get("rel") or "link", found["href"] or ""))


def _assets(html: str) -> list[tuple[str, str]]:
    parser = _Assets()
    parser.feed(html)
    return parser.urls


# What each kind of asset must be served as, and the least size of its body.
EXPECTED = {
    "script": ("javascript", 100_000),
    "stylesheet": ("text/css", 50_000),
    "shortcut icon": ("image/", 500),
}


@pytest.mark.parametrize(
    ("page", "kinds"),
    [("/docs", {"script", "stylesheet", "shortcut icon"}), ("/redoc", {"script", "shortcut icon"})],
)
async def test_docs_page_loads_only_assets_served_by_the_app(
    client: httpx.AsyncClient, page: str, kinds: set[str]
) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert not re.search(r"https?://", html), html
    assert "cdn" not in html.lower()
    assert "fonts.googleapis" not in html

    assets = _assets(html)
    assert {kind for kind, _ in assets} == kinds, assets
    for kind, url in assets:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = await client.get(url)
        assert asset.status_code == 200, url
        content_type, min_size = EXPECTED[kind]
        assert content_type in asset.headers["content-type"], (url, asset.headers)
        assert len(asset.content) > min_size, (url, len(asset.content))


async def test_docs_assets_are_the_real_bundles(client: httpx.AsyncClient) -> None:
    swagger = await client.get("/docs-assets/swagger/swagger-ui-bundle.js")
    assert "SwaggerUIBundle" in swagger.text
    redoc = await client.get("/docs-assets/redoc/redoc.standalone.js")
    assert "Redoc" in redoc.text
    # The package's ReDoc asks the page's own path for the logo, not cdn.redoc.ly.
    assert "cdn.redoc.ly" not in redoc.text
    logo = await client.get("/redoc/logo-mini.svg")
    assert logo.status_code == 200
    assert logo.headers["content-type"].startswith("image/svg+xml")
    assert "<svg" in logo.text
    assert (await client.get("/docs-assets/swagger/nothing.js")).status_code == 404


async def test_docs_routes_stay_out_of_the_schema(client: httpx.AsyncClient) -> None:
    redirect = await client.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200
    assert "swaggerUIRedirectOauth2" in redirect.text
    docs = await client.get("/docs")
    assert '"validatorUrl": null' in docs.text
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert OPERATION in paths
    assert not [p for p in paths if p.startswith(("/docs", "/redoc"))]


async def test_the_service_root_opens_the_console(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 307
    assert response.headers["location"] == "/console"
    assert "/" not in (await client.get("/openapi.json")).json()["paths"]


# --- in a real browser -------------------------------------------------------------------


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
    thread = threading.Thread(target=server.run, name="docs-uvicorn", daemon=True)
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
                # Beneath the request routing below: no name resolves, and anything not on
                # loopback goes to a proxy on a loopback port where nothing listens.
                f"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {LOOPBACK}",
                f"--proxy-server=http://{LOOPBACK}:9",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        try:
            yield browser
        finally:
            await browser.close()


class OfflinePage:
    """A page whose requests to any host but 127.0.0.1 are aborted and recorded."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.blocked: list[str] = []
        self.requested: list[str] = []
        self.failed: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda request: self.requested.append(request.url))
        page.on("requestfailed", self._on_failed)
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _on_failed(self, request: Request) -> None:
        self.failed.append(f"{request.url}: {request.failure}")

    async def route(self, route: Route) -> None:
        url = route.request.url
        scheme = urlsplit(url).scheme
        if scheme in ("data", "blob") or urlsplit(url).hostname == LOOPBACK:
            await route.continue_()
        else:
            self.blocked.append(url)
            await route.abort("blockedbyclient")

    def assert_stayed_on_loopback(self) -> None:
        assert self.blocked == [], f"the page tried to leave loopback: {self.blocked}"
        outside = [
            url
            for url in self.requested
            if urlsplit(url).scheme not in ("data", "blob") and urlsplit(url).hostname != LOOPBACK
        ]
        assert outside == [], outside
        assert self.failed == [], self.failed
        assert self.errors == [], self.errors


@pytest.fixture
async def offline_page(browser: Browser) -> AsyncIterator[OfflinePage]:
    context = await browser.new_context(
        viewport={"width": 1280, "height": 1000}, service_workers="block"
    )
    try:
        page = await context.new_page()
        offline = OfflinePage(page)
        await context.route("**/*", offline.route)
        yield offline
    finally:
        await context.close()


@needs_chromium
async def test_swagger_ui_renders_offline(live_url: str, offline_page: OfflinePage) -> None:
    page = offline_page.page
    response = await page.goto(f"{live_url}/docs", wait_until="load")
    assert response is not None and response.status == 200

    await page.locator(".opblock").first.wait_for(state="visible", timeout=60_000)
    assert "Ingest" in await page.locator(".info .title").inner_text()
    operation = page.locator(f'.opblock-summary-path[data-path="{OPERATION}"]').first
    await operation.wait_for(state="visible")
    assert await page.locator(".opblock").count() > 10
    # Swagger UI shows a spec it could not read or resolve in an errors panel.
    assert await page.locator(".errors-wrapper").count() == 0
    await page.wait_for_load_state("networkidle")

    SCREENSHOTS.mkdir(exist_ok=True)
    await page.screenshot(path=SCREENSHOTS / "docs.png")
    offline_page.assert_stayed_on_loopback()
    assert f"{live_url}/openapi.json" in offline_page.requested


@needs_chromium
async def test_redoc_renders_offline(live_url: str, offline_page: OfflinePage) -> None:
    page = offline_page.page
    response = await page.goto(f"{live_url}/redoc", wait_until="load")
    assert response is not None and response.status == 200

    await page.locator(".api-content").first.wait_for(state="visible", timeout=60_000)
    assert "Ingest" in await page.locator(".api-info h1").first.inner_text()
    await page.get_by_text(OPERATION, exact=True).first.wait_for(state="attached")
    assert await page.get_by_text("Something went wrong").count() == 0
    await page.wait_for_load_state("networkidle")
    await asyncio.sleep(0.5)  # ReDoc lays its sidebar out after the content appears

    SCREENSHOTS.mkdir(exist_ok=True)
    await page.screenshot(path=SCREENSHOTS / "redoc.png")
    offline_page.assert_stayed_on_loopback()
    assert f"{live_url}/openapi.json" in offline_page.requested
    # The sidebar's Redocly logo, which upstream ReDoc loads from its CDN.
    assert f"{live_url}/redoc/logo-mini.svg" in offline_page.requested
