"""The console's Jinja2 environment and the error pages of its routes.

Autoescaping is on for every template: item data and payloads are shown as text, never as HTML.
"""

import inspect
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import HTMLResponse

from app.auth.sessions import CSRF_FIELD, CSRF_HEADER
from app.core.errors import IngestError

HERE = Path(__file__).parent
PREFIX = "/console"
STATIC_URL = f"{PREFIX}/static"

templates = Jinja2Templates(directory=HERE / "templates")
templates.env.globals.update(
    CSRF_FIELD=CSRF_FIELD, CSRF_HEADER=CSRF_HEADER, PREFIX=PREFIX, STATIC_URL=STATIC_URL
)


def _pretty(value: Any) -> str:
    """A field's value as a cell shows it."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return orjson.dumps(value).decode()
    return str(value)


templates.env.filters["pretty"] = _pretty


def render(
    request: Request, name: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def is_console(request: Request) -> bool:
    return request.url.path == PREFIX or request.url.path.startswith(f"{PREFIX}/")


def install_error_pages(app: FastAPI) -> None:
    """Errors of console routes as pages (401: to the sign-in form); every other route keeps
    the API's JSON envelope, from the handlers installed before these."""

    def page(request: Request, status_code: int, message: str) -> Response:
        if status_code == 401:
            return RedirectResponse(f"{PREFIX}/sign-in", status_code=303)
        context = {"status_code": status_code, "message": message, "viewer": None}
        return render(request, "error.html", context, status_code=status_code)

    def wrap(kind: type[Exception], as_page: Any) -> None:
        json_handler = app.exception_handlers[kind]

        async def handler(request: Request, exc: Exception) -> Response:
            if is_console(request):
                shown: Response = as_page(request, exc)
                return shown
            response = json_handler(request, exc)
            return await response if inspect.isawaitable(response) else response

        app.add_exception_handler(kind, handler)

    wrap(IngestError, lambda r, e: page(r, e.status_code, e.message))
    wrap(
        StarletteHTTPException,
        lambda r, e: page(r, e.status_code, "No such page." if e.status_code == 404 else e.detail),
    )
    wrap(
        RequestValidationError,
        lambda r, e: page(r, 400, "The address has a parameter the console cannot read."),
    )
