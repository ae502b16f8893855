"""The console in a real browser: Debian's chromium driven by Playwright, the app under
uvicorn on loopback, a real `ingest worker` process for uploads. Screenshots of the main pages
go to tests/console/screenshots/ (git-ignored)."""

from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import BrowserContext, Page, expect

from app.core.config import Settings
from tests.conftest import CreateImporter, MakeToken, RunWorker
from tests.console.conftest import SCREENSHOTS, needs_chromium, shot
from tests.factories import USER_FIELDS
from tests.items.conftest import PREFIX, Headers, PushImporter, event
from tests.worker.processes import start_worker, workers

pytestmark = needs_chromium

CURATOR = {"role": "curator", "abilities": ["ingest:view", "ingest:review"]}
VIEWER = {"role": "viewer", "abilities": ["ingest:view"]}
# 40 rows: 36 good, 4 invalid (an address that is none, an age out of range).
CSV = "Email,Name,Age\n" + "".join(
    f"user{i}@example.com,User {i},{i}\n" if i % 10 else f"bad-{i},User {i},{200 + i}\n"
    for i in range(40)
)


async def sign_in(page: Page, url: str, token: str) -> None:
    await page.goto(f"{url}/console")
    await expect(page).to_have_url(f"{url}/console/sign-in")
    await page.get_by_label("Token").fill(token)
    await page.get_by_role("button", name="Sign in").click()


async def pushed_items(
    client: httpx.AsyncClient,
    push_importer: PushImporter,
    run_worker: RunWorker,
    admin_headers: Headers,
    n: int = 3,
) -> None:
    await push_importer("event")
    response = await client.post(
        f"{PREFIX}/items/event",
        json={"items": [event(i) for i in range(n)]},
        headers=admin_headers,
    )
    assert response.status_code == 202, response.text
    await run_worker()


async def test_sign_in_shows_the_layout_for_the_role(
    live_url: str, context: BrowserContext, make_token: MakeToken
) -> None:
    page = await context.new_page()
    await page.goto(f"{live_url}/")
    await expect(page).to_have_url(f"{live_url}/console/sign-in")
    await shot(page, "sign-in")
    await page.get_by_label("Token").fill("ingest_not-a-token")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_contain_text("That token was not accepted")

    await sign_in(page, live_url, await make_token(email="ada@example.test"))
    await expect(page).to_have_url(f"{live_url}/console/items")
    nav = page.get_by_role("navigation", name="Main")
    for name in ("Review", "Runs", "Upload", "API docs"):
        await expect(nav.get_by_role("link", name=name)).to_be_visible()
    await expect(page.locator(".who")).to_contain_text("ada@example.test")
    await expect(page.locator(".who")).to_contain_text("admin")
    await expect(page.get_by_text("Nothing waits for review.")).to_be_visible()
    await shot(page, "queue-empty")
    # The session cookie is out of reach of the page's scripts.
    assert await page.evaluate("document.cookie") == ""

    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(f"{live_url}/console/sign-in")
    await page.goto(f"{live_url}/console/runs")
    await expect(page).to_have_url(f"{live_url}/console/sign-in")


async def test_a_curator_approves_and_promotes_a_pushed_item(
    live_url: str,
    context: BrowserContext,
    client: httpx.AsyncClient,
    make_token: MakeToken,
    push_importer: PushImporter,
    run_worker: RunWorker,
    admin_headers: Headers,
) -> None:
    await pushed_items(client, push_importer, run_worker, admin_headers)
    page = await context.new_page()
    await sign_in(page, live_url, await make_token(**CURATOR, email="cura@example.test"))
    await expect(page).to_have_url(f"{live_url}/console/items")
    rows = page.locator("#queue tbody tr")
    await expect(rows).to_have_count(3)
    await expect(page.locator('[data-status="pending"] .count')).to_have_text("3")
    await expect(
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Upload")
    ).to_have_count(0)
    await shot(page, "queue")

    # j moves to the first item, a approves it: back on the queue, two wait.
    await page.keyboard.press("j")
    await expect(rows.first).to_have_class("current")
    await page.keyboard.press("a")
    await expect(page.locator('[data-status="pending"] .count')).to_have_text("2")
    await expect(page.locator('[data-status="approved"] .count')).to_have_text("1")

    await page.locator('[data-status="approved"]').click()
    await page.locator("#queue tbody tr a").first.click()
    await expect(page.locator("#item-status")).to_have_text("approved")
    await expect(page.get_by_role("button", name="Approve")).to_have_count(0)
    await shot(page, "item-approved")
    await page.keyboard.press("p")
    await expect(page.get_by_role("status")).to_have_text("Item promoted: its record is written.")
    await expect(page.locator("#item-status")).to_have_text("merged")
    history = page.locator("#history tbody tr")
    await expect(history.nth(-2)).to_contain_text("cura@example.test")
    await expect(history.nth(-2).locator("td").nth(2)).to_have_text("approved")
    await expect(history.nth(-1).locator("td").nth(2)).to_have_text("merged")
    await shot(page, "item-merged")

    records = await client.get(f"{PREFIX}/records/events", headers=admin_headers)
    assert records.status_code == 200
    assert [r["data"]["external_id"] for r in records.json()["data"]] == ["ev-0"]


