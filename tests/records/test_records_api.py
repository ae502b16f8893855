"""Records live in their collection's typed table: SQL reads them as any table, and the
records API filters them by field, by last change and pages them by keyset."""

from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import CreateImporter, RunWorker, Upload

API = "/api/v1/ingest"

FIELDS: dict[str, Any] = {
    "name": {"type": "string", "required": True},
    "age": {"type": "integer"},
    "score": {"type": "number"},
    "active": {"type": "boolean"},
    "born": {"type": "date"},
    "seen": {"type": "datetime"},
    "tags": {"type": "list", "separator": "|"},
    "meta": {"type": "json"},
}
CSV = (
    "name,age,score,active,born,seen,tags,meta\n"
    'Ada,36,9.5,true,1815-12-10,2026-01-02T03:04:05+02:00,math|poetry,"{""lang"": ""en""}"\n'
    "Alan,41,7,false,1912-06-23,2026-01-03T00:00:00,math|running,[1]\n"
    "Grace,,,,,,,\n"
)


@pytest.fixture
async def people(create_importer: CreateImporter, upload: Upload, run_worker: RunWorker) -> None:
    await create_importer(slug="people", key=["name"], fields=FIELDS)
    response = await upload("people", CSV)
    assert response.status_code == 202, response.text
    await run_worker()


