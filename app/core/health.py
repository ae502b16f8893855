"""Liveness and readiness probes (no auth)."""

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from app.core.storage import storage_of

router = APIRouter(tags=["health"])

PROBE_TIMEOUT = 3.0


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    message: str
    checks: dict[str, str]


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


async def _check_postgres(request: Request) -> None:
    async with request.app.state.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def _check_redis(request: Request) -> None:
    await request.app.state.queue.ping()


async def _check_storage(request: Request) -> None:
    await storage_of(request.app.state.settings).check()


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(request: Request) -> JSONResponse:
    """Postgres, Redis and the storage all answer."""
    checks: dict[str, str] = {}
    probes = (("postgres", _check_postgres), ("redis", _check_redis), ("storage", _check_storage))
    for name, probe in probes:
        try:
            await asyncio.wait_for(probe(request), PROBE_TIMEOUT)
            checks[name] = "ok"
        except Exception as exc:  # any failure means "not ready"; say which and why
            checks[name] = f"unavailable: {type(exc).__name__}: {exc}"[:300]
    failing = [name for name, state in checks.items() if state != "ok"]
    if failing:
        message = f"Not ready: {', '.join(failing)} unreachable."
        return JSONResponse({"message": message, "checks": checks}, status_code=503)
    return JSONResponse({"message": "Ready.", "checks": checks})
