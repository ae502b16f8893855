"""Prometheus metrics: ``GET /metrics`` (text format), behind its own bearer token.

The API answers for the whole service, workers included: what workers do is already in
Postgres (each chunk's ``chunk_applied`` event holds its rows by outcome and its duration, each
``split_finished`` follows its ``split_started``), so a scrape reads it there instead of each
worker serving a port of its own (one port per process, clashing on a host with several
workers, and a scrape config to keep in step with the fleet). Nothing is added to the chunk
path.

- Counters and histograms of worker activity fold in the events committed since the last
  scrape: ``run_events`` read after the process's cursor (app/runs/events.py, the order that
  never skips an event committed late), so a scrape costs the events since the previous one.
  They restart from the events still stored when an API process starts (a counter reset to
  Prometheus), and grow identically on every API process: scrape one, or take ``max``.
- Gauges are computed at scrape time: the queue's depth (one ZCARD), runs by status (one
  GROUP BY on an indexed column), the oldest run still waiting for chunks, webhook
  deliveries by status (when the webhooks' table exists).
- HTTP requests: a histogram by method, route template and status, kept by ``HttpMetrics``
  (an ASGI middleware: one observation per request).
"""

import asyncio
import hmac
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

import asyncpg
import fastapi.routing
import orjson
from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.db import raw_connection
from app.core.errors import NotFound, Unauthenticated
from app.core.queue import queue_depth
from app.runs.events import Cursor
from app.runs.schemas import RunStatus

CHUNK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
SPLIT_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Events folded in per query: a first scrape over a long history reads it in pages.
PAGE_EVENTS = 5000
UNMATCHED = "unmatched"  # the route label of a request no route answered (404, 405)
# Newer FastAPI includes routers lazily: `iter_route_contexts` flattens them as served.
_served_routes: Any = getattr(fastapi.routing, "iter_route_contexts", iter)


class HttpMetrics:
    """ASGI middleware: each HTTP request's duration, by method, route template (the
    route's path with its ``{placeholders}``, never the raw path: bounded cardinality) and
    status. A streamed response counts until its last byte."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        # Newer FastAPI hands an included router's routes over as declared, without the
        # prefix: their full templates come from the route table, as served.
        self._templates: dict[int, str] | None = None
        self.duration = Histogram(
            "ingest_http_request_duration_seconds",
            "HTTP requests by method, route template and status: their duration.",
            ["method", "route", "status"],
            buckets=HTTP_BUCKETS,
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless the app answers something

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            template = self._template(scope)
            self.duration.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - started
            )

    def _template(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is None:
            return UNMATCHED
        if self._templates is None:
            self._templates = {
                id(served.original_route if hasattr(served, "original_route") else served): (
                    getattr(served, "path_format", None) or ""
                )
                for served in _served_routes(scope["app"].routes)
            }
        return self._templates.get(id(route)) or str(getattr(route, "path_format", UNMATCHED))


@dataclass
class _Histogram:
    buckets: Sequence[float]
    counts: list[int] = field(default_factory=list)  # per bucket, then +Inf
    total: float = 0.0

    def observe(self, value: float) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.buckets) + 1)
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip([*map(str, self.buckets), "+Inf"], self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


_EVENTS = f"""
SELECT e.id, e.xid::text AS xid, e.type, r.importer_slug AS importer, r.dry_run,
       e.data::text AS data,
       CASE WHEN e.type = 'split_finished' THEN extract(epoch FROM e.at - (
           SELECT max(s.at) FROM run_events s
           WHERE s.run_id = e.run_id AND s.type = 'split_started' AND s.id < e.id)) END
         AS split_s
FROM run_events e JOIN runs r ON r.id = e.run_id
WHERE e.type IN ('chunk_applied', 'split_finished')
  AND (e.xid, e.id) > (CAST($1 AS text)::xid8, $2)
  AND e.xid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY e.xid, e.id LIMIT {PAGE_EVENTS}