async def test_request_changes_requires_a_note(
    live_url: str,
    context: BrowserContext,
    client: httpx.AsyncClient,
    make_token: MakeToken,
    push_importer: PushImporter,
    run_worker: RunWorker,
    admin_headers: Headers,
) -> None:
    await pushed_items(client, push_importer, run_worker, admin_headers, n=1)
    page = await context.new_page()
    await sign_in(page, live_url, await make_token(**CURATOR))
    await page.locator("#queue tbody tr a").first.click()
    await page.get_by_role("button", name="Request changes").click()
    error = page.locator("#action-error")
    await expect(error).to_have_text("The note field is required.")
    await expect(page.locator("#item-status")).to_have_text("pending")
    await expect(page.get_by_label("Note for the sender (required)")).to_have_attribute(
        "aria-invalid", "true"
    )
    await shot(page, "item-note-required")
    await page.get_by_label("Note for the sender (required)").fill("Add the venue, please.")
    await page.get_by_role("button", name="Request changes").click()
    await expect(page.locator("#item-status")).to_have_text("changes requested")
    await expect(page.locator(".note")).to_contain_text("Add the venue, please.")


async def test_a_viewer_sees_no_action_buttons_and_a_forged_post_is_refused(
    live_url: str,
    context: BrowserContext,
    client: httpx.AsyncClient,
    make_token: MakeToken,
    push_importer: PushImporter,
    run_worker: RunWorker,
    admin_headers: Headers,
) -> None:
    await pushed_items(client, push_importer, run_worker, admin_headers, n=1)
    page = await context.new_page()
    await sign_in(page, live_url, await make_token(**VIEWER))
    await expect(page).to_have_url(f"{live_url}/console/runs")
    await page.goto(f"{live_url}/console/items")
    await expect(page.locator("#queue tbody tr")).to_have_count(1)
    await expect(page.get_by_role("button", name="Approve selected")).to_have_count(0)
    await page.locator("#queue tbody tr a").first.click()
    await expect(page.locator("#mapped")).to_contain_text("Harbour Harbour night no. 0000")
    for name in ("Approve", "Reject", "Request changes", "Retarget", "Promote to a record"):
        await expect(page.get_by_role("button", name=name)).to_have_count(0)
    await shot(page, "item-viewer")
    item_id = urlsplit(page.url).path.rsplit("/", 1)[1]
    # A forged post with the page's own CSRF token: the ability is still missing.
    status = await page.evaluate(
        """async (id) => {
            const body = new URLSearchParams({csrf_token: document.body.dataset.csrf});
            const r = await fetch(`/console/items/${id}/approve`, {method: "POST", body});
            const api = await fetch(`/api/v1/ingest/items/${id}/approve`, {method: "POST",
                headers: {"X-CSRF-Token": document.body.dataset.csrf}});
            return [r.status, api.status, (await api.json()).message];
        }""",
        item_id,
    )
    assert status == [403, 403, "This action requires the ingest:review ability."]
    await page.reload()
    await expect(page.locator("#item-status")).to_have_text("pending")


