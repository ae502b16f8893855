"""The runs pages over HTTP: list and filters, a finished run's errors and failed rows, cancel
and retry through the runs service (with its 409 in place), and the upload page."""

import re

import httpx

from tests.conftest import CreateImporter, MakeToken, RunWorker, Upload
from tests.console.conftest import sign_in
from tests.factories import USER_FIELDS

CSV = "Email,Name,Age\na@example.com,Ann,30\nnot-an-email,Bob,40\nc@example.com,C,50\n"


async def test_a_finished_run_shows_its_errors_and_failed_rows(
    client: httpx.AsyncClient,
    make_token: MakeToken,
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    run_id = (await upload("users", CSV)).json()["data"]["id"]
    await run_worker()
    await sign_in(
        client, await make_token(role="service", abilities=["ingest:view", "ingest:create"])
    )

    listing = (await client.get("/console/runs")).text
    assert f'href="/console/runs/{run_id}"' in listing
    assert "completed with errors" in listing
    assert "No runs match" in (await client.get("/console/runs?status=failed")).text

    page = await client.get(f"/console/runs/{run_id}")
    assert page.status_code == 200
    html = page.text
    assert 'data-finished="true"' in html
    assert "Errors (2 failed rows)" in html
    rows = html[html.index('id="failed-rows"') :]
    assert "The email must be a valid email address." in rows
    assert "The name must be at least 2 characters." in rows
    assert f'href="/api/v1/ingest/{run_id}/failed-rows/download"' in html
    assert "Retry failed rows" in html and "Dry-run retry" in html
    assert "Cancel run" not in html
    assert re.search(r"<dt>created</dt><dd>1</dd>", html)

    csrf = re.search(r'data-csrf="([^"]+)"', html)
    assert csrf is not None
    cancel = await client.post(f"/console/runs/{run_id}/cancel", data={"csrf_token": csrf.group(1)})
    assert cancel.status_code == 409
    assert f"Run {run_id} has already finished (completed_with_errors)." in cancel.text

    retried = await client.post(
        f"/console/runs/{run_id}/retry", data={"csrf_token": csrf.group(1), "dry_run": "1"}
    )
    assert retried.status_code == 303
    child = int(retried.headers["location"].rsplit("/", 1)[1])
    assert child != run_id
    run = (await client.get(f"/api/v1/ingest/{child}")).json()["data"]
    assert run["parent_run_id"] == run_id and run["dry_run"] is True
    await run_worker()
    assert (await client.get(f"/api/v1/ingest/{child}")).json()["data"]["progress"]["total"] == 2


async def test_a_viewer_gets_no_run_buttons_and_no_upload_page(
    client: httpx.AsyncClient,
    make_token: MakeToken,
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    run_id = (await upload("users", CSV)).json()["data"]["id"]
    await run_worker()
    await sign_in(client, await make_token(role="viewer", abilities=["ingest:view"]))
    html = (await client.get(f"/console/runs/{run_id}")).text
    assert "Retry failed rows" not in html and "Cancel run" not in html
    assert "Download failed rows" in html  # reading is viewing
    assert 'href="/console/upload"' not in html
    assert (await client.get("/console/upload")).status_code == 403
    landing = await client.get("/console")
    assert landing.headers["location"] == "/console/runs"


async def test_the_upload_page_offers_only_upload_importers(
    client: httpx.AsyncClient, make_token: MakeToken, create_importer: CreateImporter
) -> None:
    await sign_in(client, await make_token())
    empty = (await client.get("/console/upload")).text
    assert "No importer takes uploads." in empty
    await create_importer(key=["email"], fields=USER_FIELDS)
    await create_importer(
        slug="pushed", key=["email"], fields=USER_FIELDS, source={"type": "push"}, format="ndjson"
    )
    page = (await client.get("/console/upload")).text
    assert 'value="users"' in page
    assert 'value="pushed"' not in page
    assert 'id="dropzone"' in page
