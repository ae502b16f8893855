"""A plain per-row reference of the row validator (SPEC §3), for the property test.

Written straight from the rules, one `if` after another, it knows nothing of
`app.pipeline.validation`, whose closures, fast paths and column batches it checks. Where
today's behaviour has a subtle rule, the rule is written out with a one-line comment.
"""

import math
import re
import unicodedata
from collections.abc import Callable
from datetime import date, datetime, time
from typing import Any

import orjson

from app.core.timefmt import human_format
from app.importers.schemas import FieldSpec, ImporterDefinition
from app.pipeline.mapping import plan_columns

# Field value, field messages (empty when the value is valid).
Checked = tuple[Any, list[str]]

# A parse that fails (None is a value: JSON `null`).
INVALID: Any = object()
# The failed-rows CSV export puts a quote before these, so that spreadsheets run no formula.
ESCAPES = ("'=", "'+", "'-", "'@", "'\t", "'\r")
# Every stored integer is a bigint.
INT64 = range(-(2**63), 2**63)
BOOLEAN_WORDS = {
    **dict.fromkeys(["true", "1", "yes", "y", "on"], True),
    **dict.fromkeys(["false", "0", "no", "n", "off"], False),
}
# One '@', no spaces, a dotted domain, a top-level domain of letters or punycode.
EMAIL = re.compile(r"[^\s@]+@(?:[^\s@.]+\.)+(?:[^\W\d_]{2,}|[xX][nN]--[a-zA-Z0-9-]+)")
# http(s), optional user info, a host name or a bracketed IP, optional port, path, query.
URL = re.compile(
    r"[hH][tT][tT][pP][sS]?://(?:[^\s/?#@]+@)?(?:[^\s/?#@:\[\]]+|\[[0-9a-fA-F:.]+\])"
    r"(?::[0-9]{1,5})?(?:[/?#]\S*)?"
)


