"""Importer definitions sent as YAML: the same answers as JSON, refused bodies never a 500."""

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.importers.bodies import MAX_DEFINITION_BYTES, MAX_DEPTH, MAX_VALUES
from app.importers.loader import read_definitions

API = "/api/v1/ingest"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "importers"
YAML_TYPES = ["application/yaml", "application/x-yaml", "text/yaml; charset=utf-8"]

DEFINITION: dict[str, Any] = {
    "slug": "feed",
    "name": "Feed",
    "format": "csv",
    "source": {
        "type": "url",
        "url": "https://example.com/users.csv",
        "headers": {"Authorization": "Bearer secret"},
        "schedule": "0 3 * * *",
    },
    "collection": "users",
    "key": ["email"],
    "fields": {
        "email": {"from": ["E-mail"], "type": "email", "required": True},
        "signup": {"type": "date", "format": "%Y-%m-%d", "null_if": ["", "NA"]},
    },
}
# The same definition as a person writes it in an importer file.
DEFINITION_YAML = """\
# Users, pulled nightly.
slug: feed
name: Feed
format: csv
source:
  type: url
  url: https://example.com/users.csv
  headers: {Authorization: "Bearer secret"}
  schedule: "0 3 * * *"
collection: users
key: [email]
fields:
  email: {from: E-mail, type: email, required: true}
  signup:
    type: date
    format: "%Y-%m-%d"
    null_if: ["", NA]
"""


def _yaml(content_type: str = "application/yaml") -> dict[str, str]:
    return {"Content-Type": content_type}


async def _post(
    client: httpx.AsyncClient, headers: dict[str, str], body: bytes | str, content_type: str
) -> httpx.Response:
    return await client.post(
        f"{API}/importers", content=body, headers={**headers, "Content-Type": content_type}
    )


def _same_but_times(a: dict[str, Any], b: dict[str, Any]) -> None:
    drop = {"id", "created_at", "updated_at"}
    assert {k: v for k, v in a.items() if k not in drop} == {
        k: v for k, v in b.items() if k not in drop
    }


@pytest.mark.parametrize("content_type", YAML_TYPES)
async def test_a_yaml_definition_creates_the_importer_json_would(
    client: httpx.AsyncClient, admin_headers: dict[str, str], content_type: str
) -> None:
    from_yaml = await _post(client, admin_headers, DEFINITION_YAML, content_type)
    assert from_yaml.status_code == 201, from_yaml.text
    shown = (await client.get(f"{API}/importers/feed", headers=admin_headers)).json()["data"]
    await client.delete(f"{API}/importers/feed", headers=admin_headers)

    from_json = await client.post(f"{API}/importers", json=DEFINITION, headers=admin_headers)
    assert from_json.status_code == 201, from_json.text
    _same_but_times(from_yaml.json()["data"], from_json.json()["data"])
    _same_but_times(shown, from_json.json()["data"])
    assert shown["definition"]["source"]["has_secret_headers"] is True


