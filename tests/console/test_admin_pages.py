"""The admin pages over HTTP: sources (create, pause/resume, issue a token shown once),
tokens (revoke), importers; hidden from and refused to everyone but admins."""

import re

import httpx

from tests.conftest import CreateImporter, MakeToken
from tests.console.conftest import sign_in
from tests.factories import USER_FIELDS

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