def text_of(value: Any) -> str:
    """A value as the text a person would type."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # a spreadsheet's 42.0 is 42
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, dict | list):
        return orjson.dumps(value, default=str).decode()
    return str(value)


def slug(text: str) -> str:
    # Accents are transliterated (é -> e); every other run of characters becomes one '-'.
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


TRANSFORMS: dict[str, Callable[[str], str]] = {
    "trim": str.strip,
    "lower": str.lower,
    "upper": str.upper,
    "slug": slug,
    "strip_non_digits": lambda text: re.sub(r"[^0-9]", "", text),
}
# The messages of min and max (and min_length, max_length) by what they count.
BOUNDS = {
    "value": ("must be at least {}.", "may not be greater than {}."),
    "items": ("must have at least {} items.", "may not have more than {} items."),
    "characters": ("must be at least {} characters.", "may not be greater than {} characters."),
}
TYPE_MESSAGES = {
    "integer": "must be an integer.",
    "number": "must be a number.",
    "boolean": "field must be true or false.",
    "date": "is not a valid date.",
    "datetime": "is not a valid date.",
    "email": "must be a valid email address.",
    "url": "must be a valid URL.",
    "list": "must be a list.",
    "json": "must be a valid JSON string.",
}


def parse_text(spec: FieldSpec, text: str) -> Any:
    """The typed value of a text cell, or INVALID."""
    kind = spec.type
    if kind == "string":
        return text
    if kind in ("integer", "number") and (not text.isascii() or "_" in text):
        return INVALID  # int() and float() would take '1_000' and other scripts' digits
    if kind == "integer":
        try:
            number = int(text)
        except ValueError:
            # '42.0' is how a spreadsheet float comes back as text (at most 19 digits first).
            match = re.fullmatch(r"([+-]?[0-9]{1,19})\.0*", text)
            if match is None:
                return INVALID
            number = int(match[1])
        return number if number in INT64 else INVALID
    if kind == "number":
        # Text without a '.' that is an int64 stays an integer; anything else is a float.
        if "." not in text:
            try:
                if int(text) in INT64:
                    return int(text)
            except ValueError:
                pass
        try:
            real = float(text)
        except ValueError:
            return INVALID
        return real if math.isfinite(real) else INVALID
    if kind == "boolean":
        return BOOLEAN_WORDS.get(text.lower(), INVALID)
    if kind in ("date", "datetime"):
        try:
            if spec.format is not None:
                moment = datetime.strptime(text, spec.format)
            elif kind == "date" and len(text) <= 10:
                # Ten characters or fewer are read as a date alone (also '20240105').
                return date.fromisoformat(text).isoformat()
            else:
                moment = datetime.fromisoformat(text)
        except ValueError:
            return INVALID
        return moment.date().isoformat() if kind == "date" else moment.isoformat()
    if kind == "email":
        return text if EMAIL.fullmatch(text) else INVALID
    if kind == "url":
        return text if URL.fullmatch(text) else INVALID
    if kind == "list":
        items = [item.strip() for item in text.split(spec.separator)]
        return [item for item in items if item]
    assert kind == "json"
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return INVALID


def parse_native(spec: FieldSpec, value: Any) -> Any:
    """The typed value of a native XLSX/JSON value (int, float, bool, date, ...), or INVALID."""
    kind = spec.type
    if kind == "string":
        return text_of(value)
    if kind == "integer":
        # A bool is not a count; a float must be whole.
        if type(value) is float and value.is_integer():
            value = int(value)
        return value if type(value) is int and value in INT64 else INVALID
    if kind == "number":
        if type(value) is int and value not in INT64:
            try:
                value = float(value)  # wider than a bigint: a float, if a float holds it
            except OverflowError:
                return INVALID
        if type(value) is float:
            return value if math.isfinite(value) else INVALID
        return value if type(value) is int else INVALID
    if kind == "boolean":
        if type(value) is bool:
            return value
        if type(value) in (int, float) and value in (0, 1):
            return value == 1
        return INVALID
    if kind in ("date", "datetime") and isinstance(value, date):
        if not isinstance(value, datetime):  # a date is a datetime at midnight
            value = datetime(value.year, value.month, value.day)
        return value.date().isoformat() if kind == "date" else value.isoformat()
    if kind == "list":
        return value if type(value) is list else INVALID
    if kind == "json":
        if type(value) is float:
            return value if math.isfinite(value) else INVALID
        return value if type(value) in (dict, list, bool, int) else INVALID
    return INVALID  # email and url are text only


def parse(spec: FieldSpec, value: Any) -> Any:
    return parse_text(spec, value) if isinstance(value, str) else parse_native(spec, value)


def type_message(label: str, spec: FieldSpec) -> str:
    if spec.type in ("date", "datetime") and spec.format is not None:
        # Shown as a person reads it: %Y-%m-%d is YYYY-MM-DD (app.core.timefmt).
        return f"The {label} does not match the format {human_format(spec.format)}."
    return f"The {label} {TYPE_MESSAGES[spec.type]}"


def bound_messages(
    label: str, size: float, low: float | None, high: float | None, counts: str
) -> list[str]:
    """Under `low` or over `high`; when both (min > max), only the low side is told."""
    too_low, too_high = BOUNDS[counts]
    if low is not None and size < low:
        return [f"The {label} {too_low.format(text_of(float(low)))}"]
    if high is not None and size > high:
        return [f"The {label} {too_high.format(text_of(float(high)))}"]
    return []


def rule_messages(label: str, spec: FieldSpec, value: Any) -> list[str]:
    """The messages of the rules a typed, non-blank value breaks, in the rules' order."""
    kind = spec.type
    messages = []
    if kind in ("integer", "number"):
        messages += bound_messages(label, value, spec.min, spec.max, "value")
    if kind == "list":  # min and max count items; min_length and max_length do nothing
        messages += bound_messages(label, len(value), spec.min, spec.max, "items")
    if kind in ("string", "email", "url"):  # both pairs count characters, each told apart
        messages += bound_messages(label, len(value), spec.min, spec.max, "characters")
        messages += bound_messages(
            label, len(value), spec.min_length, spec.max_length, "characters"
        )
    # The pattern is searched in the value's text (a number's, a boolean's, a date's).
    pattern = spec.pattern
    if (
        pattern is not None
        and kind not in ("list", "json")
        and not re.search(pattern, text_of(value))
    ):
        messages.append(f"The {label} format is invalid.")
    if spec.in_ is not None and kind != "json":
        if kind in ("integer", "number", "boolean"):
            # Compared as typed values: `in: [1, " 2 "]` allows 1, 1.0 and '2'.
            entries = [entry.strip() if isinstance(entry, str) else entry for entry in spec.in_]
            allowed = [parse(spec, entry) for entry in entries]
            ok = value in [entry for entry in allowed if entry is not INVALID]
        elif kind == "list":  # every item must be allowed, compared as text
            ok = all(text_of(item) in map(text_of, spec.in_) for item in value)
        else:
            ok = value in map(text_of, spec.in_)
        if not ok:
            messages.append(f"The selected {label} is invalid.")
    return messages


