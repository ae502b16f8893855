"""Logging: human-readable lines by default, one JSON object per line with
``INGEST_LOG_FORMAT=json``: ``ts``, ``level``, ``logger``, ``message``, and where they apply
``request_id`` (the API), ``run_id``, ``chunk`` and ``importer`` (workers), ``exc`` (a
traceback).

The standard library does it: a formatter and a context variable that ``bound`` sets for the
time of a request or a job (each arq job and each request runs in a task of its own, so what
one binds never shows in another's lines). structlog would add a second logging API for what
these few fields need.
"""

import contextlib
import contextvars
import logging
import re
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.config import Settings

TEXT_FORMAT = "%(asctime)s %(name)s %(message)s"

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "ingest_log_context", default=None
)


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Every log line written inside the block carries ``fields`` (in JSON format)."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def current() -> dict[str, Any]:
    return _context.get() or {}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **current(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure_logging(settings: Settings) -> None:
    """In JSON format, the root logger's one handler (set again: replaces the previous one),
    which uvicorn's and arq's loggers reach too. The text format changes nothing: each
    process logs as it always did (uvicorn its own lines, the worker ``TEXT_FORMAT``)."""
    if settings.log_format != "json":
        return
    root = logging.getLogger()
    root.setLevel(settings.log_level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.handlers = [handler]
    # uvicorn's own loggers (given handlers of their own by uvicorn's config) go to the root.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "arq"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True


# What a client may send as its request id: short, and nothing that could forge a log line.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


class RequestId:
    """ASGI middleware: the request's id, from ``X-Request-ID`` when the client sent a
    well-formed one or else a new one, bound to the request's log lines and echoed in the
    response's ``X-Request-ID``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = sent if _REQUEST_ID.match(sent) else uuid.uuid4().hex

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"
                ]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        with bound(request_id=request_id):
            await self.app(scope, receive, sending)
