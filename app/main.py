"""The application factory: routers, error handlers and the lifespan that owns resources."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__
from app.console import install_console
from app.core import metrics
from app.core.config import Settings, get_settings
from app.core.db import create_engine, create_session_factory
from app.core.docs import install_docs
from app.core.errors import install_error_handlers
from app.core.health import router as health_router
from app.core.logs import RequestId, configure_logging
from app.core.openapi import operation_id
from app.core.params import RefuseNul
from app.core.queue import close_queue, create_queue
from app.routers import api_routers
from app.runs.live import EventsHub, listen_dsn

log = logging.getLogger("ingest")

DESCRIPTION = """
Ingest brings data in: uploaded CSV/XLSX/JSON files, URLs pulled on a schedule and JSON items
pushed by agents. Every row is validated and de-duplicated; good rows land in the records
store (or are staged for review). Every route but health needs `Authorization: Bearer <token>`.
"""

TAGS = [
    {"name": "runs", "description": "Runs: upload, trigger, watch, cancel, retry, errors."},
    {"name": "importers", "description": "Pipeline definitions."},
    {"name": "records", "description": "Collections' records, one typed table each."},
    {"name": "sources", "description": "Ingestion sources and their tokens."},
    {"name": "items", "description": "Agent push and the human review workflow."},
    {"name": "tokens", "description": "Service tokens."},
    {"name": "workers", "description": "Worker processes and their heartbeats."},
    {"name": "webhooks", "description": "Signed event deliveries to your URLs."},
    {"name": "health", "description": "Liveness and readiness probes."},
]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings.require_database_url())
        app.state.engine = engine
        app.state.session_factory = create_session_factory(engine)
        app.state.queue = create_queue(settings.require_redis_url(), settings.queue_name)
        # The LISTEN connection of run streams: opened by the first stream, closed here.
        app.state.events_hub = EventsHub(listen_dsn(settings.require_database_url()))
        settings.storage_dir.mkdir(parents=True, exist_ok=True)
        await on_startup(app)
        try:
            yield
        finally:
            await app.state.events_hub.close()
            await close_queue(app.state.queue)
            await engine.dispose()

    app = FastAPI(
        title="Ingest",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
        # /docs and /redoc come from install_docs, with their assets served here, not a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    configure_logging(settings)
    install_docs(app)
    install_error_handlers(app)
    app.add_middleware(RefuseNul)
    # Per app, not prometheus_client's global registry (several apps live in one test run).
    app.state.metrics_registry = metrics.create_registry()
    app.state.work_totals = metrics.WorkTotals()
    app.add_middleware(metrics.HttpMetrics, registry=app.state.metrics_registry)
    app.add_middleware(RequestId)  # outermost of ours: every log line of a request has its id
    app.include_router(health_router)
    app.include_router(metrics.router)
    for router in api_routers():
        app.include_router(router, prefix=settings.api_prefix)
    install_console(app)  # after the error handlers: its pages render the console's errors
    return app


async def on_startup(app: FastAPI) -> None:
    """Start-up work that needs the database (importer files are loaded here)."""
    from app.importers.loader import load_importers_on_startup

    await load_importers_on_startup(app)
