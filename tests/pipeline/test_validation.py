from datetime import date, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from app.importers.schemas import ImporterDefinition
from app.pipeline.mapping import plan_columns
from app.pipeline.validation import RowResult, RowValidator


@pytest.fixture(autouse=True)
def clean_database() -> None:
    """Validation touches no database: the suite's table truncation is not needed."""


def importer(fields: dict[str, dict[str, Any]], **options: Any) -> ImporterDefinition:
    return ImporterDefinition.model_validate(
        {"slug": "users", "collection": "users", "action": "append", **options, "fields": fields}
    )


def validator(definition: ImporterDefinition, columns: list[str] | None = None) -> RowValidator:
    return RowValidator(definition, plan_columns(definition, columns or list(definition.fields)))


def same(a: RowResult, b: RowResult) -> bool:
    """Equal, types included (1 == 1.0 in Python, not in JSON)."""
    return orjson.dumps([a.data, a.errors, a.key]) == orjson.dumps([b.data, b.errors, b.key])


def run(spec: dict[str, Any], value: Any, field: str = "value") -> RowResult:
    check = validator(importer({field: spec}))
    result = check.validate({field: value})
    # Every case here also checks that the column path agrees with the per-row one.
    (column_result,) = check.validate_many([{field: value}])
    assert same(column_result, result), (column_result, result)
    return result


def typed(spec: dict[str, Any], value: Any, field: str = "value") -> Any:
    result = run(spec, value, field)
    assert result.errors is None
    assert result.data is not None
    return result.data[field]


def messages(spec: dict[str, Any], value: Any, field: str = "value") -> list[str]:
    result = run(spec, value, field)
    assert result.data is None
    assert result.errors is not None
    return result.errors[field]


# Export escapes and transforms


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("'=SUM(A1)", "=SUM(A1)"),
        ("'+1", "+1"),
        ("'@home", "@home"),
        ("'\tx", "\tx"),
        ("'\rx", "\rx"),
    ],
)
def test_export_escape_quote_is_removed_before_a_formula_character(
    cell: str, expected: str
) -> None:
    assert typed({}, cell) == expected


def test_export_escape_removal_lets_a_negative_number_back_in() -> None:
    assert typed({"type": "integer"}, "'-5") == -5


@pytest.mark.parametrize("cell", ["'quoted'", "'a", "''=x"])
def test_a_leading_quote_before_other_characters_is_kept(cell: str) -> None:
    assert typed({}, cell) == cell


@pytest.mark.parametrize(
    ("transforms", "cell", "expected"),
    [
        (["trim"], "  Ada  ", "Ada"),
        (["lower"], "Ada", "ada"),
        (["upper"], "Ada", "ADA"),
        (["slug"], "  Héllo, Wörld -- 2024! ", "hello-world-2024"),
        (["strip_non_digits"], "+1 (555) 010-9999", "15550109999"),
        (["trim", "upper"], " ada ", "ADA"),
        (["slug", "upper"], "Hello World", "HELLO-WORLD"),
    ],
)
def test_transforms_apply_in_the_listed_order(
    transforms: list[str], cell: str, expected: str
) -> None:
    assert typed({"transform": transforms}, cell) == expected


def test_transforms_run_before_type_coercion() -> None:
    assert typed({"type": "integer", "transform": ["strip_non_digits"]}, "1,234 pcs") == 1234


def test_transforms_leave_native_values_alone() -> None:
    assert typed({"transform": ["upper"]}, 42) == "42"


# Empty values, null_if, default, required


def test_empty_cell_stays_an_empty_string_for_a_string_field() -> None:
    assert typed({}, "") == ""


@pytest.mark.parametrize("kind", ["integer", "number", "boolean", "date", "email", "list", "json"])
def test_empty_cell_is_null_for_every_type_but_string(kind: str) -> None:
    assert typed({"type": kind}, "") is None


def test_whitespace_only_cell_is_null_for_a_non_string_type() -> None:
    assert typed({"type": "integer"}, "   ") is None