async def listed(
    client: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> httpx.Response:
    return await client.get(f"{API}/records/people", params=params, headers=headers)


def names(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [record["data"]["name"] for record in response.json()["data"]]


async def test_records_are_rows_of_a_typed_table(
    people: None, engine: AsyncEngine, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    async with engine.connect() as conn:
        older = (
            await conn.execute(
                text(
                    "SELECT name, age + 1, score * 2, born, tags FROM ingest_data.people "
                    "WHERE age > 30 ORDER BY age"
                )
            )
        ).all()
    assert [(r[0], r[1], r[2], r[3].isoformat(), r[4]) for r in older] == [
        ("Ada", 37, 19.0, "1815-12-10", ["math", "poetry"]),
        ("Alan", 42, 14.0, "1912-06-23", ["math", "running"]),
    ]
    ada = (await client.get(f"{API}/records/people/Ada", headers=admin_headers)).json()["data"]
    assert ada["data"] == {
        "name": "Ada",
        "age": 36,
        "score": 9.5,
        "active": True,
        "born": "1815-12-10",
        "seen": "2026-01-02T01:04:05+00:00",
        "tags": ["math", "poetry"],
        "meta": {"lang": "en"},
    }
    alan = (await client.get(f"{API}/records/people/Alan", headers=admin_headers)).json()["data"]
    # Times show in UTC, a naive one is UTC; a number column holds 7 as 7.0.
    assert (alan["data"]["seen"], alan["data"]["score"], alan["data"]["meta"]) == (
        "2026-01-03T00:00:00+00:00",
        7.0,
        [1],
    )
    grace = (await client.get(f"{API}/records/people/Grace", headers=admin_headers)).json()
    assert grace["data"]["data"] == {"name": "Grace", **dict.fromkeys(list(FIELDS)[1:])}


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("name", "Ada", ["Ada"]),
        ("age", "41", ["Alan"]),
        ("score", "9.5", ["Ada"]),
        ("active", "false", ["Alan"]),
        ("born", "1815-12-10", ["Ada"]),
        ("seen", "2026-01-03T00:00:00Z", ["Alan"]),
        ("tags", "math", ["Ada", "Alan"]),
        ("tags", "poetry", ["Ada"]),
        ("age", "99", []),
    ],
)
async def test_filter_by_a_field_reads_the_value_as_the_fields_type(
    people: None,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    field: str,
    value: str,
    expected: list[str],
) -> None:
    response = await listed(client, admin_headers, **{f"filter[{field}]": value})
    assert sorted(names(response)) == expected
    assert response.json()["meta"]["total"] == len(expected)


@pytest.mark.parametrize(
    ("param", "value", "message"),
    [
        ("filter[nope]", "1", "The collection has no field nope."),
        ("filter[age]", "old", "The filter[age] must be an integer."),
        ("filter[age]", str(2**63), "The filter[age] must be an integer."),
        ("filter[active]", "maybe", "The filter[active] must be true or false."),
        ("filter[born]", "10/12/1815", "The filter[born] must be a date (YYYY-MM-DD)."),
        (
            "filter[seen]",
            "2026-01-03T00:00:00",
            "The filter[seen] must be a date and time with its offset.",
        ),
        ("filter[meta]", "en", "The field meta is jsonb: it cannot be filtered by."),
    ],
)
async def test_a_filter_the_table_cannot_answer_is_a_422_naming_it(
    people: None,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    param: str,
    value: str,
    message: str,
) -> None:
    response = await listed(client, admin_headers, **{param: value})
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == {param: [message]}


async def test_updated_since_needs_an_offset_and_keeps_later_changes(
    people: None,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    upload: Upload,
    run_worker: RunWorker,
) -> None:
    everyone = (await listed(client, admin_headers)).json()["data"]
    newest = max(record["updated_at"] for record in everyone)
    since_2000 = await listed(client, admin_headers, updated_since="2000-01-01T00:00:00Z")
    assert sorted(names(since_2000)) == ["Ada", "Alan", "Grace"]
    at_newest = [r["data"]["name"] for r in everyone if r["updated_at"] >= newest]
    at_newest_listed = await listed(client, admin_headers, updated_since=newest)
    assert sorted(names(at_newest_listed)) == sorted(at_newest)
    await upload("people", "name,age\nAlan,42\n")
    await run_worker()
    alan = (await client.get(f"{API}/records/people/Alan", headers=admin_headers)).json()
    changed = alan["data"]["updated_at"]
    assert changed > newest
    assert names(await listed(client, admin_headers, updated_since=changed)) == ["Alan"]

    naive = await listed(client, admin_headers, updated_since="2026-01-01T00:00:00")
    assert naive.status_code == 422, naive.text
    assert list(naive.json()["errors"]) == ["updated_since"]
    assert "offset" in naive.json()["errors"]["updated_since"][0]


async def test_after_pages_by_keyset_through_every_record_once(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
) -> None:
    await create_importer(slug="people", key=["name"], fields={"name": {"type": "string"}})
    await upload("people", "name\n" + "".join(f"p{n:02d}\n" for n in range(23)))
    await run_worker()
    first = await listed(client, admin_headers, per_page=10, after=2**62)
    seen, pages, response = [], 0, first
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        seen += [record["id"] for record in body["data"]]
        pages += 1
        assert body["meta"]["total"] == 23
        if body["links"]["next"] is None:
            break
        response = await client.get(body["links"]["next"], headers=admin_headers)
    assert pages == 3
    assert seen == sorted(seen, reverse=True) and len(set(seen)) == 23
    below_all = await listed(client, admin_headers, after=min(seen))
    assert names(below_all) == []


async def test_a_collection_without_a_table_lists_nothing_and_shows_no_record(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    assert names(await client.get(f"{API}/records/nothing", headers=admin_headers)) == []
    missing = await client.get(f"{API}/records/nothing/a", headers=admin_headers)
    assert missing.status_code == 404
    assert missing.json()["message"] == "Record 'a' not found in collection 'nothing'."


@pytest.mark.parametrize(
    ("filename", "content"),
    [
        ("people.json", b'[{"name": "Ada", "age": 36}, {"name": "Nul\\u0000l", "age": 41}]'),
        ("people.ndjson", b'{"name": "Ada", "age": 36}\n{"name": "Nul\\u0000l", "age": 41}\n'),
    ],
)
async def test_a_row_holding_a_nul_character_fails_and_the_others_are_written(
    create_importer: CreateImporter,
    upload: Upload,
    run_worker: RunWorker,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    filename: str,
    content: bytes,
) -> None:
    """A table's text cannot hold NUL: the row says so instead of failing its chunk."""
    await create_importer(slug="people", key=["name"], fields=FIELDS)
    response = await upload("people", content, filename=filename)
    assert response.status_code == 202, response.text
    await run_worker()
    run = await client.get(f"{API}/{response.json()['data']['id']}", headers=admin_headers)
    body = run.json()["data"]
    assert body["status"] == "completed_with_errors", body
    [failed] = [row for row in body["rows"] if row["status"] == "failed"]
    assert failed["row_number"] == 2
    assert failed["errors"] == {
        "message": "The given data was invalid.",
        "validation": {"name": ["The name must not contain NUL characters."]},
    }
    assert names(await listed(client, admin_headers)) == ["Ada"]