async def test_a_state_change_without_the_csrf_token_is_refused(
    live_url: str, context: BrowserContext, make_token: MakeToken
) -> None:
    page = await context.new_page()
    await sign_in(page, live_url, await make_token())
    body = {"slug": "users", "collection": "users", "key": ["email"], "fields": USER_FIELDS}
    answers = await page.evaluate(
        """async (body) => {
            const send = (headers) => fetch("/api/v1/ingest/importers", {method: "POST",
                headers: {"Content-Type": "application/json", ...headers},
                body: JSON.stringify(body)});
            const refused = await send({});
            const accepted = await send({"X-CSRF-Token": document.body.dataset.csrf});
            return [refused.status, await refused.json(), accepted.status];
        }""",
        body,
    )
    assert answers[0] == 403
    assert answers[1] == {
        "message": "CSRF token missing or invalid: reload the page and try again."
    }
    assert answers[2] == 201


async def test_upload_a_csv_watch_the_run_and_download_its_failed_rows(
    live_url: str,
    context: BrowserContext,
    settings: Settings,
    make_token: MakeToken,
    create_importer: CreateImporter,
    tmp_path: Path,
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=10)
    page = await context.new_page()
    await sign_in(
        page, live_url, await make_token(role="service", abilities=["ingest:view", "ingest:create"])
    )
    await expect(page).to_have_url(f"{live_url}/console/runs")
    await expect(page.get_by_text("No runs yet.")).to_be_visible()
    await page.get_by_role("link", name="Upload", exact=True).click()
    await expect(page.get_by_label("Importer")).to_have_value("users")

    # Dropped on the box, as a user drags it from their desktop.
    drop = await page.evaluate_handle(
        """(text) => {
            const data = new DataTransfer();
            data.items.add(new File([text], "people.csv", {type: "text/csv"}));
            return data;
        }""",
        CSV,
    )
    await page.dispatch_event("#dropzone", "drop", {"dataTransfer": drop})
    await expect(page.locator("#chosen-file")).to_have_text("Chosen: people.csv")
    await shot(page, "upload")

    with workers() as started:
        await page.get_by_role("button", name="Upload and start the run").click()
        await expect(page).to_have_url(f"{live_url}/console/runs/1")
        await expect(page.locator("#live")).to_have_attribute("data-finished", "false")
        started.append(start_worker(settings))
        # The page follows the stream and renders again once the run has finished.
        await expect(page.locator("#run-status")).to_have_text(
            "completed with errors", timeout=60_000
        )
    await expect(page.locator("#live")).to_have_attribute("data-finished", "true")
    await expect(page.locator('[data-counter="failed"]')).to_have_text("4")
    await expect(page.locator("#failed-rows tbody tr")).to_have_count(4)
    await expect(page.locator("#failed-rows")).to_contain_text(
        "The email must be a valid email address."
    )
    await expect(page.locator("#summary")).to_contain_text("36")
    await shot(page, "run-finished")

    async with page.expect_download() as info:
        await page.get_by_role("link", name="Download failed rows (CSV)").click()
    download = await info.value
    saved = tmp_path / "failed.csv"
    await download.save_as(saved)
    lines = saved.read_text().splitlines()
    assert lines[0] == "Email,Name,Age,_error_message,_row_number"
    assert len(lines) == 5
    assert lines[1].startswith("bad-0,User 0,200,")

    await page.goto(f"{live_url}/console/runs")
    await expect(page.locator("#runs tbody tr")).to_have_count(1)
    await shot(page, "runs")


@pytest.mark.parametrize("width", [390])
async def test_the_pages_fit_a_phone(
    live_url: str,
    browser: object,
    width: int,
    client: httpx.AsyncClient,
    make_token: MakeToken,
    push_importer: PushImporter,
    run_worker: RunWorker,
    admin_headers: Headers,
) -> None:
    await pushed_items(client, push_importer, run_worker, admin_headers, n=2)
    context = await browser.new_context(viewport={"width": width, "height": 844})  # type: ignore[attr-defined]
    try:
        page = await context.new_page()
        await sign_in(page, live_url, await make_token(**CURATOR))
        for name, path in (("phone-queue", "/console/items"), ("phone-item", "/console/items/1")):
            await page.goto(f"{live_url}{path}")
            # Nothing wider than the screen: no sideways scrolling of the page itself.
            scroll = await page.evaluate("document.documentElement.scrollWidth")
            assert scroll <= width, (name, scroll)
            await shot(page, name)
    finally:
        await context.close()
    assert SCREENSHOTS.is_dir()