def test_null_if_listing_empty_makes_an_empty_string_null() -> None:
    assert typed({"null_if": [""]}, "") is None


def test_null_if_values_are_null() -> None:
    spec = {"type": "integer", "null_if": ["", "NA", "N/A"]}

    assert [typed(spec, cell) for cell in ["NA", "N/A", "12"]] == [None, None, 12]


def test_null_if_compares_after_transforms() -> None:
    assert typed({"type": "integer", "null_if": ["na"], "transform": ["lower"]}, " NA ") is None


def test_null_if_is_case_sensitive() -> None:
    assert messages({"type": "integer", "null_if": ["NA"]}, "na") == [
        "The value must be an integer."
    ]


def test_none_is_null() -> None:
    assert typed({"type": "integer"}, None) is None


@pytest.mark.parametrize("cell", ["", None, "  "])
def test_default_replaces_a_null_value(cell: Any) -> None:
    assert typed({"type": "number", "default": 0}, cell) == 0


def test_default_is_coerced_to_the_field_type() -> None:
    assert typed({"type": "integer", "default": "5"}, "") == 5
    assert typed({"type": "date", "default": "2024-01-05"}, None) == "2024-01-05"


def test_default_is_used_as_is_without_transforms() -> None:
    assert typed({"default": "Unknown", "transform": ["lower"], "null_if": [""]}, "") == "Unknown"


def test_default_replaces_a_null_if_value() -> None:
    assert typed({"default": "n/a", "null_if": ["-"]}, "-") == "n/a"


def test_list_default_is_not_shared_between_rows() -> None:
    check = validator(importer({"tags": {"type": "list", "default": ["new"]}}))

    first, second = check.validate({"tags": ""}), check.validate({"tags": ""})

    assert first.data == second.data == {"tags": ["new"]}
    assert first.data is not None and second.data is not None
    assert first.data["tags"] is not second.data["tags"]


@pytest.mark.parametrize("cell", [None, "", "   "])
def test_required_string_fails_on_null_empty_and_blank(cell: Any) -> None:
    assert messages({"required": True}, cell, "email") == ["The email field is required."]


def test_required_integer_fails_on_an_empty_cell() -> None:
    assert messages({"type": "integer", "required": True}, "", "age") == [
        "The age field is required."
    ]


def test_required_list_fails_on_a_list_without_items() -> None:
    assert messages({"type": "list", "required": True}, " , ", "tags") == [
        "The tags field is required."
    ]


def test_required_field_with_a_default_takes_the_default() -> None:
    assert typed({"type": "integer", "required": True, "default": 1}, "") == 1


def test_required_field_without_a_column_fails() -> None:
    definition = importer({"email": {}, "name": {"required": True}})

    result = validator(definition, ["email"]).validate({"email": "ada@example.com"})

    assert result.errors == {"name": ["The name field is required."]}


