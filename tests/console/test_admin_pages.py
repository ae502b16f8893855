"""The admin pages over HTTP: sources (create, pause/resume, issue a token shown once),
tokens (revoke), importers; hidden from and refused to everyone but admins."""

import re
from typing import Any

import httpx

from tests.conftest import CreateImporter, MakeToken, Upload
from tests.console.conftest import csrf_of, sign_in
from tests.factories import USER_FIELDS

Headers = dict[str, str]

API = "/api/v1/ingest"


async def test_only_an_admin_gets_the_admin_pages(
    client: httpx.AsyncClient, make_token: MakeToken
) -> None:
    await sign_in(
        client, await make_token(role="curator", abilities=["ingest:view", "ingest:review"])
    )
    runs = (await client.get("/console/runs")).text
    assert "/console/admin/" not in runs
    for page in ("importers", "sources", "tokens"):
        answer = await client.get(f"/console/admin/{page}")
        assert answer.status_code == 403, page
        assert "requires the ingest:admin ability" in answer.text


async def test_an_admin_creates_a_source_and_issues_its_token_once(
    client: httpx.AsyncClient, make_token: MakeToken
) -> None:
    csrf = await sign_in(client, await make_token())
    assert 'href="/console/admin/sources"' in (await client.get("/console/runs")).text
    empty = (await client.get("/console/admin/sources")).text
    assert "No sources yet." in empty

    bad = await client.post(
        "/console/admin/sources", data={"csrf_token": csrf, "name": "Agenda", "source_url": ""}
    )
    assert bad.status_code == 422
    created = await client.post(
        "/console/admin/sources",
        data={
            "csrf_token": csrf,
            "name": "Agenda",
            "source_url": "https://agenda.example.test/feed",
            "approval_mode": "manual",
        },
    )
    assert created.status_code == 303
    listing = await client.get(created.headers["location"])
    assert "Source created." in listing.text
    source = (await client.get(f"{API}/sources")).json()["data"][0]
    assert source["approval_mode"] == "manual"

    issued = await client.post(
        f"/console/admin/sources/{source['id']}/tokens", data={"csrf_token": csrf}
    )
    assert issued.status_code == 201
    found = re.search(r'id="issued-token" readonly value="(ingest_[0-9A-Za-z]+)"', issued.text)
    assert found is not None
    token = found.group(1)
    assert "shown this once" in issued.text
    agent = await client.get(f"{API}/sources", headers={"Authorization": f"Bearer {token}"})
    assert [s["id"] for s in agent.json()["data"]] == [source["id"]]
    assert token not in (await client.get("/console/admin/sources")).text

    paused = await client.post(
        f"/console/admin/sources/{source['id']}/pause", data={"csrf_token": csrf}
    )
    assert paused.status_code == 303
    assert (await client.get(f"{API}/sources/{source['id']}")).json()["data"]["status"] == "paused"
    sync = await client.post(
        f"/console/admin/sources/{source['id']}/sync", data={"csrf_token": csrf}
    )
    assert sync.status_code == 409
    assert "is paused: resume it before starting a sync." in sync.text
    resumed = await client.post(
        f"/console/admin/sources/{source['id']}/resume", data={"csrf_token": csrf}
    )
    assert resumed.status_code == 303
    assert (await client.get(f"{API}/sources/{source['id']}")).json()["data"]["status"] == "active"


async def test_an_admin_revokes_a_token_from_the_tokens_page(
    client: httpx.AsyncClient, make_token: MakeToken
) -> None:
    csrf = await sign_in(client, await make_token())
    other = await make_token(role="viewer", abilities=["ingest:view"], email="v@example.test")
    page = (await client.get("/console/admin/tokens")).text
    assert "v@example.test" in page and "this session" in page
    prefix = re.escape(other[:13])
    row = re.search(rf'<tr data-id="(\d+)"><td>test</td><td class="opt"><code>{prefix}…', page)
    assert row is not None
    viewer_id = row.group(1)
    refused = await client.post(f"/console/admin/tokens/{viewer_id}/revoke")
    assert refused.status_code == 403
    revoked = await client.post(
        f"/console/admin/tokens/{viewer_id}/revoke", data={"csrf_token": csrf}
    )
    assert revoked.status_code == 303
    statuses = [
        t["status"]
        for t in (await client.get(f"{API}/tokens")).json()["data"]
        if t["user"]["email"] == "v@example.test"
    ]
    assert statuses == ["revoked"]
    assert (
        await client.get(f"{API}/", headers={"Authorization": f"Bearer {other}"})
    ).status_code == 401


async def test_the_importers_page_lists_them_with_their_doors(
    client: httpx.AsyncClient, make_token: MakeToken, create_importer: CreateImporter
) -> None:
    await sign_in(client, await make_token())
    assert "No importers yet." in (await client.get("/console/admin/importers")).text
    await create_importer(key=["email"], fields=USER_FIELDS)
    page = (await client.get("/console/admin/importers")).text
    assert "<code>users</code>" in page
    assert 'href="/console/upload?importer=users"' in page