async def test_an_admin_creates_a_source_issues_and_copies_its_token(
    live_url: str, context: BrowserContext, make_token: MakeToken
) -> None:
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_url)
    page = await context.new_page()
    await sign_in(page, live_url, await make_token())
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Sources").click()
    await expect(page.get_by_text("No sources yet.")).to_be_visible()
    await page.get_by_label("Name").fill("City agenda")
    await page.get_by_label("Source URL").fill("https://agenda.example.test/feed")
    await page.get_by_label("Approval").select_option("manual")
    await page.get_by_role("button", name="Create source").click()
    await expect(page.get_by_role("status")).to_have_text("Source created.")
    await page.get_by_role("button", name="Issue token: City agenda").click()
    token = await page.get_by_label("The new token").input_value()
    assert token.startswith("ingest_")
    await page.get_by_role("button", name="Copy", exact=True).click()
    await expect(page.locator("#copied")).to_have_text("Copied.")
    assert await page.evaluate("navigator.clipboard.readText()") == token
    await shot(page, "admin-sources")

    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Tokens").click()
    await expect(page.locator("#tokens tbody tr")).to_have_count(2)
    await page.get_by_role("button", name=f"Revoke City agenda agent ({token[:13]})").click()
    await expect(page.get_by_role("status")).to_contain_text("Token revoked")
    await expect(page.locator("#tokens tbody tr").first).to_contain_text("revoked")
    await shot(page, "admin-tokens")


async def test_cancel_a_large_run_from_its_page(
    live_url: str,
    context: BrowserContext,
    make_token: MakeToken,
    create_importer: CreateImporter,
    tmp_path: Path,
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=500)
    big = tmp_path / "big.csv"
    big.write_text(
        "Email,Name,Age\n" + "".join(f"u{i}@example.com,User {i},{i % 90}\n" for i in range(20_000))
    )
    page = await context.new_page()
    await sign_in(page, live_url, await make_token())
    await page.goto(f"{live_url}/console/upload")
    await page.get_by_label("File (CSV, XLSX, JSON or NDJSON)").set_input_files(big)
    await page.get_by_role("button", name="Upload and start the run").click()
    await expect(page).to_have_url(f"{live_url}/console/runs/1")
    # No worker runs: the run waits, and a cancel ends it at once.
    await expect(page.locator("#run-status")).to_have_text("pending")
    await page.get_by_role("button", name="Cancel run").click()
    await expect(page.get_by_role("status")).to_have_text("Cancellation request sent.")
    await expect(page.locator("#run-status")).to_have_text("cancelled")
    await expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)


async def test_the_main_pages_pass_an_automated_accessibility_check(
    live_url: str,
    context: BrowserContext,
    client: httpx.AsyncClient,
    make_token: MakeToken,
    push_importer: PushImporter,
    run_worker: RunWorker,
    admin_headers: Headers,
) -> None:
    """axe-core (shipped inside the axe-playwright-python package, injected offline)."""
    axe_module = pytest.importorskip("axe_playwright_python.async_playwright")
    await pushed_items(client, push_importer, run_worker, admin_headers, n=2)
    body = {"name": "Agenda", "source_url": "https://agenda.example.test/feed"}
    source = await client.post("/api/v1/ingest/sources", json=body, headers=admin_headers)
    assert source.status_code == 201, source.text
    page = await context.new_page()
    await page.goto(f"{live_url}/console/sign-in")
    pages = ["/console/sign-in"]
    await sign_in(page, live_url, await make_token())
    pages += [
        "/console/items",
        "/console/items/1",
        "/console/runs",
        "/console/runs/1",
        "/console/upload",
        "/console/admin/sources",
        "/console/admin/tokens",
        "/console/admin/importers",
        "/console/admin/importers/event",
        f"/console/admin/sources/{source.json()['data']['id']}",
    ]
    axe = axe_module.Axe()
    # The check itself finds what it should: a page without a language or an image's text.
    control = await context.new_page()
    await control.set_content("<html><body><img src='data:,'></body></html>")
    assert (await axe.run(control)).violations_count > 0
    await control.close()
    found = {}
    for path in pages:
        if path != "/console/sign-in":
            await page.goto(f"{live_url}{path}")
        if "/admin/importers/" in path or "/admin/sources/" in path:
            await shot(page, "admin-importer" if "importers" in path else "admin-source")
        results = await axe.run(page)
        if results.violations_count:
            found[path] = results.generate_report()
    assert not found, "\n".join(f"{path}:\n{report}" for path, report in found.items())