# Types


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Ada", "Ada"),
        (" Ada ", " Ada "),
        (42, "42"),
        (42.0, "42"),
        (1.5, "1.5"),
        (True, "true"),
        (datetime(2024, 1, 5, 10, 30), "2024-01-05T10:30:00"),
        (date(2024, 1, 5), "2024-01-05"),
        ({"a": 1}, '{"a":1}'),
    ],
)
def test_string_field_takes_the_text_of_any_value(value: Any, expected: str) -> None:
    assert typed({}, value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("42", 42),
        (" 42 ", 42),
        ("+42", 42),
        ("-3", -3),
        ("007", 7),
        ("42.0", 42),
        (42, 42),
        (42.0, 42),
        (-3.0, -3),
    ],
)
def test_integer_field_accepts_integral_text_and_numbers(value: Any, expected: int) -> None:
    result = typed({"type": "integer"}, value)

    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(
    "value",
    [
        "4.5",
        "abc",
        "1e3",
        "1,000",
        "1_000",
        "٤٢",
        "9223372036854775808",
        True,
        4.5,
        float("nan"),
        float("inf"),
        [1],
        date(2024, 1, 5),
        2**63,
    ],
)
def test_integer_field_rejects_decimal_text_with_laravel_message(value: Any) -> None:
    assert messages({"type": "integer"}, value, "age") == ["The age must be an integer."]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3.14", 3.14),
        (" -0.5 ", -0.5),
        ("3", 3),
        ("+7", 7),
        ("1e3", 1000.0),
        (".5", 0.5),
        (3, 3),
        (2.5, 2.5),
        ("99999999999999999999", 1e20),
        (2**70, float(2**70)),
    ],
)
def test_number_field_accepts_numeric_text_and_numbers(value: Any, expected: float) -> None:
    result = typed({"type": "number"}, value)

    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    "value",
    ["1,000", "abc", "nan", "inf", "-Infinity", "1_0", "1e999", float("nan"), True, 10**400],
)
def test_number_field_rejects_non_numbers_nan_and_infinity(value: Any) -> None:
    assert messages({"type": "number"}, value, "score") == ["The score must be a number."]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True),
        ("FALSE", False),
        ("1", True),
        ("0", False),
        ("Yes", True),
        ("no", False),
        ("y", True),
        ("N", False),
        ("on", True),
        ("off", False),
        (" true ", True),
        (True, True),
        (False, False),
        (1, True),
        (0, False),
        (1.0, True),
    ],
)
def test_boolean_field_accepts_the_usual_spellings(value: Any, expected: bool) -> None:
    assert typed({"type": "boolean"}, value) is expected


@pytest.mark.parametrize("value", ["maybe", "2", "t", 2, -1, 0.5, [True]])
def test_boolean_field_rejects_other_values(value: Any) -> None:
    assert messages({"type": "boolean"}, value, "active") == [
        "The active field must be true or false."
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-05", "2024-01-05"),
        ("2024-01-05T10:30:00", "2024-01-05"),
        ("2024-01-05 10:30:00+02:00", "2024-01-05"),
        (date(2024, 1, 5), "2024-01-05"),
        (datetime(2024, 1, 5, 23, 59), "2024-01-05"),
    ],
)
def test_date_field_without_format_accepts_iso_dates_and_datetimes(
    value: Any, expected: str
) -> None:
    assert typed({"type": "date"}, value) == expected


@pytest.mark.parametrize("value", ["yesterday", "05/01/2024", "2024-02-30", 20240105])
def test_date_field_without_format_rejects_other_values(value: Any) -> None:
    assert messages({"type": "date"}, value, "signup_date") == [
        "The signup date is not a valid date."
    ]


@pytest.mark.parametrize(
    ("fmt", "value", "expected"),
    [
        ("%Y-%m-%d", "2024-01-05", "2024-01-05"),
        ("%Y-%m-%d", "2024-1-5", "2024-01-05"),  # strptime's leniency, past the fast path
        ("%d/%m/%Y", "05/01/2024", "2024-01-05"),
        ("%d/%m/%Y", datetime(2024, 1, 5, 8, 0), "2024-01-05"),
    ],
)
def test_date_field_with_format_parses_like_strptime(fmt: str, value: Any, expected: str) -> None:
    assert typed({"type": "date", "format": fmt}, value) == expected


@pytest.mark.parametrize("value", ["2024-02-30", "05/01/2024", "2024-01-05T10:00", "2024-W01-1"])
def test_date_field_with_format_rejects_text_of_another_shape(value: str) -> None:
    assert messages({"type": "date", "format": "%Y-%m-%d"}, value, "signup_date") == [
        "The signup date does not match the format YYYY-MM-DD."
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-05T10:30:00", "2024-01-05T10:30:00"),
        ("2024-01-05 10:30", "2024-01-05T10:30:00"),
        ("2024-01-05T10:30:00+02:00", "2024-01-05T10:30:00+02:00"),
        ("2024-01-05T10:30:00Z", "2024-01-05T10:30:00+00:00"),
        ("2024-01-05", "2024-01-05T00:00:00"),
        (
            datetime(2024, 1, 5, 10, 30, tzinfo=timezone(timedelta(hours=1))),
            "2024-01-05T10:30:00+01:00",
        ),
        (date(2024, 1, 5), "2024-01-05T00:00:00"),
    ],
)
def test_datetime_field_gives_iso_8601_keeping_the_timezone(value: Any, expected: str) -> None:
    assert typed({"type": "datetime"}, value) == expected