def checked(label: str, spec: FieldSpec, required: bool, value: Any) -> Checked:
    """A typed value through `required` and the rules."""
    # A null or blank value fails `required` and skips every other rule.
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return value, [f"The {label} field is required."] if required else []
    # An empty list or object fails `required` too (yet the rules see it when not required).
    if required and (value == [] or value == {}):
        return value, [f"The {label} field is required."]
    return value, rule_messages(label, spec, value)


def null_value(label: str, spec: FieldSpec, required: bool) -> Checked:
    """The value of a null cell: the default, else null."""
    if spec.default is not None:
        # The default is typed and checked, but not unescaped, transformed or stripped.
        value = parse(spec, spec.default)
        if value is INVALID:
            return None, [type_message(label, spec)]
        return checked(label, spec, required, value)
    return None, [f"The {label} field is required."] if required else []


def field_value(label: str, spec: FieldSpec, required: bool, cell: Any) -> Checked:
    """One cell (text, a native value, or None) as the field's value and its messages."""
    if cell is None:
        return null_value(label, spec, required)
    if isinstance(cell, str):
        text = cell
        if text.startswith(ESCAPES):
            text = text[1:]  # only one quote goes: "''=x" stays as it is
        for name in spec.transform:
            text = TRANSFORMS[name](text)
        if spec.type != "string":
            text = text.strip()  # only a string keeps its outer spaces
        # An empty cell is null for every type but string (unless null_if lists "").
        if text in spec.null_if or (text == "" and spec.type != "string"):
            return null_value(label, spec, required)
        value = parse_text(spec, text)
    else:
        value = parse_native(spec, cell)  # transforms only touch text
    if value is INVALID:
        return None, [type_message(label, spec)]
    return checked(label, spec, required, value)


def field_values(
    definition: ImporterDefinition, columns: list[str], row: dict[str, Any]
) -> dict[str, Checked]:
    """Every field's value and messages, for a row of an input whose header is `columns`."""
    plan = plan_columns(definition, columns)
    keyed = definition.action != "append"
    values = {}
    for name, spec in definition.fields.items():
        column = plan.sources[name]
        cell = None if column is None else row.get(column)  # a missing column is null
        # A record needs its key: key fields are required whatever the definition says.
        required = spec.required or (keyed and name in definition.key)
        values[name] = field_value(name.replace("_", " "), spec, required, cell)
    return values


def key_text(definition: ImporterDefinition, data: dict[str, Any]) -> str | None:
    """The record key: the key fields' texts joined by '|' in key order (none for append)."""
    if definition.action == "append":
        return None
    return "|".join(text_of(data[name]) for name in definition.key)


def reference_validate(
    definition: ImporterDefinition, columns: list[str], row: dict[str, Any]
) -> tuple[dict[str, Any] | None, dict[str, list[str]] | None, str | None]:
    """(data, None, key) for a valid row, (None, errors, None) for an invalid one."""
    values = field_values(definition, columns, row)
    errors = {name: messages for name, (_, messages) in values.items() if messages}
    if errors:
        return None, errors, None
    data = {name: value for name, (value, _) in values.items()}
    return data, None, key_text(definition, data)


def reference_key(
    definition: ImporterDefinition, columns: list[str], row: dict[str, Any]
) -> str | None:
    """A row's key from its key fields alone (None when one of them is invalid), valid or
    not otherwise."""
    values = field_values(definition, columns, row)
    if any(values[name][1] for name in definition.key):
        return None
    return key_text(definition, {name: values[name][0] for name in definition.key})
