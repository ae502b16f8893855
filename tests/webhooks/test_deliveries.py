"""Deliveries end to end: the outbox rows the run and item changes write, the sender that
signs and POSTs them to a real receiver on loopback (verified by the standardwebhooks
library), retries, redirects, large answers, rotation, auto-disable and redelivery."""

import logging
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks import Webhook

from app.core.config import Settings
from app.runs import service as runs_service
from app.webhooks.sender import retry_in
from tests.conftest import CreateImporter, RunWorker, Upload
from tests.items.conftest import Push, PushImporter, event
from tests.webhooks.conftest import (
    GOOD_CSV,
    MIXED_CSV,
    PREFIX,
    USER_FIELDS,
    Deliver,
    Headers,
    Receiver,
    Subscribe,
    deliveries,
    outbox_rows,
)

ALL_RUN_EVENTS = ["run.completed", "run.completed_with_errors", "run.failed", "run.cancelled"]
ALL_ITEM_EVENTS = ["item.staged", "item.approved", "item.rejected", "item.merged"]


async def _run_resource(client: httpx.AsyncClient, headers: Headers, run_id: int) -> Any:
    shown = (await client.get(f"{PREFIX}/{run_id}", headers=headers)).json()["data"]
    return {**shown, "rows": []}  # a delivery carries the run without its first rows


async def test_a_completed_upload_delivers_one_signed_run_completed_with_the_run(
    client: httpx.AsyncClient,
    admin_headers: Headers,
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    deliver: Deliver,
    subscribe: Subscribe,
    receiver: Receiver,
) -> None:
    await create_importer(slug="users", key=["email"], fields=USER_FIELDS)
    hook = await subscribe(["run.completed"])
    other = await subscribe(["run.failed"], path="/other")
    run_id = (await upload("users", GOOD_CSV)).json()["data"]["id"]
    await run_worker()

    assert await deliver() == 1
    [got] = receiver.received
    body = got.verify(hook["secret"])
    assert body["type"] == "run.completed"
    assert body["timestamp"].endswith("Z")
    assert body["data"] == await _run_resource(client, admin_headers, run_id)
    assert body["data"]["status"] == "completed"
    assert got.headers["content-type"] == "application/json"

    [logged] = await deliveries(client, admin_headers, hook["id"])
    assert logged["message_id"] == got.headers["webhook-id"]
    assert logged["event_type"] == "run.completed"
    assert (logged["status"], logged["attempts"], logged["last_status_code"]) == (
        "succeeded",
        1,
        200,
    )
    assert logged["response_excerpt"] == "ok" and isinstance(logged["latency_ms"], int)
    assert logged["next_attempt_at"] is None
    assert await deliveries(client, admin_headers, other["id"]) == []
    assert await deliver() == 0  # nothing is sent twice


@pytest.mark.parametrize(
    ("content", "overrides", "status"),
    [
        (MIXED_CSV, {}, "completed_with_errors"),
        (MIXED_CSV, {"failure_threshold": 10}, "failed"),
        ("Name\nAda\n", {}, "failed"),  # no key column: the run cannot be read
    ],
    ids=["completed_with_errors", "failed_over_threshold", "failed_unreadable"],
)
async def test_each_end_of_a_run_delivers_its_event(
    client: httpx.AsyncClient,
    admin_headers: Headers,
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    deliver: Deliver,
    subscribe: Subscribe,
    receiver: Receiver,
    content: str,
    overrides: dict[str, Any],
    status: str,
) -> None:
    await create_importer(slug="users", key=["email"], fields=USER_FIELDS, **overrides)
    hook = await subscribe(ALL_RUN_EVENTS)
    run_id = (await upload("users", content)).json()["data"]["id"]
    await run_worker()
    assert await deliver() == 1
    [got] = receiver.received
    body = got.verify(hook["secret"])
    assert body["type"] == f"run.{status}"
    assert body["data"] == await _run_resource(client, admin_headers, run_id)


