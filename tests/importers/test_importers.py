"""Importer definitions: API CRUD, YAML loading, validation paths, write-only headers."""

from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.importers.loader import ImporterFileError, load_directory, read_definitions

API = "/api/v1/ingest"
ROOT = Path(__file__).resolve().parents[2]

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
    "key": "email",
    "fields": {"email": {"from": "E-mail", "type": "email", "required": True}},
}


def test_every_example_importer_is_valid() -> None:
    definitions = read_definitions(ROOT / "examples" / "importers")
    assert "user-importer" in {d.slug for d in definitions}


def test_a_bad_yaml_file_names_the_file_and_the_field(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "slug: bad\ncollection: c\nkey: [a]\nfields: {a: {type: nope}}\n"
    )
    with pytest.raises(ImporterFileError, match=r"bad\.yaml: fields\.a\.type"):
        read_definitions(tmp_path)


async def test_yaml_importers_load_and_reload_idempotently(
    tmp_path: Path,
    session_factory: async_sessionmaker[AsyncSession],
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
) -> None:
    (tmp_path / "a.yml").write_text(
        "slug: from-file\ncollection: things\naction: append\nfields: {name: {type: string}}\n"
    )
    assert await load_directory(session_factory, tmp_path) == 1
    assert await load_directory(session_factory, tmp_path) == 1
    body = (await client.get(f"{API}/importers", headers=admin_headers)).json()
    assert [(i["slug"], i["origin"]) for i in body["data"]] == [("from-file", "file")]


async def test_create_show_update_delete_an_importer(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    created = await client.post(f"{API}/importers", json=DEFINITION, headers=admin_headers)
    assert created.status_code == 201, created.text
    data = created.json()["data"]
    assert data["definition"]["key"] == ["email"]
    assert data["definition"]["on_duplicate"] == "update"  # SPEC defaults
    assert "chunk_size" not in data["definition"]  # the service sizes chunks

    shown = (await client.get(f"{API}/importers/feed", headers=admin_headers)).json()["data"]
    assert "headers" not in shown["definition"]["source"]
    assert shown["definition"]["source"]["has_secret_headers"] is True

    changed = {**DEFINITION, "name": "Renamed", "source": {**DEFINITION["source"]}}
    del changed["source"]["headers"]
    updated = await client.put(f"{API}/importers/feed", json=changed, headers=admin_headers)
    assert updated.status_code == 200, updated.text
    assert updated.json()["data"]["name"] == "Renamed"
    # Headers are write-only: leaving them out of an update keeps them.
    assert updated.json()["data"]["definition"]["source"]["has_secret_headers"] is True

    deleted = await client.delete(f"{API}/importers/feed", headers=admin_headers)
    assert deleted.status_code == 204
    gone = await client.get(f"{API}/importers/feed", headers=admin_headers)
    assert gone.status_code == 404


async def test_duplicate_slug_is_422(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await client.post(f"{API}/importers", json=DEFINITION, headers=admin_headers)
    again = await client.post(f"{API}/importers", json=DEFINITION, headers=admin_headers)
    assert again.status_code == 422
    assert again.json()["errors"] == {"slug": ["The slug has already been taken."]}


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"key": []}, "body"),
        ({"on_duplicate": "update_if_newer"}, "body"),
        ({"source": {"type": "url"}}, "source"),
        ({"source": {"type": "url", "url": "ftp://x/y"}}, "source.url"),
        (
            {"source": {"type": "url", "url": "https://x/y", "schedule": "every day"}},
            "source.schedule",
        ),
        ({"fields": {"email": {"type": "string", "pattern": "("}}}, "fields.email.pattern"),
        ({"fields": {"email": {"type": "list", "separator": ""}}}, "fields.email.separator"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"surprise": 1}, "surprise"),
    ],
)
async def test_invalid_definitions_are_422_with_the_field_path(
    client: httpx.AsyncClient, admin_headers: dict[str, str], change: dict[str, Any], path: str
) -> None:
    response = await client.post(
        f"{API}/importers", json={**DEFINITION, **change}, headers=admin_headers
    )
    assert response.status_code == 422, response.text
    assert path in response.json()["errors"], response.json()
