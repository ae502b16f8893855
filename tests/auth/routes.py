"""The app's route table as test cases: each API route, the abilities it requires, its path and
query parameters, and a URL with dummy path parameters. Built from ``app.routes``, so new routes
are covered as they land."""

import types
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

import fastapi.routing
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.convertors import IntegerConvertor

from app.auth.permissions import ABILITIES, ADMIN, VIEW
from app.core.config import Settings
from app.main import create_app

# Routes that answer without a token (SPEC §5). Docs and the OpenAPI schema are not APIRoutes.
# /metrics takes no user token either: its own INGEST_METRICS_TOKEN (tests/core/test_metrics.py),
# for a scraper that should be able to read nothing else.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
DUMMY_INT = 999999
DUMMY_STR = "x"

# Newer FastAPI includes routers lazily: `app.routes` then holds one entry per included router,
# which `iter_route_contexts` flattens into the routes as served. Older FastAPI lists them flat.
_served_routes: Any = getattr(fastapi.routing, "iter_route_contexts", iter)


ParamKind = Literal["int", "text", "other"]


@dataclass(frozen=True)
class Param:
    name: str  # as a client sends it (the alias)
    location: Literal["path", "query"]
    kind: ParamKind  # "other": a bool, an enum or a Literal


@dataclass(frozen=True)
class RouteCase:
    method: str
    path: str  # the template, e.g. /api/v1/ingest/importers/{slug}
    url: str  # with dummy path parameters
    abilities: frozenset[str]  # from every require(...) in the dependency tree
    has_body: bool
    params: tuple[Param, ...] = ()  # path and query parameters, sub-dependencies' included

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"

    def token_lacking_abilities(self) -> list[str]:
        """Abilities for a token that lacks what this route needs (admin implies all)."""
        rest = [a for a in ABILITIES if a != ADMIN and a not in self.abilities]
        return rest or [VIEW]

    def request_kwargs(self) -> dict[str, Any]:
        return {"json": {}} if self.has_body else {}

    def url_with(self, **values: Any) -> str:
        """The URL with these path parameters and dummies for the others."""
        dummies = {
            p.name: DUMMY_INT if p.kind == "int" else DUMMY_STR
            for p in self.params
            if p.location == "path"
        }
        return self.path.format(**{**dummies, **values})


def required_abilities(dependant: Dependant) -> frozenset[str]:
    """Every ability a ``require(ability)`` dependency in this tree demands."""
    found: set[str] = set()
    ability = getattr(dependant.call, "required_ability", None)
    if ability is not None:
        found.add(ability)
    for sub in dependant.dependencies:
        found |= required_abilities(sub)
    return frozenset(found)


def _path_annotations(dependant: Dependant) -> dict[str, Any]:
    found = {field.name: field.field_info.annotation for field in dependant.path_params}
    for sub in dependant.dependencies:
        found.update(_path_annotations(sub))
    return found


def _kind(annotation: Any) -> ParamKind:
    optional = get_origin(annotation) in (Union, types.UnionType)
    members = set(get_args(annotation)) - {type(None)} if optional else {annotation}
    if members == {int}:
        return "int"
    return "text" if members == {str} else "other"


def _params(route: Any) -> tuple[Param, ...]:
    def walk(dependant: Dependant) -> list[Param]:
        found = [
            Param(field.name, "path", "int" if is_int(field) else "text")
            for field in dependant.path_params
        ]
        found += [
            Param(field.alias, "query", _kind(field.field_info.annotation))
            for field in dependant.query_params
        ]
        for sub in dependant.dependencies:
            found += walk(sub)
        return found

    def is_int(field: Any) -> bool:
        convertor = route.param_convertors.get(field.name)
        return isinstance(convertor, IntegerConvertor) or field.field_info.annotation is int

    return tuple(dict.fromkeys(walk(route.dependant)))


def _dummy_url(route: Any) -> str:
    annotations = _path_annotations(route.dependant)
    values: dict[str, Any] = {}
    for name, convertor in route.param_convertors.items():
        is_int = isinstance(convertor, IntegerConvertor) or annotations.get(name) is int
        values[name] = DUMMY_INT if is_int else DUMMY_STR
    url: str = route.path_format.format(**values)
    return url


def api_routes() -> list[RouteCase]:
    # Building the app opens no connection (the lifespan does), so this runs at collection.
    app = create_app(
        Settings(
            database_url="postgresql://unused@127.0.0.1:1/unused",
            redis_url="redis://127.0.0.1:1/0",
            _env_file=None,
        )
    )
    cases = []
    # Each route as the app serves it: prefix and router-level dependencies included.
    for route in _served_routes(app.routes):
        original = getattr(route, "original_route", route)
        if not isinstance(original, APIRoute) or route.path in PUBLIC_PATHS:
            continue
        # The console's pages answer with pages and redirects, not the API's 401/403 JSON;
        # they use the same require(ability) and are tested in tests/console.
        if route.path.startswith("/console"):
            continue
        for method in sorted(route.methods):
            cases.append(
                RouteCase(
                    method=method,
                    path=route.path_format,
                    url=_dummy_url(route),
                    abilities=required_abilities(route.dependant),
                    has_body=route.body_field is not None,
                    params=_params(route),
                )
            )
    return sorted(cases, key=lambda case: (case.path, case.method))


ROUTES = api_routes()
