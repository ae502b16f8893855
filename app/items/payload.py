"""The push body: read with a size limit and parsed by hand, so hostile JSON is refused (422)
before anything is stored, instead of reaching FastAPI's parser or the worker.

Refused: items nested deeper than ``MAX_DEPTH`` levels (the item itself being level 1, as for a
row of an NDJSON file), integers of over ``MAX_INT_DIGITS`` digits or outside the 64-bit range,
``NaN``/``Infinity`` (and numbers that overflow to them), lone surrogate escapes and NUL
characters (Postgres cannot store either in JSONB), and items that are not objects.
"""

import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from app.core.errors import PayloadTooLarge, ValidationFailed
from app.core.storage import Storage, Stored, new_key

MAX_DEPTH = 64
# Bounds the cost of parsing (Python's own limit for int()); the narrower 64-bit range below is
# what the pipeline can take: its readers (orjson, ijson) and writers refuse wider integers, or
# read them as floats that lose digits or overflow, which would fail the item or its whole run.
MAX_INT_DIGITS = 4300
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# The body's byte budget grows with the item limit; a request may spend it on a few big items.
BYTES_PER_ITEM = 64 * 1024


class _Refused(ValueError):
    """Raised from inside the JSON parser's hooks."""


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, errors={field: [message]})


def byte_limit(max_items: int, max_upload_bytes: int) -> int:
    return min(max_items * BYTES_PER_ITEM, max_upload_bytes)


async def read_limited(
    content_length: str | None, stream: AsyncIterator[bytes], limit: int
) -> bytes:
    """The whole body, or 413 as soon as it is known to exceed ``limit`` bytes."""
    too_large = PayloadTooLarge(f"The request body may not be greater than {limit:,} bytes.")
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise too_large
    body = bytearray()
    async for chunk in stream:
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _parse_int(text: str) -> int:
    if len(text) - text.startswith("-") > MAX_INT_DIGITS:
        raise _Refused(f"an integer has more than {MAX_INT_DIGITS:,} digits")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {text[:20]}{'...' * (len(text) > 20)} is out of range")
    return value


def _parse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not valid JSON")


def parse_json(body: bytes) -> Any:
    if not body.strip():
        raise _invalid("body", "The request body must be a JSON object.")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _invalid("body", "The request body must be UTF-8 encoded JSON.") from exc
    try:
        return json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
        )
    except _Refused as exc:
        raise _invalid("body", f"The request body was refused: {exc}.") from exc
    except RecursionError as exc:
        raise _invalid(
            "body", f"The request body is nested deeper than {MAX_DEPTH} levels."
        ) from exc
    except json.JSONDecodeError as exc:
        raise _invalid(
            "body", f"The request body is not valid JSON: {exc.msg} at line {exc.lineno}."
        ) from exc


def _check_item(item: Any, path: str) -> None:
    """An object of bounded depth whose text Postgres can store and whose integers the
    pipeline can read; else 422 naming ``path`` (or the field, for an integer)."""
    if type(item) is not dict:
        raise _invalid(path, f"The {path} must be an object.")
    stack: list[tuple[Any, int, str]] = [(item, 1, path)]
    while stack:
        value, level, where = stack.pop()
        if level > MAX_DEPTH:
            raise _invalid(path, f"The {path} is nested deeper than {MAX_DEPTH} levels.")
        children = value.items() if type(value) is dict else enumerate(value)
        for key, child in children:
            for text in (key, child):
                if type(text) is str and not _storable(text):
                    raise _invalid(
                        path,
                        f"The {path} contains a NUL character or an unpaired surrogate escape.",
                    )
            if type(child) is dict or type(child) is list:
                stack.append((child, level + 1, f"{where}.{key}"))
            elif type(child) is int and not INT64_MIN <= child <= INT64_MAX:
                field = f"{where}.{key}"
                raise _invalid(
                    field,
                    f"The {field} must be between {INT64_MIN} and {INT64_MAX} "
                    "(send larger numbers as strings).",
                )


def _storable(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class PushBody:
    items: list[dict[str, Any]]
    # Field-path prefix of each item in error messages: `item` or `items.<n>`.
    envelope: str

    def path(self, index: int) -> str:
        return "item" if self.envelope == "item" else f"items.{index}"


def parse_push(body: bytes, max_items: int) -> PushBody:
    """``{"item": {...}}`` or ``{"items": [...]}``: 413 over ``max_items``, 422 for the rest."""
    document = parse_json(body)
    if type(document) is not dict:
        raise _invalid("body", 'The request body must be an object with "item" or "items".')
    if "item" in document and "items" in document:
        raise _invalid("items", 'Give either "item" or "items", not both.')
    if "item" in document:
        _check_item(document["item"], "item")
        return PushBody([document["item"]], "item")
    if "items" not in document:
        raise _invalid("items", "The items field is required when item is not present.")
    items = document["items"]
    if type(items) is not list:
        raise _invalid("items", "The items must be an array.")
    if not items:
        raise _invalid("items", "The items field must have at least 1 item.")
    if len(items) > max_items:
        raise PayloadTooLarge(
            f"Too many items: at most {max_items:,} per request, got {len(items):,}."
        )
    for index, item in enumerate(items):
        _check_item(item, f"items.{index}")
    return PushBody(items, "items")


def canonical_json(items: list[dict[str, Any]]) -> str:
    """The items as one canonical text: key order and spacing do not change the fingerprint."""
    return json.dumps(items, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


async def store_items(storage: Storage, items: list[dict[str, Any]], *, as_array: bool) -> Stored:
    """Write the items under a server-made key: NDJSON (one object a line) or a JSON array."""
    key = new_key(".json" if as_array else ".ndjson")
    lines = map(orjson.dumps, items)  # parse_push left only what orjson writes
    body = b"[" + b",".join(lines) + b"]" if as_array else b"".join(line + b"\n" for line in lines)
    async with storage.writing(key) as out:
        for start in range(0, len(body), _BLOCK_BYTES):
            await out.write(body[start : start + _BLOCK_BYTES])
    assert out.stored is not None
    return out.stored


_BLOCK_BYTES = 1 << 20