def test_datetime_field_with_format_parses_like_strptime() -> None:
    spec = {"type": "datetime", "format": "%d/%m/%Y %H:%M"}

    assert typed(spec, "05/01/2024 10:30") == "2024-01-05T10:30:00"


@pytest.mark.parametrize("value", ["soon", "2024-13-01T00:00", 1704450600])
def test_datetime_field_rejects_values_that_are_not_dates(value: Any) -> None:
    assert messages({"type": "datetime"}, value, "created_at") == [
        "The created at is not a valid date."
    ]


def test_datetime_field_with_format_rejects_text_of_another_shape() -> None:
    spec = {"type": "datetime", "format": "%d/%m/%Y %H:%M"}

    assert messages(spec, "2024-01-05T10:30", "created_at") == [
        "The created at does not match the format DD/MM/YYYY HH:mm."
    ]


@pytest.mark.parametrize(
    "value",
    [
        "ada@example.com",
        "First.Last+tag@mail.example.co.uk",
        "o'brien@example.ie",
        "jürgen@bücher.de",
        "ivan@example.xn--p1ai",
        " ada@example.com ",
    ],
)
def test_email_field_accepts_pragmatic_addresses(value: str) -> None:
    assert typed({"type": "email"}, value) == value.strip()


@pytest.mark.parametrize(
    "value",
    [
        "ada",
        "ada@",
        "@example.com",
        "ada@example",
        "ada @example.com",
        "a@b@example.com",
        "ada@example.c",
        "ada@example.123",
        "ada@.example.com",
        "ada@example..com",
        42,
    ],
)
def test_email_field_rejects_malformed_addresses(value: Any) -> None:
    assert messages({"type": "email"}, value, "email") == [
        "The email must be a valid email address."
    ]


@pytest.mark.parametrize(
    "value",
    [
        "https://example.com",
        "http://example.com:8080/a/b?c=d#e",
        "HTTPS://Example.com",
        "http://localhost",
        "https://user:pw@example.com/",
        "http://[::1]:80/",
    ],
)
def test_url_field_accepts_http_and_https_urls_with_a_host(value: str) -> None:
    assert typed({"type": "url"}, value) == value


@pytest.mark.parametrize(
    "value",
    ["ftp://example.com", "example.com", "https://", "https:///path", "http://exa mple.com", 7],
)
def test_url_field_rejects_other_urls(value: Any) -> None:
    assert messages({"type": "url"}, value, "website") == ["The website must be a valid URL."]


def test_list_field_splits_text_on_its_separator_trimming_and_dropping_empty_items() -> None:
    assert typed({"type": "list", "separator": ";"}, " vip; early ;;beta; ") == [
        "vip",
        "early",
        "beta",
    ]


def test_list_field_splits_on_comma_by_default() -> None:
    assert typed({"type": "list"}, "a,b") == ["a", "b"]


def test_list_field_takes_a_list_as_is() -> None:
    assert typed({"type": "list"}, ["a", 1]) == ["a", 1]


@pytest.mark.parametrize("value", [5, {"a": 1}, True])
def test_list_field_rejects_other_values(value: Any) -> None:
    assert messages({"type": "list"}, value, "tags") == ["The tags must be a list."]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('{"a": [1, 2]}', {"a": [1, 2]}),
        ("[1, 2]", [1, 2]),
        ('"x"', "x"),
        ({"a": 1}, {"a": 1}),
        ([1], [1]),
        (3, 3),
    ],
)
def test_json_field_parses_text_and_keeps_json_values(value: Any, expected: Any) -> None:
    assert typed({"type": "json"}, value) == expected


