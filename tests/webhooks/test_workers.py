"""Two real `ingest worker` processes share the outbox: every event is delivered exactly once."""

from collections import Counter

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from tests.items.conftest import Push, PushImporter, event
from tests.webhooks.conftest import Headers, Receiver, Subscribe
from tests.worker.processes import fetch, start_worker, wait_exit, wait_for, workers

ITEMS = 200


async def _succeeded(factory: async_sessionmaker[AsyncSession]) -> int:
    rows = await fetch(
        factory, "SELECT count(*) FROM webhook_deliveries WHERE status = 'succeeded'"
    )
    return int(rows[0][0])


async def test_two_worker_processes_deliver_each_event_exactly_once(
    settings: Settings,
    admin_headers: Headers,
    push_importer: PushImporter,
    push: Push,
    subscribe: Subscribe,
    receiver: Receiver,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await push_importer("event", approval="manual", chunk_size=20)
    hook = await subscribe(["item.staged", "run.completed"])
    receiver.delay = 0.02
    pushed = await push("event", [event(n) for n in range(ITEMS)], admin_headers)
    assert pushed.status_code == 202, pushed.text
    expected = ITEMS + 1  # every item staged, and the run's end

    env = {"INGEST_ALLOW_PRIVATE_URLS": "true", "INGEST_WEBHOOK_POLL_SECONDS": "0.5"}
    with workers() as procs:
        procs += [start_worker(settings, **env), start_worker(settings, **env)]
        await wait_for(lambda: _ready(session_factory, expected), "every delivery to succeed", 90)
        # A graceful stop lets any attempt still in flight finish before the count.
        for proc in procs:
            proc.terminate()
        for proc in procs:
            assert await wait_exit(proc, 60) is not None
    ids = Counter(r.headers["webhook-id"] for r in receiver.on("/hook"))
    assert len(ids) == expected
    assert ids.most_common(1)[0][1] == 1, ids.most_common(3)
    types = Counter(r.verify(hook["secret"])["type"] for r in receiver.on("/hook"))
    assert types == {"item.staged": ITEMS, "run.completed": 1}


async def _ready(factory: async_sessionmaker[AsyncSession], expected: int) -> bool:
    return await _succeeded(factory) >= expected
