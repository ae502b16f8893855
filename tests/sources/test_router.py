"""The sources API: CRUD and its field rules, scoping, pause/resume, sync/import and tokens."""

from typing import Any

import httpx
import pytest
from arq import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.db import unit_of_work
from tests.conftest import MakeToken
from tests.sources.conftest import (
    PREFIX,
    CreateSource,
    Headers,
    UrlImporter,
    bearer,
)


async def test_create_returns_the_source_with_defaults(
    client: httpx.AsyncClient, admin_headers: Headers
) -> None:
    response = await client.post(
        f"{PREFIX}/sources",
        json={"name": "  City agenda ", "source_url": "HTTPS://Agenda.Example.test:443/events/"},
        headers=admin_headers,
    )
    assert response.status_code == 201, response.text
    data = response.json()["data"]
    assert data == {
        **data,
        "name": "City agenda",
        "source_url": "https://agenda.example.test/events",  # canonical
        "ingestion_type": "api",
        "provider": None,
        "external_source_id": None,
        "source_priority": 0,
        "onboarded": False,
        "approval_mode": "auto",
        "status": "active",
        "last_sync_started_at": None,
        "last_sync_finished_at": None,
        "last_sync_message": None,
    }
    assert data["created_at"].endswith("Z")


INVALID: list[Any] = [
    pytest.param({"source_url": "https://a.example.test"}, "name", id="name-missing"),
    pytest.param({"name": "   ", "source_url": "https://a.example.test"}, "name", id="name-blank"),
    pytest.param({"name": "A"}, "source_url", id="url-missing"),
    pytest.param({"name": "A", "source_url": "ftp://a.example.test"}, "source_url", id="ftp"),
    pytest.param({"name": "A", "source_url": "not a url"}, "source_url", id="not-a-url"),
    pytest.param(
        {"name": "A", "source_url": "https://user:pw@a.example.test"}, "source_url", id="creds"
    ),
    pytest.param(
        {"name": "A", "source_url": "https://a.example.test", "ingestion_type": "fax"},
        "ingestion_type",
        id="ingestion-type",
    ),
    pytest.param(
        {"name": "A", "source_url": "https://a.example.test", "approval_mode": "maybe"},
        "approval_mode",
        id="approval-mode",
    ),
    pytest.param(
        {"name": "A", "source_url": "https://a.example.test", "source_priority": "high"},
        "source_priority",
        id="priority",
    ),
    pytest.param(
        {"name": "A", "source_url": "https://a.example.test", "external_source_id": "42"},
        "provider",
        id="provider-required-with-external-id",
    ),
    pytest.param(
        {"name": "A", "source_url": "https://a.example.test", "status": "paused"},
        "status",
        id="status-is-not-writable",
    ),
]


@pytest.mark.parametrize(("body", "field"), INVALID)
async def test_invalid_fields_are_422_with_field_messages(
    client: httpx.AsyncClient, admin_headers: Headers, body: dict[str, Any], field: str
) -> None:
    response = await client.post(f"{PREFIX}/sources", json=body, headers=admin_headers)
    assert response.status_code == 422, response.text
    assert field in response.json()["errors"], response.json()


async def test_messages_speak_laravel(client: httpx.AsyncClient, admin_headers: Headers) -> None:
    body = {"name": "A", "source_url": "https://a.example.test", "external_source_id": "42"}
    response = await client.post(f"{PREFIX}/sources", json=body, headers=admin_headers)
    assert response.json() == {
        "message": "The provider field is required when external source id is present.",
        "errors": {
            "provider": ["The provider field is required when external source id is present."]
        },
    }
    body = {"name": "A", "source_url": "mailto:x@example.test"}
    response = await client.post(f"{PREFIX}/sources", json=body, headers=admin_headers)
    assert response.json()["errors"] == {"source_url": ["The source url must be a valid URL."]}


async def test_a_duplicate_source_url_is_422_in_any_spelling(
    client: httpx.AsyncClient, admin_headers: Headers, create_source: CreateSource
) -> None:
    await create_source("a")
    for url in (
        "https://a.example.test/feed",
        "https://A.EXAMPLE.test/feed/",
        "https://a.example.test:443/feed",
    ):
        response = await client.post(
            f"{PREFIX}/sources", json={"name": "B", "source_url": url}, headers=admin_headers
        )
        assert response.status_code == 422
        assert response.json()["errors"] == {
            "source_url": ["The source url has already been taken."]
        }