async def test_an_importers_page_shows_its_definition_fields_and_runs(
    client: httpx.AsyncClient,
    make_token: MakeToken,
    create_importer: CreateImporter,
    upload: Upload,
) -> None:
    await sign_in(client, await make_token())
    await create_importer(key=["email"], fields=USER_FIELDS, log_rows="all")
    listing = (await client.get("/console/admin/importers")).text
    assert 'href="/console/admin/importers/users"' in listing
    assert "No runs yet." in (await client.get("/console/admin/importers/users")).text
    run = (await upload("users", "Email,Name,Age\na@x.test,Ann,7\n")).json()["data"]

    page = await client.get("/console/admin/importers/users")
    assert page.status_code == 200
    html = page.text
    assert (
        'data-field="email"><th scope="row"><code>email</code> <span class="badge">key</span>'
        in html
    )
    assert "Email, E-mail" in html  # the headers the field is read from
    assert "trim → lower" in html and "min 0; max 150; empty if , NA" in html
    assert "every row" in html  # log_rows: all
    assert f'href="/console/runs/{run["id"]}"' in html
    assert 'href="/console/upload?importer=users"' in html

    missing = await client.get("/console/admin/importers/nope")
    assert missing.status_code == 404
    assert "nope" in missing.text


async def test_a_viewer_reads_an_importers_page_without_the_admin_links(
    client: httpx.AsyncClient, make_token: MakeToken, create_importer: CreateImporter
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS)
    await sign_in(client, await make_token(role="viewer", abilities=["ingest:view"]))
    page = await client.get("/console/admin/importers/users")
    assert page.status_code == 200
    assert "<code>users</code>" in page.text
    assert "All importers" not in page.text
    assert "/console/upload?importer=users" not in page.text  # no ingest:create


async def _source(
    client: httpx.AsyncClient, admin_headers: Headers, name: str = "Agenda"
) -> dict[str, Any]:
    body = {"name": name, "source_url": f"https://{name.lower()}.example.test/feed"}
    response = await client.post(f"{API}/sources", json=body, headers=admin_headers)
    assert response.status_code == 201, response.text
    source: dict[str, Any] = response.json()["data"]
    return source


async def test_a_sources_page_acts_and_comes_back_to_itself(
    client: httpx.AsyncClient,
    make_token: MakeToken,
    create_importer: CreateImporter,
    admin_headers: Headers,
) -> None:
    csrf = await sign_in(client, await make_token())
    source = await _source(client, admin_headers)
    here = f"/console/admin/sources/{source['id']}"
    await create_importer(
        slug="agenda-events",
        fields={"title": {"type": "string", "required": True}},
        key=["title"],
        source={"type": "push"},
        source_id=source["id"],
    )
    listing = (await client.get("/console/admin/sources")).text
    assert f'href="{here}"' in listing

    page = (await client.get(here)).text
    assert "https://agenda.example.test/feed" in page and "Never synced." in page
    assert 'href="/console/admin/importers/agenda-events"' in page
    assert "No token is bound to this source." in page
    assert "No runs for this source yet." in page

    paused = await client.post(f"{here}/pause", data={"csrf_token": csrf, "next": here})
    assert paused.status_code == 303
    assert paused.headers["location"] == f"{here}?done=paused"
    page = (await client.get(paused.headers["location"])).text
    assert "Source paused" in page and 'id="source-status">paused<' in page
    refused = await client.post(f"{here}/sync", data={"csrf_token": csrf, "next": here})
    assert refused.status_code == 409
    assert 'id="source-error"' in refused.text and "resume it before" in refused.text
    assert "Never synced." in refused.text  # the error is shown on the source's own page

    issued = await client.post(f"{here}/tokens", data={"csrf_token": csrf, "next": here})
    assert issued.status_code == 201
    found = re.search(r'id="issued-token" readonly value="(ingest_[0-9A-Za-z]+)"', issued.text)
    assert found is not None
    row = re.search(r'<tr data-id="(\d+)">', issued.text.split('id="tokens"')[1])
    assert row is not None  # the new token is listed on the page it was issued on
    revoked = await client.post(
        f"/console/admin/tokens/{row.group(1)}/revoke", data={"csrf_token": csrf, "next": here}
    )
    assert revoked.headers["location"] == f"{here}?done=revoked"
    agent = {"Authorization": f"Bearer {found.group(1)}"}
    assert (await client.get(f"{API}/sources", headers=agent)).status_code == 401

    # A forged `next` does not turn the form into an open redirect.
    resumed = await client.post(
        f"{here}/resume", data={"csrf_token": csrf, "next": "https://evil.example.test/"}
    )
    assert resumed.headers["location"] == "/console/admin/sources?done=resumed"


async def test_a_source_bound_viewer_sees_its_own_source_only_and_no_tokens(
    client: httpx.AsyncClient, make_token: MakeToken, admin_headers: Headers
) -> None:
    await sign_in(client, await make_token())
    own, other = (
        await _source(client, admin_headers, "Agenda"),
        await _source(client, admin_headers, "Other"),
    )
    client.cookies.clear()
    bound = await make_token(
        role="viewer", abilities=["ingest:view"], source_id=own["id"], email="b@example.test"
    )
    await sign_in(client, bound)
    page = await client.get(f"/console/admin/sources/{own['id']}")
    assert page.status_code == 200
    assert "Agenda" in page.text
    assert 'id="tokens"' not in page.text and "Issue token" not in page.text
    assert (await client.get(f"/console/admin/sources/{other['id']}")).status_code == 404
    forged = await client.post(
        f"/console/admin/sources/{own['id']}/pause", data={"csrf_token": await csrf_of(client)}
    )
    assert forged.status_code == 403
