"""Typed domain errors and the one handler that renders every error as SPEC's JSON envelope."""

from collections.abc import Mapping
from typing import Any

import fastapi.routing
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

# Newer FastAPI includes routers lazily: `app.routes` then holds one entry per included router,
# which `iter_route_contexts` flattens into the routes as served. Older FastAPI lists them flat.
_served_routes: Any = getattr(fastapi.routing, "iter_route_contexts", iter)


class IngestError(Exception):
    """Base of every error a service may raise; carries its HTTP status."""

    status_code = 400
    default_message = "Bad request."
    # Response headers the error goes with (e.g. `Retry-After`).
    headers: dict[str, str] | None = None

    def __init__(self, message: str | None = None, *, errors: dict[str, list[str]] | None = None):
        self.message = message or self.default_message
        self.errors = errors
        super().__init__(self.message)


class BadRequest(IngestError):
    status_code = 400


class Unauthenticated(IngestError):
    status_code = 401
    default_message = "Unauthenticated."


class Forbidden(IngestError):
    status_code = 403
    default_message = "This action is unauthorized."


class NotFound(IngestError):
    status_code = 404
    default_message = "Not found."


class Conflict(IngestError):
    status_code = 409
    default_message = "The resource is in a conflicting state."


class PayloadTooLarge(IngestError):
    status_code = 413
    default_message = "The payload is too large."


class UnsupportedMediaType(IngestError):
    status_code = 415
    default_message = "Unsupported file type."


class ValidationFailed(IngestError):
    status_code = 422
    default_message = "The given data was invalid."


class TooManyRequests(IngestError):
    """Back-pressure: the client should come back after ``retry_after`` seconds."""

    status_code = 429
    default_message = "Too many requests."

    def __init__(self, message: str | None = None, *, retry_after: int):
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


# The type of the validation error raised for an id in the path beyond its column's range.
UNKNOWN_ID = "unknown_id"


class ErrorBody(BaseModel):
    """Every error response: a message, plus per-field messages for 422."""

    message: str
    errors: dict[str, list[str]] | None = None


# What each error status means on this API (SPEC §5), as OpenAPI describes it.
ERROR_DESCRIPTIONS = {
    400: "Bad request: the body could not be read, or the action does not apply.",
    401: "Unauthenticated: no bearer token, or an invalid, expired or revoked one.",
    403: "Forbidden: the token lacks the ability, or acts for another source.",
    404: "Not found, or not visible to this token.",
    405: "The method is not served on this path (`Allow` names those that are).",
    409: "Conflict with the resource's current state.",
    413: "Too large.",
    415: "Unsupported file type.",
    422: "Invalid input: `message` says why, `errors` names the fields.",
    429: "The work queue is full: try again after `Retry-After` seconds.",
}

# Response headers an error status always comes with, as OpenAPI describes them.
ERROR_HEADERS: dict[int, dict[str, Any]] = {
    429: {
        "Retry-After": {
            "description": "Seconds to wait before trying again.",
            "schema": {"type": "integer", "minimum": 1},
        }
    }
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """Declare error responses on a route so they show in OpenAPI."""
    return {
        code: {
            "model": ErrorBody,
            "description": ERROR_DESCRIPTIONS.get(code, "Error."),
            **({"headers": ERROR_HEADERS[code]} if code in ERROR_HEADERS else {}),
        }
        for code in codes
    }


def error_response(
    status_code: int,
    message: str,
    errors: dict[str, list[str]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The envelope every error is sent in."""
    body: dict[str, Any] = {"message": message}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status_code, headers=headers)


def validation_response(errors: dict[str, list[str]]) -> JSONResponse:
    """A 422 whose message is the first field message (and how many more there are)."""
    first = next(iter(errors.values()))[0] if errors else "The given data was invalid."
    extra = sum(len(v) for v in errors.values()) - 1
    message = first if extra <= 0 else f"{first} (and {extra} more error{'s' * (extra > 1)})"
    return error_response(422, message, errors)


def _field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    # Drop the request part ("body", "query", ...) so clients see `fields.age.type`.
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie", "form"):
        parts = parts[1:]
    return ".".join(str(p) for p in parts) or "body"


def validation_errors(items: Any) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    for item in items:
        msg = str(item.get("msg", "Invalid value."))
        msg = msg.removeprefix("Value error, ")
        errors.setdefault(_field_path(item.get("loc", ())), []).append(msg)
    return errors


def _not_json(error: Any, document: Any) -> dict[str, list[str]]:
    """FastAPI's own error for a body that is not JSON names the offset as if it were a field
    (``{"9": ["JSON decode error"]}``): the body is what is wrong, and where is in the text."""
    reason = str((error.get("ctx") or {}).get("error") or "JSON decode error")
    loc = error.get("loc", ())
    offset = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else None
    where = ""
    if offset is not None and isinstance(document, str | bytes):
        text = document if isinstance(document, str) else document.decode("utf-8", "replace")
        line = text.count("\n", 0, offset) + 1
        column = offset - (text.rfind("\n", 0, offset) + 1) + 1
        where = f" at line {line}, column {column}"
    return {"body": [f"The request body is not valid JSON: {reason}{where}."]}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(IngestError)
    async def _ingest_error(_: Request, exc: IngestError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else exc.headers
        return error_response(exc.status_code, exc.message, exc.errors, headers)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        # An id in the path that its column cannot hold names no resource (app/core/params.py).
        unknown = [e for e in exc.errors() if e.get("type") == UNKNOWN_ID]
        if unknown:
            return error_response(404, str(unknown[0]["msg"]))
        invalid_json = [e for e in exc.errors() if e.get("type") == "json_invalid"]
        if invalid_json:
            return validation_response(_not_json(invalid_json[0], exc.body))
        return validation_response(validation_errors(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 405:
            return _method_not_allowed(request)
        message = exc.detail if isinstance(exc.detail, str) else "Request failed."
        if exc.status_code == 404 and message == "Not Found":
            message = "Not found."
        return error_response(exc.status_code, message, headers=exc.headers)


def _method_not_allowed(request: Request) -> JSONResponse:
    """405 whose ``Allow`` names every method of every route matching the path.

    Starlette's own names only the first route it matched (one per method here), so OPTIONS on
    ``/importers/{slug}`` would say GET though PUT and DELETE are served there too.
    """
    allowed: set[str] = set()
    # Asked with a method no route serves, a route matches the path only partly, or not at all.
    unserved = {**request.scope, "method": ""}
    for route in _served_routes(request.app.routes):
        match, _ = route.matches(unserved)
        if match is not Match.NONE:
            allowed |= set(getattr(route, "methods", None) or ())
    allow = ", ".join(sorted(allowed))
    message = f"The {request.method} method is not supported here. Supported methods: {allow}."
    return error_response(405, message, headers={"Allow": allow})
