"""JSON bodies no column can hold get a JSON 422 naming the field, never a 500.

Postgres text never holds NUL and asyncpg refuses an integer beyond its column, so every string
in a request body (nested ones, list items, dict keys and values included) is checked for NUL,
and every integer against int4. Every route with a body needs a sample here, and every string
and integer its schema declares must appear in a sample, so a route or field added later is
covered as it lands.
"""

import copy
import fnmatch
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import pytest

from app.core.config import Settings
from app.importers.schemas import ImporterDefinition
from app.main import create_app
from tests.auth.routes import DUMMY_STR, ROUTES, RouteCase
from tests.conftest import CreateImporter

# Beyond int4, beyond int8, and below both.
OUT_OF_RANGE = [2**31, 2**63, -(2**63) - 1]
NUL_MESSAGE = "must not contain a NUL character."

_IMPORTER: dict[str, Any] = {
    "slug": DUMMY_STR,
    "name": "Feed",
    "description": "A feed.",
    "format": "csv",
    "source": {
        "type": "url",
        "url": "https://example.com/feed.csv",
        "headers": {"X-Key": "secret"},
        "schedule": "0 * * * *",
        "sheet": "Sheet1",
    },
    "source_id": 1,
    "collection": "feed",
    "key": ["email"],
    "on_duplicate": "update_if_newer",
    "compare_field": "email",
    "action": "upsert",
    "approval": "manual",
    "chunk_size": 10,
    "failure_threshold": 5.5,
    "log_rows": "failed",
    "title_field": "email",
    "external_id_field": "email",
    "fields": {
        "email": {
            "from": ["Email"],
            "type": "string",
            "min": 0.5,
            "max": 2.5,
            "min_length": 1,
            "max_length": 100,
            "pattern": "^a",
            "in": ["a"],
            "default": "a",
            "null_if": ["NA"],
            "format": "%Y",
            "separator": ";",
            "transform": ["trim"],
        }
    },
}
_SOURCE: dict[str, Any] = {
    "name": "Feed",
    "source_url": "https://example.com/feed",
    "provider": "acme",
    "external_source_id": "feed-1",
    "source_priority": 1,
    "onboarded": True,
    "approval_mode": "auto",
    "ingestion_type": "api",
}
_TOKEN: dict[str, Any] = {
    "name": "Agent",
    "abilities": ["ingest:view"],
    "user_email": "agent@example.com",
    "role": "admin",
    "source_id": 1,
}
_WEBHOOK: dict[str, Any] = {
    "url": "https://example.com/hook",
    "events": ["run.completed"],
    "importer": "feed",
    "source_id": 1,
    "description": "CRM sync.",
}

# Bodies the schema accepts as they are, by route (more than one where fields exclude each other).
SAMPLES: dict[str, list[dict[str, Any]]] = {
    "POST /api/v1/ingest/importers": [_IMPORTER],
    "PUT /api/v1/ingest/importers/{slug}": [_IMPORTER],
    "POST /api/v1/ingest/items/{item_id}/approve": [{"note": "Fine."}],
    "POST /api/v1/ingest/items/{item_id}/promote": [{"note": "Fine."}],
    "POST /api/v1/ingest/items/{item_id}/reject": [{"note": "No.", "reason": "Spam."}],
    "POST /api/v1/ingest/items/{item_id}/request-changes": [{"note": "Fix the title."}],
    "POST /api/v1/ingest/items/{item_id}/retarget": [{"type": "other", "note": "Moved."}],
    "POST /api/v1/ingest/sources": [_SOURCE],
    "PUT /api/v1/ingest/sources/{source_id}": [_SOURCE],
    "POST /api/v1/ingest/sources/{source_id}/tokens": [
        {
            "name": "Agent",
            "abilities": ["ingest:view"],
            "user_email": "agent@example.com",
            "expires_in_days": 30,
        }
    ],
    "POST /api/v1/ingest/tokens": [
        {**_TOKEN, "expires_in_days": 30},
        {**_TOKEN, "expires_at": "2999-01-01T00:00:00Z"},
    ],
    "POST /api/v1/ingest/trigger/{importer}": [{"dry_run": True}],
    "POST /api/v1/ingest/webhooks": [_WEBHOOK],
    "PATCH /api/v1/ingest/webhooks/{webhook_id}": [{**_WEBHOOK, "enabled": True}],
    "POST /api/v1/ingest/{run}/retry": [{"dry_run": True}],
}
BODY_ROUTES = [case for case in ROUTES if case.has_body]