async def test_put_takes_yaml_and_keeps_the_write_only_headers(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await client.post(f"{API}/importers", json=DEFINITION, headers=admin_headers)
    # A definition read back from GET, as YAML, with a new name: it can be PUT as it is.
    shown = (await client.get(f"{API}/importers/feed", headers=admin_headers)).json()["data"]
    body = yaml.safe_dump({**shown["definition"], "name": "Renamed"})
    assert "has_secret_headers: true" in body
    updated = await client.put(
        f"{API}/importers/feed", content=body, headers={**admin_headers, **_yaml()}
    )
    assert updated.status_code == 200, updated.text
    data = updated.json()["data"]
    assert data["name"] == "Renamed"
    assert data["definition"]["source"]["has_secret_headers"] is True


async def test_put_takes_the_slug_from_the_path_for_yaml_too(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await client.post(f"{API}/importers", json=DEFINITION, headers=admin_headers)
    body = DEFINITION_YAML.replace("slug: feed\n", "").replace("name: Feed", "name: Other")
    updated = await client.put(
        f"{API}/importers/feed", content=body, headers={**admin_headers, **_yaml("text/yaml")}
    )
    assert updated.status_code == 200, updated.text
    assert (updated.json()["data"]["slug"], updated.json()["data"]["name"]) == ("feed", "Other")


@pytest.mark.parametrize(
    "change",
    [
        {"key": []},
        {"fields": {"email": {"type": "nope"}}},
        {"fields": {"email": {"type": "email", "min_length": -1}}},
        {"source": {"type": "url"}},
        {"slug": "Not A Slug", "chunk_size": 0},
        {"unknown": 1},
        {"fields": {"email": {"type": "email", "pattern": "("}}},
        {"fields": {"email": {"type": "email", "min_length": 2**40}}},
        {"name": "nul \x00 here"},
    ],
)
async def test_an_invalid_yaml_definition_gets_the_answer_json_gets(
    client: httpx.AsyncClient, admin_headers: dict[str, str], change: dict[str, Any]
) -> None:
    body = {**DEFINITION, **change}
    as_json = await client.post(f"{API}/importers", json=body, headers=admin_headers)
    as_yaml = await _post(client, admin_headers, yaml.safe_dump(body), "application/yaml")
    assert as_json.status_code == 422, as_json.text
    assert (as_yaml.status_code, as_yaml.json()) == (422, as_json.json())


@pytest.mark.parametrize(
    ("text", "as_json"),
    [
        ("- slug: feed\n- slug: other\n", '[{"slug": "feed"}, {"slug": "other"}]'),
        ("just text\n", '"just text"'),
        ("42\n", "42"),
        ("~\n", "null"),
        ("", ""),
    ],
)
async def test_a_yaml_body_that_is_not_a_mapping_gets_the_answer_of_a_json_non_object(
    client: httpx.AsyncClient, admin_headers: dict[str, str], text: str, as_json: str
) -> None:
    from_yaml = await _post(client, admin_headers, text, "application/yaml")
    from_json = await _post(client, admin_headers, as_json, "application/json")
    assert from_json.status_code == 422, from_json.text
    assert (from_yaml.status_code, from_yaml.json()) == (422, from_json.json())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "slug: feed\nname: [unclosed\n",
            "The request body is not valid YAML: while parsing a flow sequence, expected ',' or "
            "']', but got '<stream end>' at line 3, column 1.",
        ),
        (
            "slug: feed\n  name: indented: wrongly\n",
            "The request body is not valid YAML: mapping values are not allowed here "
            "at line 2, column 7.",
        ),
        (
            "slug: feed\n---\nslug: two\n",
            "The request body is not valid YAML: expected a single document in the stream, "
            "but found another document at line 2, column 1.",
        ),
        ("slug: *nowhere\n", "The request body is not valid YAML: found undefined alias "),
        ("slug: !!python/object:os.system ls\n", "The request body is not valid YAML: could not"),
        (
            b"slug: caf\xe9\n",
            "The request body is not valid YAML: it is not utf-8 text "
            "(invalid continuation byte at byte 9).",
        ),
        (
            "slug: a\x07b\n",
            "The request body is not valid YAML: special characters are not allowed: "
            "character #x0007 at position 7.",
        ),
    ],
)
async def test_bad_yaml_is_a_422_on_the_body_saying_what_and_where(
    client: httpx.AsyncClient, admin_headers: dict[str, str], text: str | bytes, message: str
) -> None:
    response = await _post(client, admin_headers, text, "application/yaml")
    assert response.status_code == 422, response.text
    body = response.json()
    assert list(body["errors"]) == ["body"]
    assert body["message"] == body["errors"]["body"][0]
    assert body["message"].startswith(message), body["message"]
    listed = await client.get(f"{API}/importers", headers=admin_headers)
    assert listed.json()["meta"]["total"] == 0