@pytest.mark.parametrize("value", ["{a: 1}", "[1,", "NaN", date(2024, 1, 5)])
def test_json_field_rejects_invalid_json(value: Any) -> None:
    assert messages({"type": "json"}, value, "payload") == [
        "The payload must be a valid JSON string."
    ]


# Rules


def test_integer_min_and_max_compare_the_value() -> None:
    spec = {"type": "integer", "min": 0, "max": 150}

    assert messages(spec, "-1", "age") == ["The age must be at least 0."]
    assert messages(spec, "151", "age") == ["The age may not be greater than 150."]
    assert typed(spec, "150") == 150


def test_number_limits_keep_their_fraction_in_messages() -> None:
    assert messages({"type": "number", "min": 0.5}, "0.25", "score") == [
        "The score must be at least 0.5."
    ]


def test_string_min_and_max_compare_the_length() -> None:
    spec = {"min": 2, "max": 5}

    assert messages(spec, "A", "name") == ["The name must be at least 2 characters."]
    assert messages(spec, "Adelaide", "name") == ["The name may not be greater than 5 characters."]


def test_min_length_and_max_length_count_characters() -> None:
    spec = {"min_length": 2, "max_length": 4}

    assert messages(spec, "Å", "name") == ["The name must be at least 2 characters."]
    assert messages(spec, "Ådaåå", "name") == ["The name may not be greater than 4 characters."]
    assert typed(spec, "Ådaå") == "Ådaå"


def test_email_max_compares_the_length() -> None:
    assert messages({"type": "email", "max": 10}, "ada@example.com", "email") == [
        "The email may not be greater than 10 characters."
    ]


def test_list_min_and_max_count_items() -> None:
    spec = {"type": "list", "min": 1, "max": 2}

    assert messages(spec, [], "tags") == ["The tags must have at least 1 items."]
    assert messages(spec, "a,b,c", "tags") == ["The tags may not have more than 2 items."]


def test_pattern_must_match_somewhere_in_the_value() -> None:
    spec = {"pattern": r"^[A-Z]{3}\d$"}

    assert typed(spec, "ABC1") == "ABC1"
    assert messages(spec, "abc1", "code") == ["The code format is invalid."]


def test_pattern_applies_to_the_text_of_a_number() -> None:
    assert messages({"type": "integer", "pattern": r"^\d{4}$"}, "123", "code") == [
        "The code format is invalid."
    ]


def test_in_compares_strings_exactly() -> None:
    spec = {"in": ["US", "GB", "DE"]}

    assert typed(spec, "GB") == "GB"
    assert messages(spec, "gb", "country") == ["The selected country is invalid."]


def test_in_compares_numbers_numerically() -> None:
    spec = {"type": "number", "in": [1, "2", 2.5]}

    assert [typed(spec, value) for value in ["1.0", "2", 2.5]] == [1.0, 2, 2.5]
    assert messages(spec, "3", "rating") == ["The selected rating is invalid."]


def test_in_on_a_list_requires_every_item() -> None:
    spec = {"type": "list", "in": ["a", "b"]}

    assert typed(spec, "a,b") == ["a", "b"]
    assert messages(spec, "a,c", "tags") == ["The selected tags is invalid."]


def test_every_failing_rule_is_reported() -> None:
    spec = {"min_length": 3, "pattern": "^[a-z]+$", "in": ["abc"]}

    assert messages(spec, "X", "code") == [
        "The code must be at least 3 characters.",
        "The code format is invalid.",
        "The selected code is invalid.",
    ]


def test_type_failure_is_the_only_message_of_its_field() -> None:
    spec = {"type": "integer", "min": 0, "in": [1, 2]}

    assert messages(spec, "-4.5", "age") == ["The age must be an integer."]