def _document() -> dict[str, Any]:
    # The document only: building the app opens no connection (its lifespan does).
    settings = Settings(
        database_url="postgresql://unused@127.0.0.1:1/unused",
        redis_url="redis://127.0.0.1:1/0",
        _env_file=None,  # type: ignore[call-arg]
    )
    return create_app(settings).openapi()


@dataclass(frozen=True)
class Leaf:
    path: tuple[str, ...]  # where the value is, as the client sends it
    kind: Literal["str", "int", "key"]  # "key": the keys of a dict
    free: bool  # a string with no enum, pattern or format: only the NUL can be wrong with it


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[-1]]
    return node


def _members(node: dict[str, Any], defs: dict[str, Any]) -> list[dict[str, Any]]:
    node = _resolve(node, defs)
    union = node.get("anyOf") or node.get("oneOf") or node.get("allOf")
    if union:
        return [m for member in union for m in _members(member, defs)]
    return [node]


def _schema_leaves(
    node: dict[str, Any], defs: dict[str, Any], path: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    """Paths of every string and integer the schema declares (``*``: any key or index)."""
    for member in _members(node, defs):
        kind = member.get("type")
        if kind in ("string", "integer"):
            yield path
        elif kind == "array" and "items" in member:
            yield from _schema_leaves(member["items"], defs, (*path, "*"))
        elif kind == "object":
            for name, child in member.get("properties", {}).items():
                yield from _schema_leaves(child, defs, (*path, name))
            extra = member.get("additionalProperties")
            if isinstance(extra, dict):
                yield from _schema_leaves(extra, defs, (*path, "*"))


def _sample_leaves(
    value: Any, node: dict[str, Any] | None, defs: dict[str, Any], path: tuple[str, ...] = ()
) -> Iterator[Leaf]:
    """Every string, integer and dict of a sample, with whether its schema constrains it."""
    members = _members(node, defs) if node is not None else []
    if isinstance(value, bool):
        return
    if isinstance(value, str):
        constrained = any(
            {"enum", "const", "pattern", "format"} & set(m) or m.get("type") not in ("string", None)
            for m in members
        )
        yield Leaf(path, "str", free=not constrained)
    elif isinstance(value, int):
        yield Leaf(path, "int", free=False)
    elif isinstance(value, list):
        items = next((m["items"] for m in members if m.get("type") == "array"), None)
        for index, item in enumerate(value):
            yield from _sample_leaves(item, items, defs, (*path, str(index)))
    elif isinstance(value, dict):
        objects = [m for m in members if m.get("type") == "object"]
        if any(isinstance(m.get("additionalProperties"), dict) for m in objects):
            yield Leaf(path, "key", free=True)  # a map: its keys are data too
        for name, item in value.items():
            child = next(
                (m["properties"][name] for m in objects if name in m.get("properties", {})), None
            )
            if child is None:
                child = next(
                    (
                        m["additionalProperties"]
                        for m in objects
                        if isinstance(m.get("additionalProperties"), dict)
                    ),
                    None,
                )
            yield from _sample_leaves(item, child, defs, (*path, name))


def _body_schema(
    document: dict[str, Any], case: RouteCase
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The route's body schema and its definitions; importers take a dict body validated as
    an ImporterDefinition, so theirs is that model's."""
    if case.path.startswith("/api/v1/ingest/importers"):
        schema = ImporterDefinition.model_json_schema(by_alias=True)
        return schema, schema.get("$defs", {})
    operation = document["paths"][case.path][case.method.lower()]
    content = operation["requestBody"]["content"]["application/json"]["schema"]
    return content, document["components"]["schemas"]


def _replaced(body: Any, path: tuple[str, ...], kind: str, value: Any) -> Any:
    body = copy.deepcopy(body)
    parent = body
    for part in path[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = path[-1]
    if kind == "key":
        target = parent[last]
        parent[last] = {
            f"{name}{value}" if i == 0 else name: v for i, (name, v) in enumerate(target.items())
        }
    elif isinstance(parent, list):
        parent[int(last)] = value
    else:
        parent[last] = value
    return body


def _cases(kind: Literal["nul", "int"]) -> list[Any]:
    document = _document()
    found = []
    for case in BODY_ROUTES:
        schema, defs = _body_schema(document, case)
        for number, sample in enumerate(SAMPLES.get(case.name, [])):
            for leaf in _sample_leaves(sample, schema, defs):
                if (leaf.kind == "int") == (kind == "int"):
                    where = ".".join(leaf.path) + (" (key)" if leaf.kind == "key" else "")
                    name = f"{case.name} #{number} {where}"
                    found.append(pytest.param(case, sample, leaf, id=name))
    return found


async def _send(
    client: httpx.AsyncClient, headers: dict[str, str], case: RouteCase, body: Any
) -> httpx.Response:
    return await client.request(case.method, case.url, json=body, headers=headers)


@pytest.fixture
async def existing_importer(create_importer: CreateImporter) -> None:
    # PUT /importers/{slug} finds the importer before it reads the definition.
    await create_importer(slug=DUMMY_STR, key=["email"], fields={"email": {"type": "email"}})


def _named(body: dict[str, Any], leaf: Leaf) -> str:
    """The one field the 422 names: the leaf itself or the field that holds it."""
    errors = body["errors"]
    assert len(errors) == 1, errors
    (field,) = errors
    assert tuple(field.split(".")) == leaf.path[: len(field.split("."))], (field, leaf.path)
    assert body["message"].endswith(errors[field][0])
    return str(errors[field][0])


@pytest.mark.parametrize(("case", "sample", "leaf"), _cases("nul"))
@pytest.mark.usefixtures("existing_importer")
async def test_a_nul_in_a_body_string_is_a_422_naming_the_field(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    case: RouteCase,
    sample: dict[str, Any],
    leaf: Leaf,
) -> None:
    if leaf.kind == "key":
        body = _replaced(sample, leaf.path, "key", "\x00")
    else:
        value: Any = _sample_value(sample, leaf.path)
        body = _replaced(sample, leaf.path, "str", f"{value}\x00b")
    response = await _send(client, admin_headers, case, body)
    assert response.status_code == 422, response.text
    message = _named(response.json(), leaf)
    if leaf.free:
        assert message.endswith(NUL_MESSAGE), message


@pytest.mark.parametrize(("case", "sample", "leaf"), _cases("int"))
@pytest.mark.usefixtures("existing_importer")
async def test_a_body_integer_beyond_int4_is_a_422_naming_the_field(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    case: RouteCase,
    sample: dict[str, Any],
    leaf: Leaf,
) -> None:
    for value in OUT_OF_RANGE:
        response = await _send(
            client, admin_headers, case, _replaced(sample, leaf.path, "int", value)
        )
        assert response.status_code == 422, f"{value}: {response.status_code} {response.text}"
        body = response.json()
        assert list(body["errors"]) == [".".join(leaf.path)], body
        assert body["message"].endswith(body["errors"][".".join(leaf.path)][0])


def _sample_value(sample: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        sample = sample[int(part)] if isinstance(sample, list) else sample[part]
    return sample


@pytest.mark.parametrize("case", BODY_ROUTES, ids=lambda case: case.name)
def test_every_string_and_integer_a_body_declares_has_a_sample(case: RouteCase) -> None:
    # The cases above come from the samples: a route or field without one would go unchecked.
    assert case.name in SAMPLES, f"add a sample body for {case.name}"
    schema, defs = _body_schema(_document(), case)
    sampled = [
        ".".join(leaf.path)
        for sample in SAMPLES[case.name]
        for leaf in _sample_leaves(sample, schema, defs)
    ]
    for declared in _schema_leaves(schema, defs):
        pattern = ".".join(declared)
        assert any(fnmatch.fnmatchcase(path, pattern) for path in sampled), (
            f"{case.name}: no sample sets {pattern}"
        )


def test_the_samples_cover_strings_and_integers() -> None:
    # Guards the parametrized tests against an empty table (a test with no case passes).
    assert _cases("nul") and _cases("int")
    assert set(SAMPLES) == {case.name for case in BODY_ROUTES}
