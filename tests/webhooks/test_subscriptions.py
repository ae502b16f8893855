"""The /webhooks API: subscriptions, their secret, validation, the SSRF rule and who sees
what."""

from typing import Any

import httpx
import pytest

from app.core.config import Settings
from app.main import create_app
from tests.conftest import MakeToken
from tests.items.conftest import MakeSource, bearer, make_source  # noqa: F401
from tests.webhooks.conftest import PREFIX, Headers, Receiver, Subscribe


async def test_create_shows_the_secret_once_and_list_and_show_hide_it(
    client: httpx.AsyncClient, admin_headers: Headers, subscribe: Subscribe
) -> None:
    created = await subscribe(["run.completed", "item.staged"], description="CRM sync")
    assert created["secret"].startswith("whsec_")
    assert created["events"] == ["run.completed", "item.staged"]
    assert created["enabled"] is True and created["disabled_reason"] is None

    shown = await client.get(f"{PREFIX}/webhooks/{created['id']}", headers=admin_headers)
    assert shown.status_code == 200
    listed = await client.get(f"{PREFIX}/webhooks", headers=admin_headers)
    assert listed.json()["meta"]["total"] == 1
    for resource in (shown.json()["data"], listed.json()["data"][0]):
        assert "secret" not in resource
        assert created["secret"] not in str(resource)
        assert resource["description"] == "CRM sync"


GOOD = {"url": "https://example.com/x", "events": ["run.completed"]}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://example.com/x", "events": ["run.completed"]}, "url"),
        ({"url": "not a url", "events": ["run.completed"]}, "url"),
        ({"url": "http://127.0.0.1:99999/x", "events": ["run.completed"]}, "url"),
        ({"url": "http://[::1/x", "events": ["run.completed"]}, "url"),
        ({"url": "https://example.com/x", "events": ["run.done"]}, "events"),
        ({"url": "https://example.com/x", "events": []}, "events"),
        ({"url": "https://example.com/x", "events": "run.completed"}, "events"),
        ({"url": "https://example.com/x"}, "events"),
        ({"events": ["run.completed"]}, "url"),
        ({**GOOD, "colour": 1}, "colour"),
        ({**GOOD, "importer": "nope"}, "importer"),
        ({**GOOD, "source_id": 77}, "source_id"),
        ({**GOOD, "source_id": 2**31}, "source_id"),
        ({**GOOD, "url": "https://exa\x00mple.com/"}, "url"),
    ],
)
async def test_bad_input_is_a_422_naming_the_field(
    client: httpx.AsyncClient, admin_headers: Headers, body: dict[str, Any], field: str
) -> None:
    response = await client.post(f"{PREFIX}/webhooks", json=body, headers=admin_headers)
    assert response.status_code == 422, response.text
    assert field in response.json()["errors"], response.json()
    assert response.json()["message"]


async def test_a_bad_event_name_says_which_names_are_valid(
    client: httpx.AsyncClient, admin_headers: Headers, receiver: Receiver
) -> None:
    body = {"url": receiver.url(), "events": ["run.completed", "run.exploded"]}
    response = await client.post(f"{PREFIX}/webhooks", json=body, headers=admin_headers)
    assert response.status_code == 422
    assert "run.exploded" in response.json()["message"]
    assert "item.merged" in response.json()["message"]


async def test_a_private_url_is_refused_without_the_setting(
    settings: Settings, admin_headers: Headers
) -> None:
    assert settings.allow_private_urls is False
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for url in ("http://127.0.0.1:8080/hook", "http://10.1.2.3/hook", "http://[::1]/x"):
                body = {"url": url, "events": ["run.completed"]}
                response = await client.post(f"{PREFIX}/webhooks", json=body, headers=admin_headers)
                assert response.status_code == 422, response.text
                message = response.json()["errors"]["url"][0]
                assert message.startswith("Refusing to deliver to "), message
                assert "INGEST_ALLOW_PRIVATE_URLS" in message
            ftp = {"url": "ftp://127.0.0.1/hook", "events": ["run.completed"]}
            response = await client.post(f"{PREFIX}/webhooks", json=ftp, headers=admin_headers)
            assert response.status_code == 422, response.text
            assert "http" in response.json()["errors"]["url"][0]
            listed = await client.get(f"{PREFIX}/webhooks", headers=admin_headers)
            assert listed.json()["meta"]["total"] == 0


