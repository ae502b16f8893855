"""Requests no route can serve as sent get a JSON error the OpenAPI document declares.

Path and query parameters no column can hold answer 404 or 422, never a 500; a body that does not
decode is a 400; a method a path does not serve is a 405 naming every method it does serve.
Every case comes from the app's route table, so a route added later is covered as it lands.
"""

from collections import defaultdict

import httpx
import pytest
from fastapi import FastAPI

from tests.auth.routes import ROUTES, Param, RouteCase

# Path ids of int8 columns (see the migrations); every other id column is int4.
INT8_IDS = {"item_id", "delivery_id"}
# Query integers of int8 columns: `after` is a record id.
INT8_QUERY = {"after"}
# Beyond int4, beyond int8, and below both.
OUT_OF_RANGE = [2**31, 2**63, -(2**63) - 1]


def _cases(location: str, kind: str) -> list[tuple[RouteCase, Param]]:
    return [
        (case, param)
        for case in ROUTES
        for param in case.params
        if param.location == location and param.kind == kind
    ]


def _id(value: object) -> str:
    if isinstance(value, RouteCase):
        return value.name
    return value.name if isinstance(value, Param) else str(value)


@pytest.mark.parametrize(("case", "param"), _cases("path", "int"), ids=_id)
async def test_an_id_in_the_path_beyond_its_column_is_an_unknown_id(
    client: httpx.AsyncClient, admin_headers: dict[str, str], case: RouteCase, param: Param
) -> None:
    for value in [2**63] if param.name in INT8_IDS else [2**31, 2**63]:
        url = case.url_with(**{param.name: value})
        response = await client.request(
            case.method, url, headers=admin_headers, **case.request_kwargs()
        )
        assert response.status_code == 404, f"{value}: {response.status_code} {response.text}"
        assert response.json()["message"].endswith(f" {value} not found.")


@pytest.mark.parametrize(("case", "param"), _cases("query", "int"), ids=_id)
async def test_an_integer_in_the_query_beyond_its_column_is_a_422_naming_it(
    client: httpx.AsyncClient, admin_headers: dict[str, str], case: RouteCase, param: Param
) -> None:
    for value in OUT_OF_RANGE[1:] if param.name in INT8_QUERY else OUT_OF_RANGE:
        response = await client.request(
            case.method, case.url, params={param.name: value}, headers=admin_headers
        )
        assert response.status_code == 422, f"{value}: {response.status_code} {response.text}"
        body = response.json()
        assert list(body["errors"]) == [param.name]
        assert body["message"] == body["errors"][param.name][0]


@pytest.mark.parametrize(("case", "param"), _cases("path", "text"), ids=_id)
async def test_a_nul_in_a_text_path_parameter_is_a_json_404(
    client: httpx.AsyncClient, admin_headers: dict[str, str], case: RouteCase, param: Param
) -> None:
    url = case.url_with(**{param.name: "a%00b"})
    response = await client.request(
        case.method, url, headers=admin_headers, **case.request_kwargs()
    )
    assert response.status_code == 404, f"{case.name}: {response.status_code} {response.text}"
    assert response.json() == {"message": "Not found."}


@pytest.mark.parametrize(("case", "param"), _cases("query", "text"), ids=_id)
async def test_a_nul_in_a_text_query_parameter_is_a_422_naming_it(
    client: httpx.AsyncClient, admin_headers: dict[str, str], case: RouteCase, param: Param
) -> None:
    response = await client.request(
        case.method, case.url, params={param.name: "a\x00b"}, headers=admin_headers
    )
    assert response.status_code == 422, f"{case.name}: {response.status_code} {response.text}"
    body = response.json()
    assert list(body["errors"]) == [param.name]
    assert body["message"] == body["errors"][param.name][0]


def _methods_by_path() -> list[object]:
    methods: dict[str, set[str]] = defaultdict(set)
    for case in ROUTES:
        methods[case.path].add(case.method)
    return [pytest.param(path, methods[path], id=path) for path in sorted(methods)]


@pytest.mark.parametrize(("path", "methods"), _methods_by_path())
async def test_options_is_a_405_allowing_every_method_of_the_path(
    client: httpx.AsyncClient, admin_headers: dict[str, str], path: str, methods: set[str]
) -> None:
    url = next(case.url for case in ROUTES if case.path == path)
    response = await client.options(url, headers=admin_headers)
    assert response.status_code == 405, response.text
    allowed = {method.strip() for method in response.headers["allow"].split(",")}
    assert methods <= allowed
    assert response.json()["message"].startswith("The OPTIONS method is not supported here.")


@pytest.mark.parametrize("case", [case for case in ROUTES if case.has_body], ids=_id)
async def test_a_body_that_is_not_utf8_is_a_documented_400(
    app: FastAPI, client: httpx.AsyncClient, admin_headers: dict[str, str], case: RouteCase
) -> None:
    headers = {**admin_headers, "Content-Type": "application/json"}
    response = await client.request(case.method, case.url, content=b'"\xff"', headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["message"]
    assert "400" in app.openapi()["paths"][case.path][case.method.lower()]["responses"]


def test_the_route_table_has_parameters_of_every_kind_checked_here() -> None:
    # Guards the cases above against an empty route table (a test with no case passes silently).
    assert all(_cases(location, kind) for location in ("path", "query") for kind in ("int", "text"))