"""


@dataclass
class WorkTotals:
    """What workers did, folded in from the run events committed since the last scrape."""

    cursor: Cursor = field(default_factory=lambda: Cursor(0, 0))
    rows: dict[tuple[str, str, str], float] = field(default_factory=dict)
    chunks: dict[str, _Histogram] = field(default_factory=dict)
    splits: dict[str, _Histogram] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def catch_up(self, conn: asyncpg.Connection) -> None:
        async with self.lock:  # two scrapes at once must not fold the same events twice
            while True:
                rows = await conn.fetch(_EVENTS, str(self.cursor.xid), self.cursor.id)
                for row in rows:
                    self._fold(row)
                if rows:
                    self.cursor = Cursor(int(rows[-1]["xid"]), rows[-1]["id"])
                if len(rows) < PAGE_EVENTS:
                    return

    def _fold(self, row: asyncpg.Record) -> None:
        importer = row["importer"]
        if row["type"] == "split_finished":
            if row["split_s"] is not None:
                self.splits.setdefault(importer, _Histogram(SPLIT_BUCKETS)).observe(
                    float(row["split_s"])
                )
            return
        data = orjson.loads(row["data"]) if row["data"] else {}
        dry_run = "true" if row["dry_run"] else "false"
        for outcome, count in (data.get("rows") or {}).items():
            key = (importer, outcome, dry_run)
            self.rows[key] = self.rows.get(key, 0) + float(count or 0)
        if data.get("duration_ms") is not None:
            self.chunks.setdefault(importer, _Histogram(CHUNK_BUCKETS)).observe(
                float(data["duration_ms"]) / 1000
            )

    def families(self) -> Iterable[Metric]:
        rows = CounterMetricFamily(
            "ingest_rows_processed",
            "Rows applied by workers, by importer, outcome (created, updated, unchanged, "
            "skipped, staged, failed) and whether the run was a dry run.",
            labels=["importer", "outcome", "dry_run"],
        )
        for labels, value in sorted(self.rows.items()):
            rows.add_metric(list(labels), value)
        yield rows
        for name, doc, by in (
            (
                "ingest_chunk_apply_duration_seconds",
                "Chunks applied by workers, by importer: the time each took to apply.",
                self.chunks,
            ),
            (
                "ingest_split_duration_seconds",
                "Inputs split into chunks, by importer: from the split's start to its end.",
                self.splits,
            ),
        ):
            family = HistogramMetricFamily(name, doc, labels=["importer"])
            for importer, histogram in sorted(by.items()):
                family.add_metric([importer], histogram.cumulative(), histogram.total)
            yield family


RUN_STATUSES: tuple[str, ...] = get_args(RunStatus.__value__)

# The age of the oldest run that still has chunks to apply, since its split started (chunks
# keep no time of their own): runs by status from their index, each one's chunks by its key.
_OLDEST_PENDING = """
SELECT extract(epoch FROM now() - min(r.started_at)) FROM runs r
WHERE r.status = 'processing'
  AND EXISTS (SELECT 1 FROM run_chunks c WHERE c.run_id = r.id AND c.status = 'pending')
"""


async def _gauges(request: Request, conn: asyncpg.Connection) -> list[Metric]:
    found: list[Metric] = []
    settings = request.app.state.settings
    depth = await queue_depth(request.app.state.queue, settings.queue_name)
    if depth is not None:  # Redis unreachable: no value rather than a wrong one
        queue = GaugeMetricFamily(
            "ingest_queue_depth", "Jobs in the work queue, waiting or running."
        )
        queue.add_metric([], depth)
        found.append(queue)

    oldest = await conn.fetchval(_OLDEST_PENDING)
    age = GaugeMetricFamily(
        "ingest_oldest_pending_chunk_age_seconds",
        "Age of the oldest run with chunks still to apply, since its split started "
        "(0 when none waits).",
    )
    age.add_metric([], float(oldest or 0))
    found.append(age)

    counted = dict(await conn.fetch("SELECT status, count(*) FROM runs GROUP BY status"))
    runs = GaugeMetricFamily("ingest_runs", "Runs stored, by status.", labels=["status"])
    for status in sorted({*RUN_STATUSES, *counted}):
        runs.add_metric([status], counted.get(status, 0))
    found.append(runs)

    # Webhooks are their own package (app/webhooks): read through the table alone, and
    # skipped where it is not (yet) there.
    if await conn.fetchval("SELECT to_regclass('webhook_deliveries') IS NOT NULL"):
        try:
            async with conn.transaction():  # a savepoint: a changed table fails this alone
                by_status = await conn.fetch(
                    "SELECT status, count(*) FROM webhook_deliveries GROUP BY status"
                )
        except asyncpg.PostgresError:
            by_status = None
        if by_status is not None:
            deliveries = GaugeMetricFamily(
                "ingest_webhook_deliveries",
                "Webhook deliveries stored, by status (pending, succeeded, failed...).",
                labels=["status"],
            )
            for status, count in sorted(by_status):
                deliveries.add_metric([status], count)
            found.append(deliveries)
    return found


class _Snapshot(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def create_registry() -> CollectorRegistry:
    """The process's own registry (not prometheus_client's global one: an app per test)."""
    return CollectorRegistry(auto_describe=True)


def _check_token(request: Request) -> None:
    token = request.app.state.settings.metrics_token
    if token is None:
        raise NotFound("Metrics are off: set INGEST_METRICS_TOKEN to serve them.")
    expected = f"Bearer {token.get_secret_value()}".encode()
    given = request.headers.get("authorization", "").encode()
    if not hmac.compare_digest(given, expected):
        raise Unauthenticated()


router = APIRouter()


# Not a user token's ability: a scraper holds INGEST_METRICS_TOKEN, and nothing else.
@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus metrics, text format."""
    _check_token(request)
    state: Any = request.app.state
    async with state.session_factory() as session:
        conn = await raw_connection(session)
        await state.work_totals.catch_up(conn)
        gauges = await _gauges(request, conn)
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(_Snapshot([*state.work_totals.families(), *gauges]))
    body = generate_latest(scrape) + generate_latest(state.metrics_registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