def test_rules_are_skipped_for_null_values() -> None:
    assert typed({"type": "integer", "min": 1, "in": [1]}, "") is None


def test_rules_are_skipped_for_an_empty_optional_string() -> None:
    assert typed({"min_length": 2, "pattern": "^x", "in": ["xy"]}, "") == ""


def test_a_default_is_checked_by_the_rules() -> None:
    assert messages({"in": ["US"], "default": "FR"}, None, "country") == [
        "The selected country is invalid."
    ]


# Rows


def users() -> ImporterDefinition:
    return importer(
        {
            "email": {"from": ["Email", "E-mail"], "type": "email", "transform": ["trim", "lower"]},
            "age": {"from": "Age", "type": "integer"},
            "signup_date": {"type": "date"},
        },
        action="upsert",
        key=["email"],
    )


def test_valid_row_gives_typed_data_and_its_key() -> None:
    check = validator(users(), ["E-mail", "Age", "Signup Date"])

    result = check.validate(
        {"E-mail": " Ada@Example.com", "Age": "36", "Signup Date": "2024-01-05"}
    )

    assert result == RowResult(
        {"email": "ada@example.com", "age": 36, "signup_date": "2024-01-05"},
        None,
        "ada@example.com",
    )


def test_invalid_row_gives_messages_per_field_and_no_data_or_key() -> None:
    check = validator(users(), ["Email", "Age", "signup_date"])

    result = check.validate({"Email": "ada", "Age": "old", "signup_date": "2024-01-05"})

    assert result == RowResult(
        None,
        {
            "email": ["The email must be a valid email address."],
            "age": ["The age must be an integer."],
        },
        None,
    )


def test_unmapped_columns_are_dropped_and_every_field_is_present() -> None:
    check = validator(users(), ["Email", "Notes", "_row_number", "_error_message"])

    result = check.validate(
        {"Email": "ada@example.com", "Notes": "x", "_row_number": "3", "_error_message": "e"}
    )

    assert result.data == {"email": "ada@example.com", "age": None, "signup_date": None}


def test_missing_cells_of_a_ragged_row_are_null() -> None:
    check = validator(users(), ["Email", "Age"])

    assert check.validate({"Email": "ada@example.com"}).data == {
        "email": "ada@example.com",
        "age": None,
        "signup_date": None,
    }


def test_xlsx_native_values_are_typed() -> None:
    definition = importer(
        {
            "id": {"type": "integer"},
            "score": {"type": "number"},
            "zip": {},
            "signup_date": {"type": "date"},
            "created_at": {"type": "datetime"},
            "active": {"type": "boolean"},
        }
    )
    row = {
        "id": 7.0,
        "score": 9.5,
        "zip": 2134.0,
        "signup_date": datetime(2024, 1, 5, 0, 0),
        "created_at": datetime(2024, 1, 5, 10, 30),
        "active": True,
    }

    assert validator(definition).validate(row).data == {
        "id": 7,
        "score": 9.5,
        "zip": "2134",
        "signup_date": "2024-01-05",
        "created_at": "2024-01-05T10:30:00",
        "active": True,
    }


def test_composite_key_joins_key_field_texts_with_pipes_in_key_order() -> None:
    definition = importer(
        {"carrier": {}, "year": {"type": "integer"}, "month": {"type": "integer"}, "day": {}},
        action="upsert",
        key=["year", "month", "day", "carrier"],
    )

    result = validator(definition).validate(
        {"carrier": "UA", "year": "2013", "month": 1, "day": "1"}
    )

    assert result.key == "2013|1|1|UA"


@pytest.mark.parametrize(
    ("kind", "value", "key"),
    [
        ("integer", 7, "7"),
        ("number", "1.5", "1.5"),
        ("number", 2.0, "2"),
        ("boolean", "yes", "true"),
        ("boolean", False, "false"),
        ("date", date(2024, 1, 5), "2024-01-05"),
    ],
)
def test_key_text_of_typed_values(kind: str, value: Any, key: str) -> None:
    definition = importer({"id": {"type": kind}}, action="upsert", key=["id"])

    assert validator(definition).validate({"id": value}).key == key


