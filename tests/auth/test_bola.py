"""BOLA: a token bound to source A asks for source B's objects by id → 404 (never 403, so ids
do not leak) and nothing changes.

Table-driven: add a ``BolaCase`` for every route that takes an id (runs, rows, items ...).
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth import service as auth_service
from app.core.db import unit_of_work
from app.importers import service as importers_service
from app.items.models import Item
from app.runs import service as runs_service
from app.runs.models import RunRow
from tests.auth.conftest import MakeSource
from tests.auth.helpers import bearer
from tests.conftest import MakeToken

PREFIX = "/api/v1/ingest"

# Creates source B's object in the session and returns the path parameters that name it.
Factory = Callable[[AsyncSession, int], Awaitable[dict[str, Any]]]


def importer_definition(slug: str, source_id: int) -> dict[str, Any]:
    return {
        "slug": slug,
        "collection": slug.replace("-", "_"),
        "source_id": source_id,
        "key": ["email"],
        "fields": {"email": {"type": "email", "required": True}},
    }


async def importer_of(session: AsyncSession, source_id: int) -> dict[str, Any]:
    definition = importers_service.parse_definition(
        importer_definition(f"importer-of-{source_id}", source_id)
    )
    importer = await importers_service.create(session, definition)
    return {"slug": importer.slug}


async def run_of(session: AsyncSession, source_id: int) -> dict[str, Any]:
    """A finished run of source B's importer, with one failed row."""
    definition = importers_service.parse_definition(
        importer_definition(f"runs-of-{source_id}", source_id)
    )
    importer = await importers_service.create(session, definition)
    run = await runs_service.create_run(
        session, importer, kind="upload", source_id=source_id, columns=["email"]
    )
    run.status, run.total, run.processed, run.failed = "completed_with_errors", 1, 1, 1
    session.add(
        RunRow(
            run_id=run.id,
            row_number=1,
            status="failed",
            data={"email": "nope"},
            errors={"message": "The given data was invalid."},
        )
    )
    await session.flush()
    return {"run": run.id}


async def item_of(session: AsyncSession, source_id: int) -> dict[str, Any]:
    item = Item(type="event", status="pending", source_id=source_id, collection="events", data={})
    session.add(item)
    await session.flush()
    return {"item_id": item.id}


async def source_of(session: AsyncSession, source_id: int) -> dict[str, Any]:
    return {"source_id": source_id}


async def token_of(session: AsyncSession, source_id: int) -> dict[str, Any]:
    user = await auth_service.get_or_create_user(session, f"agent-{source_id}@example.test")
    issued = await auth_service.issue_token(
        session, user, "agent", ["ingest:create"], source_id=source_id
    )
    return {"token_id": issued.token.id}


@dataclass(frozen=True)
class BolaCase:
    method: str
    path: str  # under the API prefix, formatted with the factory's parameters
    factory: Factory
    json: dict[str, Any] | None = None
    marks: tuple[Any, ...] = field(default=())

    def param(self) -> Any:
        return pytest.param(self, id=f"{self.method} {self.path}", marks=self.marks)


CASES = [
    BolaCase("GET", "/importers/{slug}", importer_of),
    BolaCase(
        "PUT",
        "/importers/{slug}",
        importer_of,
        # A full, valid definition (the slug comes from the path), so a leak would show.
        json={
            "name": "hijacked",
            "collection": "hijacked",
            "key": ["email"],
            "fields": {"email": {"type": "email"}},
        },
    ),
    BolaCase("DELETE", "/importers/{slug}", importer_of),
    BolaCase("DELETE", "/tokens/{token_id}", token_of),
    BolaCase("GET", "/{run}", run_of),
    BolaCase("GET", "/{run}/rows", run_of),
    BolaCase("GET", "/{run}/events", run_of),
    BolaCase("GET", "/{run}/stream", run_of),  # a finished run: the stream ends at once
    BolaCase("GET", "/{run}/errors/summary", run_of),
    BolaCase("GET", "/{run}/failed-rows/download", run_of),
    BolaCase("POST", "/{run}/cancel", run_of),
    BolaCase("POST", "/{run}/retry", run_of),
    BolaCase("GET", "/items/{item_id}", item_of),
    BolaCase("POST", "/items/{item_id}/approve", item_of),
    BolaCase("POST", "/items/{item_id}/reject", item_of),
    BolaCase("POST", "/items/{item_id}/request-changes", item_of, json={"note": "fix it"}),
    BolaCase("POST", "/items/{item_id}/retarget", item_of, json={"type": "place"}),
    BolaCase("POST", "/items/{item_id}/promote", item_of),
    BolaCase("GET", "/sources/{source_id}", source_of),
    BolaCase("PUT", "/sources/{source_id}", source_of, json={"name": "hijacked"}),
    BolaCase("DELETE", "/sources/{source_id}", source_of),
    BolaCase("POST", "/sources/{source_id}/pause", source_of),
    BolaCase("POST", "/sources/{source_id}/resume", source_of),
    BolaCase("POST", "/sources/{source_id}/sync", source_of),
    BolaCase("POST", "/sources/{source_id}/import", source_of),
    BolaCase("POST", "/sources/{source_id}/tokens", source_of, json={"name": "n8n"}),
]


async def snapshot(session_factory: async_sessionmaker[AsyncSession]) -> dict[str, list[str]]:
    """Every row of every table, to show that a refused request changed nothing."""
    async with session_factory() as session:
        tables = (
            await session.scalars(
                text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                    "AND tablename <> 'alembic_version' ORDER BY tablename"
                )
            )
        ).all()
        return {
            table: sorted(
                (await session.scalars(text(f'SELECT to_jsonb(t)::text FROM "{table}" t'))).all()
            )
            for table in tables
        }


@pytest.mark.parametrize("case", [case.param() for case in CASES])
async def test_a_source_bound_token_gets_404_for_another_source_and_changes_nothing(
    client: httpx.AsyncClient,
    make_token: MakeToken,
    make_source: MakeSource,
    session_factory: async_sessionmaker[AsyncSession],
    case: BolaCase,
) -> None:
    a, b = await make_source("a"), await make_source("b")
    async with unit_of_work(session_factory) as session:
        mine = await case.factory(session, a)
        theirs = await case.factory(session, b)
    # An admin token (user role admin): only the source scope can stand in the way.
    headers = bearer(await make_token(role="admin", abilities=["ingest:admin"], source_id=a))
    # First use writes last_used_at; do it before the snapshot.
    assert (await client.get(f"{PREFIX}/importers", headers=headers)).status_code == 200

    before = await snapshot(session_factory)
    response = await client.request(
        case.method, PREFIX + case.path.format(**theirs), json=case.json, headers=headers
    )
    assert response.status_code == 404, response.text
    assert await snapshot(session_factory) == before

    # The control: the same token reaches its own source's object of the same kind.
    if case.method == "GET":
        own = await client.get(PREFIX + case.path.format(**mine), headers=headers)
        assert own.status_code == 200, own.text


async def test_a_source_bound_token_lists_only_its_source_importers(
    client: httpx.AsyncClient,
    make_token: MakeToken,
    make_source: MakeSource,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    a, b = await make_source("a"), await make_source("b")
    async with unit_of_work(session_factory) as session:
        mine = await importer_of(session, a)
        await importer_of(session, b)
    headers = bearer(await make_token(abilities=["ingest:view"], source_id=a))
    listed = (await client.get(f"{PREFIX}/importers", headers=headers)).json()["data"]
    assert [importer["slug"] for importer in listed] == [mine["slug"]]
