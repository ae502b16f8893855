"""Reading a collection's records for the API: its table, filtered by key, source scope,
field values and last change, newest first, by page or by keyset (`after` an id)."""

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

import asyncpg
from fastapi import Request

from app.core.errors import NotFound, ValidationFailed
from app.core.pagination import PageParams, build_page, keyset_links
from app.core.params import INT8_MAX
from app.records.store import columns_of, selected, to_resource
from app.records.tables import quoted, table_name


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered not in ("true", "false", "1", "0"):
        raise ValueError(text)
    return lowered in ("true", "1")


def _integer(text: str) -> int:
    value = int(text)
    if not -INT8_MAX - 1 <= value <= INT8_MAX:
        raise ValueError(text)
    return value


def _moment(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(text)
    return moment


# Column type -> (how a filter's text becomes a value of it, what it should look like).
_FILTER_VALUES: dict[str, tuple[Any, str]] = {
    "text": (str, "text"),
    "bigint": (_integer, "an integer"),
    "double precision": (float, "a number"),
    "boolean": (_boolean, "true or false"),
    "date": (date.fromisoformat, "a date (YYYY-MM-DD)"),
    "timestamp with time zone": (_moment, "a date and time with its offset"),
    "text[]": (str, "text, one of the list's elements"),
}


class Filters:
    """Field filters (`filter[name]=value`: equal, or for a list field, one of its elements)
    checked against the table's columns."""

    def __init__(self, given: Mapping[str, str], columns: Mapping[str, str]) -> None:
        self.conditions: list[str] = []
        self.values: list[Any] = []
        errors: dict[str, list[str]] = {}
        for field, text in given.items():
            name = f"filter[{field}]"
            kind = columns.get(field)
            if kind is None:
                errors[name] = [f"The collection has no field {field}."]
                continue
            if kind not in _FILTER_VALUES:
                errors[name] = [f"The field {field} is {kind}: it cannot be filtered by."]
                continue
            parse, shape = _FILTER_VALUES[kind]
            try:
                value = parse(text)
            except (ValueError, OverflowError):
                errors[name] = [f"The {name} must be {shape}."]
                continue
            self.values.append(value)
            position = len(self.values)
            column = quoted(field)
            if kind == "text[]":
                self.conditions.append(f"${position}::text = ANY({column})")
            else:
                self.conditions.append(f"{column} = ${position}::{kind}")
        if errors:
            raise ValidationFailed("The given filters are invalid.", errors=errors)

    def add(self, condition: str, value: Any) -> None:
        """A condition on the next parameter (written `$?`)."""
        self.values.append(value)
        self.conditions.append(condition.replace("$?", f"${len(self.values)}"))

    def where(self) -> str:
        return f"WHERE {' AND '.join(self.conditions)}" if self.conditions else ""


def filters_of(request: Request) -> dict[str, str]:
    """The `filter[field]=value` parameters of a request."""
    return {
        name[len("filter[") : -1]: value
        for name, value in request.query_params.items()
        if name.startswith("filter[") and name.endswith("]")
    }


async def list_page(
    conn: asyncpg.Connection,
    request: Request,
    collection: str,
    params: PageParams,
    *,
    key: str | None = None,
    source_id: int | None = None,
    updated_since: datetime | None = None,
    after: int | None = None,
) -> dict[str, Any]:
    """One page of the collection's records, newest first. With `after` (a record id) the
    page starts below it, and its next link continues from the page's last record."""
    columns = await columns_of(conn, collection)
    if columns is None:  # no importer ever named it: a collection without records
        return build_page(request, [], 0, params)
    filters = Filters(filters_of(request), columns)
    if key is not None:
        filters.add("_key = $?", key)
    if source_id is not None:
        filters.add("_source_id = $?", source_id)
    if updated_since is not None:
        filters.add("_updated_at >= $?", updated_since)
    table, where = table_name(collection), filters.where()
    total = await conn.fetchval(f"SELECT count(*) FROM {table} {where}", *filters.values)
    if after is not None:
        filters.add("_id < $?", after)
        where, offset = filters.where(), 0
    else:
        offset = (params.page - 1) * params.per_page
    rows = await conn.fetch(
        f"SELECT {selected(columns)} FROM {table} {where} "
        f"ORDER BY _id DESC LIMIT {params.per_page} OFFSET {offset}",
        *filters.values,
    )
    page = build_page(
        request, [to_resource(collection, columns, row) for row in rows], total, params
    )
    if after is not None:
        keyset_links(page, request, rows[-1]["_id"] if len(rows) == params.per_page else None)
    return page


async def get(
    conn: asyncpg.Connection, collection: str, key: str, *, source_id: int | None = None
) -> dict[str, Any]:
    missing = NotFound(f"Record '{key}' not found in collection '{collection}'.")
    columns = await columns_of(conn, collection)
    if columns is None:
        raise missing
    row = await conn.fetchrow(
        f"SELECT {selected(columns)} FROM {table_name(collection)} WHERE _key = $1 "
        "AND ($2::int IS NULL OR _source_id = $2::int)",
        key,
        source_id,
    )
    if row is None:
        raise missing
    return to_resource(collection, columns, row)