async def test_external_source_id_is_unique_within_its_provider(
    client: httpx.AsyncClient, admin_headers: Headers, create_source: CreateSource
) -> None:
    await create_source("a", provider="eventbrite", external_source_id="42")
    clash = await client.post(
        f"{PREFIX}/sources",
        json={
            "name": "B",
            "source_url": "https://b.example.test",
            "provider": "eventbrite",
            "external_source_id": "42",
        },
        headers=admin_headers,
    )
    assert clash.status_code == 422
    assert clash.json()["errors"] == {
        "external_source_id": ["The external source id has already been taken for this provider."]
    }
    other_provider = await client.post(
        f"{PREFIX}/sources",
        json={
            "name": "C",
            "source_url": "https://c.example.test",
            "provider": "meetup",
            "external_source_id": "42",
        },
        headers=admin_headers,
    )
    assert other_provider.status_code == 201


async def test_only_an_admin_may_choose_the_approval_mode(
    client: httpx.AsyncClient, service_headers: Headers, admin_headers: Headers
) -> None:
    body = {"name": "A", "source_url": "https://a.example.test"}
    manual = await client.post(
        f"{PREFIX}/sources", json={**body, "approval_mode": "manual"}, headers=service_headers
    )
    assert manual.status_code == 403
    assert manual.json() == {"message": "Only an admin may set a source's approval mode."}
    created = await client.post(f"{PREFIX}/sources", json=body, headers=service_headers)
    assert created.status_code == 201
    assert created.json()["data"]["approval_mode"] == "auto"

    source_id = created.json()["data"]["id"]
    # Changing it (like any update) is an admin's.
    change = {"approval_mode": "manual"}
    denied = await client.put(f"{PREFIX}/sources/{source_id}", json=change, headers=service_headers)
    assert denied.status_code == 403
    allowed = await client.put(f"{PREFIX}/sources/{source_id}", json=change, headers=admin_headers)
    assert allowed.json()["data"]["approval_mode"] == "manual"


async def test_creating_needs_the_create_ability_and_no_source_binding(
    client: httpx.AsyncClient, make_token: MakeToken, create_source: CreateSource
) -> None:
    body = {"name": "A", "source_url": "https://a.example.test"}
    viewer = bearer(await make_token(role="viewer", abilities=["ingest:view"]))
    assert (await client.post(f"{PREFIX}/sources", json=body, headers=viewer)).status_code == 403
    source = await create_source("mine")
    bound = bearer(await make_token(source_id=source["id"]))
    response = await client.post(f"{PREFIX}/sources", json=body, headers=bound)
    assert response.status_code == 403
    assert response.json() == {"message": "A source-bound token cannot create sources."}


async def test_list_is_paginated_newest_first_with_filters(
    client: httpx.AsyncClient, admin_headers: Headers, create_source: CreateSource
) -> None:
    a = await create_source("a", provider="meetup", source_priority=5)
    b = await create_source("b", ingestion_type="scrape", onboarded=True)
    c = await create_source("c", approval_mode="manual", source_priority=1)
    await client.post(f"{PREFIX}/sources/{c['id']}/pause", headers=admin_headers)

    async def names(query: str = "") -> list[str]:
        response = await client.get(f"{PREFIX}/sources?{query}", headers=admin_headers)
        assert response.status_code == 200, response.text
        return [source["name"] for source in response.json()["data"]]

    assert await names() == ["c", "b", "a"]
    assert await names("status=paused") == ["c"]
    assert await names("provider=meetup") == ["a"]
    assert await names("ingestion_type=scrape") == ["b"]
    assert await names("onboarded=true") == ["b"]
    assert await names("approval_mode=manual") == ["c"]
    assert await names("sort=source_priority&order=desc") == ["a", "c", "b"]
    page = (await client.get(f"{PREFIX}/sources?per_page=2&page=2", headers=admin_headers)).json()
    assert [s["id"] for s in page["data"]] == [a["id"]]
    assert page["meta"] == {"current_page": 2, "per_page": 2, "total": 3, "last_page": 2}
    assert page["links"]["prev"].endswith("page=1") and page["links"]["next"] is None
    assert (
        await client.get(f"{PREFIX}/sources?per_page=101", headers=admin_headers)
    ).status_code == 422
    assert b["id"]  # used


