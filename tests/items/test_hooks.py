"""Push hooks: `local_subtype` inference, culture topics by id/slug/name, and column alignment
of heterogeneous pushes — unit by unit and through push → worker → promote."""

from typing import Any

import httpx
import pytest

from app.importers.service import parse_definition
from app.items.hooks import align_columns, apply_hooks, infer_subtype
from tests.conftest import RunWorker
from tests.items.conftest import PREFIX, Headers, Push, PushImporter, example

FEED = "https://feed.example.test/feed"


@pytest.mark.parametrize(
    ("hint", "subtype"),
    [
        ("Jazz Musician", "musician"),
        ("head chef", "chef"),
        ("Painters", "artist"),
        ("Tour guide", "guide"),
        ("Business owner", "entrepreneur"),
        ("DJ", "musician"),
        ("Lighthouse keeper", "lighthouse-keeper"),
        ("Ceramista São", "ceramista-sao"),
    ],
)
def test_infer_subtype(hint: str, subtype: str) -> None:
    assert infer_subtype(hint) == subtype


def local(**fields: Any) -> dict[str, Any]:
    return {"external_id": "l1", "source_url": FEED, "name": "Ana Lima", **fields}


@pytest.mark.parametrize(
    ("item", "subtype"),
    [
        (local(person_type="Chef", role="Singer"), "chef"),  # person_type comes first
        (local(role="singer", occupation="baker"), "musician"),
        (local(occupation="Fisherwoman"), "farmer"),
        (local(type="Street artist"), "artist"),
        (local(Person_Type="guide"), "guide"),  # matched like headers
        (local(person_type="", role="poet"), "writer"),  # blank hints are skipped
        (local(local_subtype="resident", role="chef"), "resident"),  # given: kept
        (local(subtype="resident", role="chef"), None),  # given under its alias: kept as is
        (local(), None),  # nothing to infer from
    ],
)
def test_local_subtype_hook(item: dict[str, Any], subtype: str | None) -> None:
    definition = parse_definition(example("local"))
    apply_hooks(definition, [item])
    assert item.get("local_subtype") == subtype


def test_hooks_apply_by_field_not_by_slug() -> None:
    definition = parse_definition({**example("local"), "slug": "people"})
    item = local(role="dj")
    apply_hooks(definition, [item])
    assert item["local_subtype"] == "musician"
    event = {"external_id": "e1", "role": "dj"}
    apply_hooks(parse_definition(example("event")), [event])
    assert "local_subtype" not in event


def test_align_columns_reads_each_item_as_its_own_file() -> None:
    definition = parse_definition(example("event"))
    items = [
        {"external_id": "1"},
        {"external_id": "2", "venue": "Hall", "unmapped": 1},
        {"id": "3", "lat": 1.5, "latitude": None},
    ]
    align_columns(definition, items)
    assert items == [
        {"external_id": "1", "venue_name": None, "latitude": None},
        {"external_id": "2", "venue": "Hall", "unmapped": 1, "venue_name": "Hall"},
        # `latitude` is there (null): as in a one-row file, the first `from` name wins.
        {"id": "3", "lat": 1.5, "latitude": None, "external_id": "3"},
    ]


async def push_and_promote(
    client: httpx.AsyncClient,
    push: Push,
    run_worker: RunWorker,
    slug: str,
    items: list[dict[str, Any]],
    admin_headers: Headers,
    curator_headers: Headers,
) -> list[dict[str, Any]]:
    """Push, stage, approve and promote every item; the records, in push order."""
    response = await push(slug, items, admin_headers)
    assert response.status_code == 202, response.text
    await run_worker()
    run_id = response.json()["data"]["run_id"]
    run = (await client.get(f"{PREFIX}/{run_id}", headers=admin_headers)).json()["data"]
    assert run["progress"]["failed"] == 0, run
    listed = await client.get(
        f"{PREFIX}/items?run={run_id}&sort=id&order=asc", headers=curator_headers
    )
    records = []
    for item in sorted(listed.json()["data"], key=lambda i: i["row_number"]):
        for action in ("approve", "promote"):
            answer = await client.post(
                f"{PREFIX}/items/{item['id']}/{action}", headers=curator_headers
            )
            assert answer.status_code == 200, answer.text
        record = await client.get(
            f"{PREFIX}/records/{item['collection']}/{item['key']}", headers=curator_headers
        )
        records.append(record.json()["data"])
    return records


async def test_local_subtype_is_inferred_on_push_and_kept_through_promotion(
    client: httpx.AsyncClient,
    push_importer: PushImporter,
    push: Push,
    run_worker: RunWorker,
    admin_headers: Headers,
    curator_headers: Headers,
) -> None:
    await push_importer("local")
    items = [
        local(external_id="l1", role="Jazz musician"),
        local(external_id="l2", occupation="Head Chef"),
        local(external_id="l3", local_subtype="Tour Guide", role="chef"),
    ]
    records = await push_and_promote(
        client, push, run_worker, "local", items, admin_headers, curator_headers
    )
    assert [r["data"]["local_subtype"] for r in records] == ["musician", "chef", "tour-guide"]
    assert records[0]["data"]["role"] == "Jazz musician"


async def test_cultural_accepts_a_topic_by_id_slug_or_name(
    client: httpx.AsyncClient,
    push_importer: PushImporter,
    push: Push,
    run_worker: RunWorker,
    admin_headers: Headers,
    curator_headers: Headers,
) -> None:
    await push_importer("cultural")
    base = {"source_url": FEED, "title": "Fado in Alfama"}
    items = [
        {**base, "external_id": "c1", "culture_topic_id": "12"},
        {**base, "external_id": "c2", "culture_topic_slug": "Fado Music"},
        {**base, "external_id": "c3", "culture_topic_name": "Street Art"},
        {**base, "external_id": "c4", "topic": "Azulejo tiles"},  # the name under an alias
    ]
    records = await push_and_promote(
        client, push, run_worker, "cultural", items, admin_headers, curator_headers
    )
    topics = [
        {k: v for k, v in r["data"].items() if k.startswith("culture_topic") and v is not None}
        for r in records
    ]
    assert topics == [
        {"culture_topic_id": 12},
        {"culture_topic_slug": "fado-music"},
        {"culture_topic_name": "Street Art", "culture_topic_slug": "street-art"},
        {"culture_topic_name": "Azulejo tiles", "culture_topic_slug": "azulejo-tiles"},
    ]


async def test_items_of_one_push_may_differ_in_fields_and_names(
    client: httpx.AsyncClient,
    push_importer: PushImporter,
    push: Push,
    run_worker: RunWorker,
    admin_headers: Headers,
    curator_headers: Headers,
) -> None:
    await push_importer("place")
    items = [
        {"external_id": "p1", "source_url": FEED, "name": "Old Lighthouse"},
        {
            "external_id": "p2",
            "source_url": FEED,
            "name": "Fish Market",
            "lat": 38.7,
            "zip": "1100",
        },
        {"id": "p3", "source_url": FEED, "title": "Tram 28 stop", "latitude": 38.71},
    ]
    records = await push_and_promote(
        client, push, run_worker, "place", items, admin_headers, curator_headers
    )
    assert [(r["data"]["name"], r["data"]["latitude"]) for r in records] == [
        ("Old Lighthouse", None),
        ("Fish Market", 38.7),
        ("Tram 28 stop", 38.71),
    ]
    assert records[1]["data"]["postal_code"] == "1100"