async def test_malformed_json_is_a_422_on_the_body_saying_where(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await _post(
        client, admin_headers, '{\n  "slug": "feed",\n  "name": }', "application/json"
    )
    assert response.status_code == 422, response.text
    message = "The request body is not valid JSON: Expecting value at line 3, column 11."
    assert response.json() == {"message": message, "errors": {"body": [message]}}


async def test_yaml_aliases_work_but_cannot_expand_without_bound(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    # An anchor reused as a person would: fine.
    reused = (
        "slug: feed\ncollection: users\nkey: [email]\n"
        "fields:\n  email: &text {type: string, transform: [trim]}\n  name: *text\n"
    )
    created = await _post(client, admin_headers, reused, "application/yaml")
    assert created.status_code == 201, created.text
    fields = created.json()["data"]["definition"]["fields"]
    assert fields["name"] == fields["email"]

    # "Billion laughs": 30 bytes a level, each level ten uses of the one before it.
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for n in range(1, 9):
        levels.append(f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]")
    bomb = "slug: bomb\ncollection: c\naction: append\nfields: {a: {}}\n" + "\n".join(levels)
    refused = await _post(client, admin_headers, bomb, "application/yaml")
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"] == {
        "body": [
            f"The request body holds more than {MAX_VALUES:,} values "
            "(each use of a YAML alias counts what it names)."
        ]
    }


@pytest.mark.parametrize(
    "text",
    [
        "slug: deep\ndefault: " + "[" * 5000 + "]" * 5000 + "\n",
        "slug: deep\ndefault: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "\n",
        "slug: loop\ndefault: &me [*me]\n",
    ],
    ids=["5000-levels", "one-level-too-many", "self-reference"],
)
async def test_yaml_nested_too_deep_is_a_422(
    client: httpx.AsyncClient, admin_headers: dict[str, str], text: str
) -> None:
    response = await _post(client, admin_headers, text, "application/yaml")
    assert response.status_code == 422, response.text
    message = f"The request body is nested deeper than {MAX_DEPTH} levels."
    assert response.json() == {"message": message, "errors": {"body": [message]}}


@pytest.mark.parametrize("content_type", ["application/json", "application/yaml"])
async def test_a_definition_body_over_the_limit_is_413_as_json_or_yaml(
    client: httpx.AsyncClient, admin_headers: dict[str, str], content_type: str
) -> None:
    body = {**DEFINITION, "description": "x" * MAX_DEFINITION_BYTES}
    text = json.dumps(body) if content_type == "application/json" else yaml.safe_dump(body)
    for streamed in (False, True):
        # Declared too large (Content-Length), or found to be while it is read (chunked).
        content: Any = text.encode()
        if streamed:

            async def chunks(data: bytes = content) -> Any:
                for start in range(0, len(data), 64 * 1024):
                    yield data[start : start + 64 * 1024]

            content = chunks()
        response = await client.post(
            f"{API}/importers",
            content=content,
            headers={**admin_headers, "Content-Type": content_type},
        )
        assert response.status_code == 413, response.text
        assert response.json() == {
            "message": f"The request body may not be greater than {MAX_DEFINITION_BYTES:,} bytes."
        }
    listed = await client.get(f"{API}/importers", headers=admin_headers)
    assert listed.json()["meta"]["total"] == 0


async def test_every_example_importer_file_can_be_sent_as_it_is(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    # The API and the importer files give the same object (SPEC §3).
    expected = {d.slug: d.public() for d in read_definitions(EXAMPLES)}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        response = await _post(client, admin_headers, path.read_bytes(), "application/yaml")
        assert response.status_code == 201, f"{path.name}: {response.text}"
        data = response.json()["data"]
        assert data["definition"] == expected[data["slug"]], path.name


async def test_the_openapi_document_shows_yaml_beside_json(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    for path, method in ((f"{API}/importers", "post"), (f"{API}/importers/{{slug}}", "put")):
        operation = paths[path][method]
        content = operation["requestBody"]["content"]
        assert list(content) == ["application/json", "application/yaml"]
        definition = "#/components/schemas/ImporterDefinition"
        assert content["application/json"]["schema"]["$ref"] == definition
        assert content["application/yaml"]["schema"] == {"$ref": definition}
        assert "application/x-yaml" in operation["requestBody"]["description"]
        assert "413" in operation["responses"]