async def test_cancelling_a_pending_run_delivers_run_cancelled(
    client: httpx.AsyncClient,
    admin_headers: Headers,
    create_importer: CreateImporter,
    upload: Upload,
    deliver: Deliver,
    subscribe: Subscribe,
    receiver: Receiver,
) -> None:
    await create_importer(slug="users", key=["email"], fields=USER_FIELDS)
    hook = await subscribe(ALL_RUN_EVENTS)
    run_id = (await upload("users", GOOD_CSV)).json()["data"]["id"]
    cancelled = await client.post(f"{PREFIX}/{run_id}/cancel", headers=admin_headers)
    assert cancelled.status_code == 200
    assert await deliver() == 1
    body = receiver.received[0].verify(hook["secret"])
    assert body["type"] == "run.cancelled"
    assert body["data"] == await _run_resource(client, admin_headers, run_id)


async def test_the_importer_and_source_filters_pick_the_runs(
    client: httpx.AsyncClient,
    admin_headers: Headers,
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    deliver: Deliver,
    subscribe: Subscribe,
    receiver: Receiver,
) -> None:
    source = await client.post(
        f"{PREFIX}/sources",
        json={"name": "CRM", "source_url": "https://crm.example.test/users"},
        headers=admin_headers,
    )
    source_id = source.json()["data"]["id"]
    await create_importer(slug="users", key=["email"], fields=USER_FIELDS)
    await create_importer(slug="staff", key=["email"], fields=USER_FIELDS, source_id=source_id)
    by_importer = await subscribe(["run.completed"], path="/users", importer="users")
    by_source = await subscribe(["run.completed"], path="/crm", source_id=source_id)
    for slug in ("users", "staff", "users"):
        assert (await upload(slug, GOOD_CSV)).status_code == 202
    await run_worker()
    assert await deliver() == 3

    users = [r.verify(by_importer["secret"]) for r in receiver.on("/users")]
    crm = [r.verify(by_source["secret"]) for r in receiver.on("/crm")]
    assert [b["data"]["importer"] for b in users] == ["users", "users"]
    assert [b["data"]["importer"] for b in crm] == ["staff"]


async def test_pushed_items_and_their_review_deliver_item_events(
    client: httpx.AsyncClient,
    admin_headers: Headers,
    curator_headers: Headers,
    push_importer: PushImporter,
    push: Push,
    run_worker: RunWorker,
    deliver: Deliver,
    subscribe: Subscribe,
    receiver: Receiver,
) -> None:
    await push_importer("event", chunk_size=2)
    hook = await subscribe(ALL_ITEM_EVENTS)
    pushed = await push("event", [event(n) for n in range(5)], admin_headers)
    assert pushed.status_code == 202, pushed.text
    await run_worker()

    assert await deliver() == 5
    staged = [r.verify(hook["secret"]) for r in receiver.received]
    assert {b["type"] for b in staged} == {"item.staged"}
    ids = sorted(b["data"]["id"] for b in staged)
    assert len(ids) == 5
    # The item as the API shows it (its duplicate markers as they were when it was staged:
    # items staged later by other chunks may have joined them since).
    later = {"events", "duplicates", "has_duplicates"}
    for body in staged:
        shown = await client.get(f"{PREFIX}/items/{body['data']['id']}", headers=admin_headers)
        expected = {k: v for k, v in shown.json()["data"].items() if k not in later}
        assert {k: v for k, v in body["data"].items() if k not in later} == expected
        assert set(body["data"]) == set(expected) | {"duplicates", "has_duplicates"}
        assert body["data"]["status"] == "pending"

    for item_id, actions in (
        (ids[0], ["approve"]),
        (ids[1], ["reject"]),
        (ids[2], ["approve", "promote"]),
        (ids[3], ["request-changes"]),  # announces nothing
    ):
        for action in actions:
            body = {"note": "Add the venue."} if action == "request-changes" else {}
            response = await client.post(
                f"{PREFIX}/items/{item_id}/{action}", json=body, headers=curator_headers
            )
            assert response.status_code == 200, response.text
    receiver.received.clear()
    assert await deliver() == 4
    reviewed = sorted(
        (
            (b["data"]["id"], b["type"], b["data"]["status"])
            for b in (r.verify(hook["secret"]) for r in receiver.received)
        ),
    )
    assert reviewed == [
        (ids[0], "item.approved", "approved"),
        (ids[1], "item.rejected", "rejected"),
        (ids[2], "item.approved", "approved"),
        (ids[2], "item.merged", "merged"),
    ]
    page = await client.get(
        f"{PREFIX}/webhooks/{hook['id']}/deliveries",
        params={"per_page": 4, "page": 2},
        headers=admin_headers,
    )
    assert page.json()["meta"] | {} == {
        "current_page": 2,
        "per_page": 4,
        "total": 9,
        "last_page": 3,
    }