@pytest.mark.parametrize("value", ["", "  ", None])
def test_empty_key_field_fails_as_required_even_when_not_required(value: Any) -> None:
    definition = importer({"email": {}, "name": {}}, action="upsert", key=["email"])

    result = validator(definition).validate({"email": value, "name": "Ada"})

    assert result.errors == {"email": ["The email field is required."]}
    assert result.key is None


def test_append_action_gives_no_key_and_does_not_require_key_fields() -> None:
    definition = importer({"email": {}}, action="append", key=["email"])

    result = validator(definition).validate({"email": ""})

    assert result == RowResult({"email": ""}, None, None)


def test_error_lists_are_not_shared_between_rows() -> None:
    check = validator(importer({"age": {"type": "integer"}}))

    first = check.validate({"age": "x"})
    assert first.errors is not None
    first.errors["age"].append("changed")

    assert check.validate({"age": "x"}).errors == {"age": ["The age must be an integer."]}


def test_empty_list_separator_is_refused_by_the_definition() -> None:
    with pytest.raises(ValueError, match=r"fields\.tags\.separator"):
        importer({"tags": {"type": "list", "separator": ""}})


COLUMN_CASES: list[tuple[dict[str, Any], list[Any]]] = [
    ({"type": "integer", "min": 0, "max": 150}, ["1", "42", "150", "7"]),
    ({"type": "integer", "min": 0, "max": 150}, ["1", "151", "-3", " 7 ", "", "x", "1.0"]),
    ({"type": "integer"}, ["123456789012345678", "1234567890123456789", "+5", "-0", "1_0"]),
    ({"type": "integer", "null_if": ["NA"]}, ["1", "NA", "2"]),
    ({"type": "integer", "null_if": ["0"], "default": 7}, ["0", "1", "x", "2"]),
    ({"type": "string", "required": True}, ["it's", "'+1", "ok", ""]),
    ({"type": "date", "format": "%Y-%m-%d"}, ["2024-01-31", "2024-13-01", "", "x"]),
    ({"type": "integer"}, ["1", "'=2", "3"]),
    ({"type": "integer"}, ["1\x002", "3"]),
    ({"type": "integer"}, [1, "2", None, 3.0]),
    ({"type": "number"}, ["1", "2.5", "-0.25", "10"]),
    ({"type": "number"}, ["1.", ".5", "1e3", "nan", "inf", " 2"]),
    ({"type": "date", "format": "%Y-%m-%d"}, ["2024-01-31", "2023-12-01"]),
    ({"type": "date", "format": "%Y-%m-%d"}, ["2024-02-30", "2024-1-5", "2024-01-31"]),
    ({"type": "email", "required": True}, ["a@b.co", "x.y+z@mail.example.org"]),
    ({"type": "email", "required": True}, ["a@b.co", "", "not-an-email", " a@b.co"]),
    ({"type": "email", "transform": ["trim", "lower"]}, [" A@B.CO ", "x@Y.io"]),
    ({"type": "email"}, ["'-a@b.co", "a@b.co"]),
    ({"type": "email"}, ["a@b.co\x00c@d.co", "e@f.co"]),
    ({"type": "string"}, ["Ada", "", "  ", "'=SUM(A1)", "x"]),
    ({"type": "string", "required": True, "min_length": 2}, ["Ada", "A", "", "Bob"]),
    ({"type": "string", "in": ["DE", "FR"]}, ["DE", "FR", "", "US"]),
    ({"type": "string", "null_if": ["", "n/a"]}, ["x", "", "n/a"]),
    ({"type": "string", "transform": ["upper"], "null_if": ["X"]}, ["x", "y"]),
    ({"type": "string", "pattern": "^[a-z]+$"}, ["abc", "ABC"]),
    ({"type": "string"}, ["x", 5, None, True]),
    ({"type": "list", "separator": ";"}, ["a;b", "", " c ; ;d"]),
    ({"type": "boolean"}, ["yes", "no", "maybe"]),
]


