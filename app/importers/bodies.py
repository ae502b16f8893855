"""The body of the routes that take an importer definition: JSON, or YAML as the importer files
are written (``Content-Type: application/yaml``; ``application/x-yaml`` and ``text/yaml`` too).

``DefinitionRoute`` reads the body itself, at most ``MAX_DEFINITION_BYTES`` whatever its type,
and parses YAML with ``yaml.safe_load`` as app/importers/loader.py does. FastAPI then gets the
object a JSON body would have parsed to, so both go through the same validation and get the same
answers: the same 422s with the same field paths (a YAML body that is not a mapping gets the
answer of a JSON body that is not an object). A body that is not YAML is a 422 on ``body``, as
one that is not JSON.
"""

from collections.abc import Callable, Coroutine
from typing import Any

import yaml
from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope

from app.core.errors import ValidationFailed
from app.items.payload import read_limited

YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml"})
# A definition of a thousand fields is some 200 kB.
MAX_DEFINITION_BYTES = 1024 * 1024
# YAML aliases let a short text stand for a huge document ("billion laughs"), which validation
# and storage would then walk in full: what a body expands to is bounded, in values (scalars,
# keys and collections) and in depth.
MAX_VALUES = 100_000
MAX_DEPTH = 64

_JSON = object()  # the body is parsed by FastAPI, as JSON


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _invalid(message: str) -> ValidationFailed:
    return ValidationFailed(message, errors={"body": [message]})


def _where(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        # "while scanning a simple key, could not find expected ':' at line 3, column 1"
        said = ", ".join(part for part in (exc.context, exc.problem) if part) or "invalid YAML"
        mark = exc.problem_mark or exc.context_mark
        return said if mark is None else f"{said} at line {mark.line + 1}, column {mark.column + 1}"
    if isinstance(exc, yaml.reader.ReaderError):
        if exc.encoding == "unicode":  # a control character, which YAML never allows
            return f"{exc.reason}: character #x{exc.character:04x} at position {exc.position}"
        return f"it is not {exc.encoding} text ({exc.reason} at byte {exc.position})"
    return str(exc)


def _check_expansion(data: Any) -> None:
    stack: list[tuple[Any, int]] = [(data, 1)]
    count = 0
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _invalid(f"The request body is nested deeper than {MAX_DEPTH} levels.")
        if isinstance(value, dict):
            count += len(value)
            stack.extend((child, depth + 1) for child in value.values())
        elif isinstance(value, list | set):
            stack.extend((child, depth + 1) for child in value)
        count += 1
        if count > MAX_VALUES:
            raise _invalid(
                f"The request body holds more than {MAX_VALUES:,} values "
                "(each use of a YAML alias counts what it names)."
            )


def parse_yaml(body: bytes) -> Any:
    """The document of a YAML body, or a 422 on ``body`` saying what is wrong and where."""
    try:
        data = yaml.safe_load(body)
    except yaml.YAMLError as exc:
        raise _invalid(f"The request body is not valid YAML: {_where(exc)}.") from exc
    except RecursionError as exc:
        raise _invalid(f"The request body is nested deeper than {MAX_DEPTH} levels.") from exc
    _check_expansion(data)
    return data


class _ReadRequest(Request):
    """The request with its body already read and, for YAML, already parsed."""

    def __init__(self, scope: Scope, receive: Receive, body: bytes, document: Any = _JSON):
        super().__init__(scope, receive)
        self.read_body = body
        self.document = document

    async def body(self) -> bytes:
        return self.read_body

    async def json(self) -> Any:
        return await super().json() if self.document is _JSON else self.document


async def read_definition(request: Request) -> Request:
    body = await read_limited(
        request.headers.get("content-length"), request.stream(), MAX_DEFINITION_BYTES
    )
    if not body or media_type(request.headers.get("content-type")) not in YAML_TYPES:
        # JSON (or no body, or another type) goes on as FastAPI reads it.
        return _ReadRequest(request.scope, request.receive, body)
    document = await run_in_threadpool(parse_yaml, body)
    # FastAPI parses a body only when it is labelled JSON: say so, with its document ready.
    headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
    scope = {**request.scope, "headers": [*headers, (b"content-type", b"application/json")]}
    return _ReadRequest(scope, request.receive, body, document)


class DefinitionRoute(APIRoute):
    """A route whose body is an importer definition, sent as JSON or YAML."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def definition_handler(request: Request) -> Response:
            return await handler(await read_definition(request))

        return definition_handler


# The YAML alternative of a definition body, as OpenAPI shows it beside the JSON one.
YAML_BODY: dict[str, Any] = {
    "requestBody": {
        "description": "An importer definition, as JSON or as YAML written as an importer file "
        "is (`Content-Type: application/yaml`; `application/x-yaml` and `text/yaml` are read "
        f"too); at most {MAX_DEFINITION_BYTES // 1024**2} MiB.",
        "content": {
            "application/yaml": {"schema": {"$ref": "#/components/schemas/ImporterDefinition"}}
        },
    }
}