async def test_a_500_then_a_200_is_retried_and_succeeds(
    client: httpx.AsyncClient,
    admin_headers: Headers,
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    deliver: Deliver,
    subscribe: Subscribe,
    receiver: Receiver,
) -> None:
    await create_importer(slug="users", key=["email"], fields=USER_FIELDS)
    hook = await subscribe(["run.completed"])
    receiver.answers = [500]
    await upload("users", GOOD_CSV)
    await run_worker()
    assert await deliver() == 2
    first, second = receiver.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    second.verify(hook["secret"])
    [logged] = await deliveries(client, admin_headers, hook["id"])
    assert (logged["status"], logged["attempts"], logged["last_status_code"]) == (
        "succeeded",
        2,
        200,
    )
    shown = await client.get(f"{PREFIX}/webhooks/{hook['id']}", headers=admin_headers)
    assert shown.json()["data"]["consecutive_failures"] == 0


async def test_a_delivery_failing_every_retry_ends_failed(
    client: httpx.AsyncClient,
    admin_headers: Headers,
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    deliver: Deliver,
    subscribe: Subscribe,
    receiver: Receiver,
) -> None:
    await create_importer(slug="users", key=["email"], fields=USER_FIELDS)
    hook = await subscribe(["run.completed"])
    receiver.answers = [500, 503, 500, 200]
    await upload("users", GOOD_CSV)
    await run_worker()
    assert await deliver() == 3  # the first attempt and the two retries of the schedule
    [logged] = await deliveries(client, admin_headers, hook["id"])
    assert (logged["status"], logged["attempts"], logged["last_status_code"]) == (
        "failed",
        3,
        500,
    )
    assert logged["error"] == "HTTP 500." and logged["next_attempt_at"] is None
    assert (await deliveries(client, admin_headers, hook["id"], status="failed")) == [logged]
    assert (await deliveries(client, admin_headers, hook["id"], status="succeeded")) == []


def test_the_default_backoff_is_5s_30s_2min_15min_1h_6h_then_failed(settings: Settings) -> None:
    waits = [retry_in(attempts, settings) for attempts in range(1, 8)]
    assert waits == [5, 30, 120, 900, 3600, 21600, None]


