"""Every API router, in matching order: fixed paths (``/importers``, ``/upload``...) come before
the runs router's ``/{run}`` (which only matches integers anyway)."""

from fastapi import APIRouter


def api_routers() -> list[APIRouter]:
    from app.auth.router import router as tokens
    from app.importers.router import router as importers
    from app.items.router import router as items
    from app.records.router import router as records
    from app.runs.intake import router as intake
    from app.runs.router import router as runs
    from app.sources.router import router as sources
    from app.webhooks.router import router as webhooks
    from app.worker.router import router as workers

    return [importers, sources, items, records, tokens, workers, webhooks, intake, runs]