async def test_a_source_bound_token_sees_only_its_own_source(
    client: httpx.AsyncClient, make_token: MakeToken, create_source: CreateSource
) -> None:
    mine, theirs = await create_source("mine"), await create_source("theirs")
    headers = bearer(await make_token(source_id=mine["id"]))  # an admin, but bound
    listed = (await client.get(f"{PREFIX}/sources", headers=headers)).json()
    assert [s["id"] for s in listed["data"]] == [mine["id"]]
    assert (await client.get(f"{PREFIX}/sources/{mine['id']}", headers=headers)).status_code == 200
    other = f"{PREFIX}/sources/{theirs['id']}"
    assert (await client.get(other, headers=headers)).status_code == 404
    assert (await client.put(other, json={"name": "x"}, headers=headers)).status_code == 404
    assert (await client.delete(other, headers=headers)).status_code == 404
    for action in ("pause", "resume", "sync", "import", "tokens"):
        response = await client.post(f"{other}/{action}", headers=headers)
        assert response.status_code == 404, action


async def test_show_unknown_is_404(client: httpx.AsyncClient, admin_headers: Headers) -> None:
    response = await client.get(f"{PREFIX}/sources/42", headers=admin_headers)
    assert response.status_code == 404
    assert response.json() == {"message": "Source 42 not found."}


async def test_update_changes_only_the_given_fields(
    client: httpx.AsyncClient, admin_headers: Headers, create_source: CreateSource
) -> None:
    source = await create_source("a", provider="meetup", external_source_id="7")
    url = f"{PREFIX}/sources/{source['id']}"
    response = await client.put(
        url,
        json={"name": "Renamed", "onboarded": True, "source_priority": 3},
        headers=admin_headers,
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert (data["name"], data["onboarded"], data["source_priority"]) == ("Renamed", True, 3)
    assert (data["source_url"], data["provider"]) == (source["source_url"], "meetup")

    cleared = await client.put(
        url, json={"provider": None, "external_source_id": None}, headers=admin_headers
    )
    assert cleared.json()["data"]["provider"] is None
    assert (await client.put(url, json={"name": None}, headers=admin_headers)).json()["errors"] == {
        "name": ["The name field is required."]
    }
    lonely = await client.put(url, json={"external_source_id": "9"}, headers=admin_headers)
    assert lonely.status_code == 422 and "provider" in lonely.json()["errors"]


async def test_update_to_a_taken_url_is_422(
    client: httpx.AsyncClient, admin_headers: Headers, create_source: CreateSource
) -> None:
    a, b = await create_source("a"), await create_source("b")
    response = await client.put(
        f"{PREFIX}/sources/{b['id']}",
        json={"source_url": a["source_url"] + "/"},
        headers=admin_headers,
    )
    assert response.status_code == 422
    assert response.json()["errors"] == {"source_url": ["The source url has already been taken."]}
    # Its own URL is no clash.
    same = await client.put(
        f"{PREFIX}/sources/{b['id']}", json={"source_url": b["source_url"]}, headers=admin_headers
    )
    assert same.status_code == 200


async def test_pause_and_resume(
    client: httpx.AsyncClient, admin_headers: Headers, create_source: CreateSource
) -> None:
    source = await create_source("a")
    url = f"{PREFIX}/sources/{source['id']}"
    for _ in range(2):  # idempotent
        paused = await client.post(f"{url}/pause", headers=admin_headers)
        assert paused.status_code == 200
        assert paused.json()["data"]["status"] == "paused"
    resumed = await client.post(f"{url}/resume", headers=admin_headers)
    assert resumed.json()["data"]["status"] == "active"


async def test_source_tokens_are_service_tokens_bound_to_the_source(
    client: httpx.AsyncClient, admin_headers: Headers, create_source: CreateSource
) -> None:
    source = await create_source("a")
    response = await client.post(
        f"{PREFIX}/sources/{source['id']}/tokens", json={"name": "n8n"}, headers=admin_headers
    )
    assert response.status_code == 201, response.text
    token = response.json()["data"]
    assert token["token"].startswith("ingest_")
    assert (token["name"], token["source_id"], token["user"]["role"]) == (
        "n8n",
        source["id"],
        "service",
    )
    assert token["abilities"] == ["ingest:create", "ingest:view"]
    assert token["effective_abilities"] == ["ingest:create", "ingest:view"]

    agent = bearer(token["token"])
    assert (await client.get(f"{PREFIX}/sources/{source['id']}", headers=agent)).status_code == 200
    # The agent may not administer its own source.
    assert (
        await client.post(f"{PREFIX}/sources/{source['id']}/pause", headers=agent)
    ).status_code == 403

    # A second token reuses the source's agent user; the plaintext is never shown again.
    again = (
        await client.post(f"{PREFIX}/sources/{source['id']}/tokens", headers=admin_headers)
    ).json()
    assert again["data"]["user"]["id"] == token["user"]["id"]
    listed = (await client.get(f"{PREFIX}/tokens", headers=admin_headers)).json()["data"]
    assert all("token" not in t for t in listed)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"abilities": ["ingest:review"]}, "abilities"),
        ({"abilities": ["ingest:admin"]}, "abilities"),
        ({"abilities": []}, "abilities"),
        ({"user_email": "root@example.test"}, "user_email"),
        ({"expires_in_days": 0}, "expires_in_days"),
    ],
)
async def test_source_token_field_rules(
    client: httpx.AsyncClient,
    admin_headers: Headers,
    create_source: CreateSource,
    make_token: MakeToken,
    body: dict[str, Any],
    field: str,
) -> None:
    await make_token(role="admin", email="root@example.test")
    source = await create_source("a")
    response = await client.post(
        f"{PREFIX}/sources/{source['id']}/tokens", json=body, headers=admin_headers
    )
    assert response.status_code == 422, response.text
    assert field in response.json()["errors"]