async def test_a_failed_attempt_waits_its_backoff(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    deliver: Deliver,
    subscribe: Subscribe,
    receiver: Receiver,
    hook_settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(slug="users", key=["email"], fields=USER_FIELDS)
    await subscribe(["run.completed"])
    receiver.answers = [500]
    await upload("users", GOOD_CSV)
    await run_worker()
    hourly = hook_settings.model_copy(update={"webhook_retry_seconds": [3600.0]})
    assert await deliver(hourly) == 1  # the retry is not due yet
    async with session_factory() as session:
        wait = await session.scalar(
            text("SELECT extract(epoch FROM next_attempt_at - updated_at) FROM webhook_deliveries")
        )
    assert wait == 3600  # set with the failure, in its transaction


async def test_a_rolled_back_change_sends_nothing_and_a_committed_one_is_sent(
    create_importer: CreateImporter,
    upload: Upload,
    deliver: Deliver,
    subscribe: Subscribe,
    receiver: Receiver,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(slug="users", key=["email"], fields=USER_FIELDS)
    hook = await subscribe(["run.cancelled"])
    run_id = (await upload("users", GOOD_CSV)).json()["data"]["id"]

    async with session_factory() as session:
        run = await runs_service.get_run(session, run_id, lock=True)
        assert await runs_service.cancel_run(session, run) == "cancelled"
        assert await outbox_rows(session_factory) == 0  # not visible outside the transaction
        await session.rollback()
    assert await outbox_rows(session_factory) == 0
    assert await deliver() == 0 and receiver.received == []

    async with session_factory() as session:
        run = await runs_service.get_run(session, run_id, lock=True)
        await runs_service.cancel_run(session, run)
        await session.commit()
    assert await deliver() == 1
    assert receiver.received[0].verify(hook["secret"])["type"] == "run.cancelled"


async def test_after_a_rotation_both_secrets_sign_until_the_old_one_expires(
    client: httpx.AsyncClient,
    admin_headers: Headers,
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    deliver: Deliver,
    subscribe: Subscribe,
    receiver: Receiver,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await create_importer(slug="users", key=["email"], fields=USER_FIELDS)
    hook = await subscribe(["run.completed"])
    old = hook["secret"]
    rotated = await client.post(
        f"{PREFIX}/webhooks/{hook['id']}/rotate-secret", headers=admin_headers
    )
    new = rotated.json()["data"]["secret"]
    await upload("users", GOOD_CSV)
    await run_worker()
    assert await deliver() == 1
    [got] = receiver.received
    signatures = got.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    Webhook(new).verify(got.body, {**got.headers, "webhook-signature": signatures[0]})
    Webhook(old).verify(got.body, {**got.headers, "webhook-signature": signatures[1]})
    got.verify(old), got.verify(new)

    # A day later the old secret no longer signs.
    async with session_factory() as session:
        await session.execute(
            text(
                "UPDATE webhook_subscriptions SET previous_secret_expires_at = now() - "
                "interval '1 second'"
            )
        )
        await session.commit()
    await upload("users", GOOD_CSV)
    await run_worker()
    assert await deliver() == 1
    later = receiver.received[1]
    assert len(later.headers["webhook-signature"].split(" ")) == 1
    later.verify(new)
    with pytest.raises(Exception, match="No matching signature"):
        later.verify(old)


async def test_a_subscription_is_disabled_after_n_failed_deliveries_in_a_row(
    client: httpx.AsyncClient,
    admin_headers: Headers,
    push_importer: PushImporter,
    push: Push,
    run_worker: RunWorker,
    deliver: Deliver,
    subscribe: Subscribe,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await push_importer("event", chunk_size=1)
    hook = await subscribe(["item.staged"])
    receiver.answers = [500] * 100
    await push("event", [event(n) for n in range(3)], admin_headers)
    await run_worker()
    with caplog.at_level(logging.WARNING, logger="ingest.webhooks"):
        assert await deliver() == 9  # 3 deliveries x (1 attempt + 2 retries)
    shown = (await client.get(f"{PREFIX}/webhooks/{hook['id']}", headers=admin_headers)).json()
    data = shown["data"]
    assert data["enabled"] is False and data["disabled_at"] is not None
    assert data["disabled_reason"].startswith("Disabled after 3 failed deliveries in a row")
    assert data["consecutive_failures"] == 3
    assert any(f"subscription {hook['id']} disabled" in r.getMessage() for r in caplog.records)

    # Disabled: new events are not queued for it; re-enabled, they are again.
    await push("event", [event(10)], admin_headers)
    await run_worker()
    assert await deliver() == 0
    enabled = await client.patch(
        f"{PREFIX}/webhooks/{hook['id']}", json={"enabled": True}, headers=admin_headers
    )
    assert enabled.json()["data"]["consecutive_failures"] == 0
    assert enabled.json()["data"]["disabled_reason"] is None


async def test_a_redirect_is_not_followed(
    client: httpx.AsyncClient,
    admin_headers: Headers,
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    deliver: Deliver,
    subscribe: Subscribe,
    receiver: Receiver,
) -> None:
    await create_importer(slug="users", key=["email"], fields=USER_FIELDS)
    hook = await subscribe(["run.completed"], path="/redirect")
    await upload("users", GOOD_CSV)
    await run_worker()
    assert await deliver() == 3
    assert receiver.on("/landed") == []
    [logged] = await deliveries(client, admin_headers, hook["id"])
    assert (logged["status"], logged["last_status_code"]) == ("failed", 302)
    assert "redirects are not followed" in logged["error"]


async def test_a_large_answer_is_read_only_up_to_1_kb(
    client: httpx.AsyncClient,
    admin_headers: Headers,
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    deliver: Deliver,
    subscribe: Subscribe,
) -> None:
    await create_importer(slug="users", key=["email"], fields=USER_FIELDS)
    hook = await subscribe(["run.completed"], path="/big")
    await upload("users", GOOD_CSV)
    await run_worker()
    assert await deliver() == 1
    [logged] = await deliveries(client, admin_headers, hook["id"])
    assert logged["status"] == "succeeded"
    assert logged["response_excerpt"] == "x" * 1024


async def test_the_url_is_checked_again_when_sending(
    client: httpx.AsyncClient,
    admin_headers: Headers,
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    deliver: Deliver,
    subscribe: Subscribe,
    receiver: Receiver,
    hook_settings: Settings,
) -> None:
    await create_importer(slug="users", key=["email"], fields=USER_FIELDS)
    hook = await subscribe(["run.completed"])  # saved while loopback was allowed
    await upload("users", GOOD_CSV)
    await run_worker()
    strict = hook_settings.model_copy(update={"allow_private_urls": False})
    assert await deliver(strict) == 3
    assert receiver.received == []
    [logged] = await deliveries(client, admin_headers, hook["id"])
    assert logged["status"] == "failed" and logged["last_status_code"] is None
    assert "INGEST_ALLOW_PRIVATE_URLS" in logged["error"]


async def test_redeliver_sends_the_same_message_again(
    client: httpx.AsyncClient,
    admin_headers: Headers,
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    deliver: Deliver,
    subscribe: Subscribe,
    receiver: Receiver,
) -> None:
    await create_importer(slug="users", key=["email"], fields=USER_FIELDS)
    hook = await subscribe(["run.completed"])
    await upload("users", GOOD_CSV)
    await run_worker()
    assert await deliver() == 1
    [logged] = await deliveries(client, admin_headers, hook["id"])
    base = f"{PREFIX}/webhooks/{hook['id']}/deliveries"
    again = await client.post(f"{base}/{logged['id']}/redeliver", headers=admin_headers)
    assert again.status_code == 202, again.text
    assert (again.json()["data"]["status"], again.json()["data"]["attempts"]) == ("pending", 0)
    assert await deliver() == 1
    first, second = receiver.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == logged["message_id"]
    second.verify(hook["secret"])
    missing = await client.post(f"{base}/999999/redeliver", headers=admin_headers)
    assert missing.status_code == 404


async def test_a_receiver_that_does_not_answer_in_time_is_a_failed_attempt(
    client: httpx.AsyncClient,
    admin_headers: Headers,
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    deliver: Deliver,
    subscribe: Subscribe,
    receiver: Receiver,
    hook_settings: Settings,
) -> None:
    await create_importer(slug="users", key=["email"], fields=USER_FIELDS)
    hook = await subscribe(["run.completed"])
    await upload("users", GOOD_CSV)
    await run_worker()
    receiver.delay = 2
    quick = hook_settings.model_copy(
        update={"webhook_timeout_seconds": 0.2, "webhook_retry_seconds": []}
    )
    assert await deliver(quick) == 1
    [logged] = await deliveries(client, admin_headers, hook["id"])
    assert logged["status"] == "failed" and logged["last_status_code"] is None
    assert logged["error"] == "No answer within 0.2 s."