async def test_update_changes_only_the_fields_given_and_checks_them(
    client: httpx.AsyncClient, admin_headers: Headers, subscribe: Subscribe, receiver: Receiver
) -> None:
    created = await subscribe(["run.completed"], description="first")
    url = f"{PREFIX}/webhooks/{created['id']}"
    response = await client.patch(
        url, json={"events": ["run.failed", "run.completed"]}, headers=admin_headers
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["events"] == ["run.completed", "run.failed"]
    assert data["description"] == "first" and data["url"] == receiver.url()

    for body, field in (
        ({"events": ["nope"]}, "events"),
        ({"url": "gopher://x"}, "url"),
        ({"url": None}, "url"),
        ({"enabled": None}, "enabled"),
    ):
        bad = await client.patch(url, json=body, headers=admin_headers)
        assert bad.status_code == 422, bad.text
        assert field in bad.json()["errors"]

    disabled = await client.patch(url, json={"enabled": False}, headers=admin_headers)
    assert disabled.json()["data"]["enabled"] is False
    assert disabled.json()["data"]["disabled_at"] is not None
    enabled = await client.patch(url, json={"enabled": True}, headers=admin_headers)
    assert enabled.json()["data"]["enabled"] is True
    assert enabled.json()["data"]["disabled_at"] is None


async def test_delete_removes_the_subscription(
    client: httpx.AsyncClient, admin_headers: Headers, subscribe: Subscribe
) -> None:
    created = await subscribe(["run.completed"])
    url = f"{PREFIX}/webhooks/{created['id']}"
    assert (await client.delete(url, headers=admin_headers)).status_code == 204
    assert (await client.get(url, headers=admin_headers)).status_code == 404
    assert (await client.delete(url, headers=admin_headers)).status_code == 404


async def test_rotate_secret_shows_the_new_secret_once(
    client: httpx.AsyncClient, admin_headers: Headers, subscribe: Subscribe
) -> None:
    created = await subscribe(["run.completed"])
    response = await client.post(
        f"{PREFIX}/webhooks/{created['id']}/rotate-secret", headers=admin_headers
    )
    assert response.status_code == 200, response.text
    rotated = response.json()["data"]
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]
    assert rotated["previous_secret_expires_at"] is not None
    shown = await client.get(f"{PREFIX}/webhooks/{created['id']}", headers=admin_headers)
    assert "secret" not in shown.json()["data"]


async def test_a_source_bound_admin_manages_only_its_own_source_s_subscriptions(
    client: httpx.AsyncClient,
    admin_headers: Headers,
    make_token: MakeToken,
    make_source: MakeSource,  # noqa: F811
    subscribe: Subscribe,
    receiver: Receiver,
) -> None:
    mine, theirs = await make_source("mine"), await make_source("theirs")
    scoped = bearer(await make_token(role="admin", abilities=["ingest:admin"], source_id=mine))
    unbound = await subscribe(["run.completed"])
    other = await subscribe(["run.completed"], source_id=theirs)

    # What it creates is bound to its source; it may not bind another.
    own = await subscribe(["run.completed"], headers=scoped)
    assert own["source_id"] == mine
    body = {"url": receiver.url(), "events": ["run.completed"], "source_id": theirs}
    refused = await client.post(f"{PREFIX}/webhooks", json=body, headers=scoped)
    assert refused.status_code == 403, refused.text

    listed = await client.get(f"{PREFIX}/webhooks", headers=scoped)
    assert [w["id"] for w in listed.json()["data"]] == [own["id"]]
    for hidden in (unbound["id"], other["id"]):
        base = f"{PREFIX}/webhooks/{hidden}"
        assert (await client.get(base, headers=scoped)).status_code == 404
        patched = await client.patch(base, json={"enabled": False}, headers=scoped)
        assert patched.status_code == 404
        assert (await client.post(f"{base}/rotate-secret", headers=scoped)).status_code == 404
        assert (await client.get(f"{base}/deliveries", headers=scoped)).status_code == 404
        assert (await client.delete(base, headers=scoped)).status_code == 404
    moved = await client.patch(
        f"{PREFIX}/webhooks/{own['id']}", json={"source_id": theirs}, headers=scoped
    )
    assert moved.status_code == 403
    # The unbound admin sees all three.
    everything = await client.get(f"{PREFIX}/webhooks", headers=admin_headers)
    assert everything.json()["meta"]["total"] == 3


async def test_a_viewer_gets_403(
    client: httpx.AsyncClient, make_token: MakeToken, subscribe: Subscribe
) -> None:
    created = await subscribe(["run.completed"])
    viewer = bearer(await make_token(role="viewer", abilities=["ingest:view"]))
    for method, path in (
        ("GET", "/webhooks"),
        ("GET", f"/webhooks/{created['id']}"),
        ("GET", f"/webhooks/{created['id']}/deliveries"),
        ("POST", f"/webhooks/{created['id']}/rotate-secret"),
        ("DELETE", f"/webhooks/{created['id']}"),
    ):
        response = await client.request(method, f"{PREFIX}{path}", headers=viewer)
        assert response.status_code == 403, (method, path, response.text)