@pytest.mark.parametrize(("spec", "cells"), COLUMN_CASES)
def test_a_column_validates_as_its_cells_do_one_by_one(
    spec: dict[str, Any], cells: list[Any]
) -> None:
    check = validator(importer({"value": spec}))
    rows = [{"value": cell} for cell in cells]
    results = check.validate_many(rows)
    assert len(results) == len(rows)
    for row, result in zip(rows, results, strict=True):
        assert same(result, check.validate(row)), row


def test_a_chunk_validates_as_its_rows_do_one_by_one() -> None:
    fields = {
        "id": {"type": "integer", "required": True},
        "email": {"type": "email", "required": True},
        "age": {"type": "integer", "min": 0, "max": 150},
        "country": {"type": "string", "in": ["DE", "FR"]},
    }
    check = validator(importer(fields, action="upsert", key=["email"]))
    rows = [
        {"id": "1", "email": "a@b.co", "age": "3", "country": "DE"},
        {"id": "x", "email": "c@d.co", "age": "200", "country": "US"},
        {"id": "3", "email": "", "age": "", "country": ""},
        {"id": "4", "email": "e@f.co", "age": "40", "country": "FR"},
    ]
    results = check.validate_many(rows)
    assert [r.key for r in results] == ["a@b.co", None, None, "e@f.co"]
    for row, result in zip(rows, results, strict=True):
        assert same(result, check.validate(row)), row


def test_keys_of_a_chunk_are_the_keys_its_valid_rows_get() -> None:
    fields = {
        "email": {"type": "email", "required": True, "transform": ["lower"]},
        "id": {"type": "integer"},
        "name": {"type": "string", "required": True},
    }
    rows = [
        {"email": "A@B.CO", "id": "7", "name": "Ann"},
        {"email": "nope", "id": "8", "name": "Bob"},
        {"email": "c@d.co", "id": "x", "name": ""},
    ]
    single = validator(importer(fields, action="upsert", key=["email"]))
    assert single.keys_many(rows) == ["a@b.co", None, "c@d.co"]
    # A composite key joins its fields in the key's order, not the fields' order.
    composite = validator(importer(fields, action="upsert", key=["id", "email"]))
    assert composite.keys_many(rows) == ["7|a@b.co", None, None]
    assert composite.keys_many(rows[:1]) == [composite.validate(rows[0]).key]
    assert validator(importer(fields)).keys_many(rows) == [None, None, None]  # append


@pytest.mark.parametrize("odd", [[], [0], [31], [32], [0, 31, 32, 63, 64, 99], list(range(100))])
def test_odd_cells_anywhere_in_a_long_column_validate_as_their_rows_do(odd: list[int]) -> None:
    """A column with odd cells is searched for them a block of cells at a time: odd cells
    at block edges, or everywhere, must come out as they do row by row."""
    fields = {
        "n": {"type": "integer", "min": 0},
        "d": {"type": "date", "null_if": ["NA"]},
        "s": {"type": "string", "min_length": 1},
        "e": {"type": "email"},
    }
    plain = {"n": "5", "d": "2024-01-31", "s": "text", "e": "a@b.co"}
    oddities = [
        {"n": "x", "d": "2024-02-30", "s": "", "e": "nope"},
        {"n": "-1", "d": "NA", "s": "'=1", "e": "A@B.CO "},
        {"n": " 7 ", "d": "", "s": "it's", "e": ""},
    ]
    rows = [dict(plain) for _ in range(100)]
    for turn, i in enumerate(odd):
        rows[i] = oddities[turn % len(oddities)]
    check = validator(importer(fields))
    for row, result in zip(rows, check.validate_many(rows), strict=True):
        assert same(result, check.validate(row)), row