async def test_deleting_a_source_revokes_its_tokens(
    client: httpx.AsyncClient,
    admin_headers: Headers,
    create_source: CreateSource,
    make_token: MakeToken,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    source, other = await create_source("a"), await create_source("b")
    issued = (
        await client.post(f"{PREFIX}/sources/{source['id']}/tokens", headers=admin_headers)
    ).json()["data"]
    agent = bearer(issued["token"])
    bystander = bearer(
        await make_token(role="service", abilities=["ingest:view"], source_id=other["id"])
    )
    assert (await client.get(f"{PREFIX}/sources", headers=agent)).status_code == 200

    deleted = await client.delete(f"{PREFIX}/sources/{source['id']}", headers=admin_headers)
    assert deleted.status_code == 204
    assert (
        await client.get(f"{PREFIX}/sources/{source['id']}", headers=admin_headers)
    ).status_code == 404
    # Revoked, not merely unbound (an unbound token would see every source).
    response = await client.get(f"{PREFIX}/sources", headers=agent)
    assert response.status_code == 401
    async with session_factory() as session:
        revoked = await session.scalar(
            text("SELECT revoked_at IS NOT NULL FROM tokens WHERE id = :id"), {"id": issued["id"]}
        )
    assert revoked is True
    assert (await client.get(f"{PREFIX}/sources", headers=bystander)).status_code == 200


async def queued_jobs(queue: ArqRedis, settings: Settings) -> set[str]:
    return {job.job_id or "" for job in await queue.queued_jobs(queue_name=settings.queue_name)}


async def test_sync_starts_a_run_for_every_url_importer_of_the_source(
    client: httpx.AsyncClient,
    admin_headers: Headers,
    create_source: CreateSource,
    url_importer: UrlImporter,
    create_importer: Any,
    queue: ArqRedis,
    settings: Settings,
) -> None:
    source, other = await create_source("a"), await create_source("b")
    await url_importer("prices", source["id"])
    await url_importer("stock", source["id"])
    await url_importer("elsewhere", other["id"])
    await create_importer(
        slug="pushed",
        source={"type": "push"},
        source_id=source["id"],
        key=["sku"],
        fields={"sku": {"type": "string"}},
    )

    response = await client.post(f"{PREFIX}/sources/{source['id']}/sync", headers=admin_headers)
    assert response.status_code == 202, response.text
    data = response.json()["data"]
    runs = data["runs"]
    assert [(r["importer"], r["kind"], r["status"], r["source_id"]) for r in runs] == [
        ("prices", "url", "pending", source["id"]),
        ("stock", "url", "pending", source["id"]),
    ]
    assert data["source"]["status"] == "syncing"
    assert data["source"]["last_sync_started_at"] is not None
    ids = ", ".join(str(r["id"]) for r in runs)
    assert data["source"]["last_sync_message"] == f"Sync started: run(s) {ids}."
    assert await queued_jobs(queue, settings) == {f"split:{r['id']}:0" for r in runs}

    again = await client.post(f"{PREFIX}/sources/{source['id']}/sync", headers=admin_headers)
    assert again.status_code == 409
    assert "already syncing" in again.json()["message"]


@pytest.mark.parametrize(
    ("outcomes", "status", "message"),
    [
        (["completed", "completed_with_errors"], "active", "2 run(s) finished."),
        (["completed", "failed"], "error", "1 of 2 run(s) failed; run {failed}: Boom."),
    ],
)
async def test_a_sync_settles_when_its_runs_end(
    client: httpx.AsyncClient,
    admin_headers: Headers,
    create_source: CreateSource,
    url_importer: UrlImporter,
    session_factory: async_sessionmaker[AsyncSession],
    outcomes: list[str],
    status: str,
    message: str,
) -> None:
    source = await create_source("a")
    await url_importer("prices", source["id"])
    await url_importer("stock", source["id"])
    url = f"{PREFIX}/sources/{source['id']}"
    runs = (await client.post(f"{url}/sync", headers=admin_headers)).json()["data"]["runs"]

    async with unit_of_work(session_factory) as session:
        await session.execute(
            text("UPDATE runs SET status = 'processing' WHERE id = :id"), {"id": runs[0]["id"]}
        )
    assert (await client.get(url, headers=admin_headers)).json()["data"]["status"] == "syncing"

    async with unit_of_work(session_factory) as session:
        for run, outcome in zip(runs, outcomes, strict=True):
            await session.execute(
                text(
                    "UPDATE runs SET status = :status, completed_at = now(), "
                    "error_message = :error WHERE id = :id"
                ),
                {
                    "id": run["id"],
                    "status": outcome,
                    "error": "Boom." if outcome == "failed" else None,
                },
            )
    shown = (await client.get(url, headers=admin_headers)).json()["data"]
    failed = next((r["id"] for r, o in zip(runs, outcomes, strict=True) if o == "failed"), None)
    assert shown["status"] == status
    assert shown["last_sync_message"] == message.format(failed=failed)
    assert shown["last_sync_finished_at"] is not None
    # A settled source can sync again.
    assert (await client.post(f"{url}/sync", headers=admin_headers)).status_code == 202


async def test_sync_refusals(
    client: httpx.AsyncClient,
    admin_headers: Headers,
    create_source: CreateSource,
    url_importer: UrlImporter,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    source = await create_source("a")
    url = f"{PREFIX}/sources/{source['id']}"
    none = await client.post(f"{url}/sync", headers=admin_headers)
    assert none.status_code == 422
    assert none.json()["message"] == f"Source {source['id']} has no URL importer to run."

    await url_importer("prices", source["id"])
    await client.post(f"{url}/pause", headers=admin_headers)
    paused = await client.post(f"{url}/sync", headers=admin_headers)
    assert paused.status_code == 409
    assert paused.json()["message"] == (
        f"Source {source['id']} is paused: resume it before starting a sync."
    )
    async with session_factory() as session:
        assert await session.scalar(text("SELECT count(*) FROM runs")) == 0


async def test_import_is_a_sync_that_marks_the_source_onboarded(
    client: httpx.AsyncClient,
    admin_headers: Headers,
    create_source: CreateSource,
    url_importer: UrlImporter,
) -> None:
    source = await create_source("a")
    assert source["onboarded"] is False
    await url_importer("prices", source["id"])
    response = await client.post(f"{PREFIX}/sources/{source['id']}/import", headers=admin_headers)
    assert response.status_code == 202, response.text
    data = response.json()["data"]
    assert data["source"]["onboarded"] is True
    assert data["source"]["status"] == "syncing"
    assert data["source"]["last_sync_message"].startswith("Initial import started: run(s)")
    assert [r["importer"] for r in data["runs"]] == ["prices"]


async def test_sync_honours_the_idempotency_key(
    client: httpx.AsyncClient,
    admin_headers: Headers,
    create_source: CreateSource,
    url_importer: UrlImporter,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    source = await create_source("a")
    await url_importer("prices", source["id"])
    headers = {**admin_headers, "Idempotency-Key": "nightly-2026-11-22"}
    first = await client.post(f"{PREFIX}/sources/{source['id']}/sync", headers=headers)
    again = await client.post(f"{PREFIX}/sources/{source['id']}/sync", headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    async with session_factory() as session:
        assert await session.scalar(text("SELECT count(*) FROM runs")) == 1
