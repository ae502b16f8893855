"""Typed domain errors and the one handler that renders every error as SPEC's JSON envelope."""

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException


class IngestError(Exception):
    """Base of every error a service may raise; carries its HTTP status."""

    status_code = 400
    default_message = "Bad request."

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


class ErrorBody(BaseModel):
    """Every error response: a message, plus per-field messages for 422."""

    message: str
    errors: dict[str, list[str]] | None = None


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """Declare error responses on a route so they show in OpenAPI."""
    return {code: {"model": ErrorBody} for code in codes}


def _body(message: str, errors: dict[str, list[str]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"message": message}
    if errors is not None:
        body["errors"] = errors
    return body


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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(IngestError)
    async def _ingest_error(_: Request, exc: IngestError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse(
            _body(exc.message, exc.errors), status_code=exc.status_code, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(exc.errors())
        first = next(iter(errors.values()))[0] if errors else "The given data was invalid."
        extra = sum(len(v) for v in errors.values()) - 1
        message = first if extra <= 0 else f"{first} (and {extra} more error{'s' * (extra > 1)})"
        return JSONResponse(_body(message, errors), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "Request failed."
        if exc.status_code == 404 and message == "Not Found":
            message = "Not found."
        return JSONResponse(_body(message), status_code=exc.status_code, headers=exc.headers)
