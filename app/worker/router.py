"""``GET /workers`` (admin): the workers' heartbeats and the leases they hold."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from app.auth.dependencies import Principal, require
from app.auth.permissions import ADMIN
from app.core.deps import SessionDep, SettingsDep
from app.core.errors import error_responses
from app.core.pagination import Page, PageParams, page_params, paginate
from app.runs.models import Worker
from app.worker.service import live_workers_query

# 422: a parameter out of range, or a NUL anywhere in the query (app/core/params.py).
router = APIRouter(prefix="/workers", tags=["workers"], responses=error_responses(401, 403, 422))


class WorkerOut(BaseModel):
    id: str = Field(description="host:pid:random, as its leases name it.")
    host: str
    pid: int
    started_at: datetime
    last_beat: datetime = Field(description="Renewed every third of INGEST_LEASE_SECONDS.")
    jobs: int = Field(description="Splits and chunks it holds a lease on, as of its last beat.")


def to_resource(worker: Worker) -> dict[str, Any]:
    return {
        "id": worker.id,
        "host": worker.host,
        "pid": worker.pid,
        "started_at": worker.started_at,
        "last_beat": worker.last_beat,
        "jobs": worker.jobs,
    }


@router.get("", response_model=Page[WorkerOut])
async def list_workers(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    params: Annotated[PageParams, Depends(page_params)],
    _: Annotated[Principal, Depends(require(ADMIN))],
) -> dict[str, Any]:
    """Workers with a recent heartbeat, the latest started first."""
    query = live_workers_query(settings.lease_seconds)
    return await paginate(session, request, query, params, to_resource)
