from typing import Any

import pytest

from app.importers.schemas import ImporterDefinition
from app.pipeline.mapping import MissingColumns, plan_columns


@pytest.fixture(autouse=True)
def clean_database() -> None:
    """Header matching touches no database: the suite's table truncation is not needed."""


def importer(fields: dict[str, dict[str, Any]], **options: Any) -> ImporterDefinition:
    return ImporterDefinition.model_validate(
        {"slug": "users", "collection": "users", "action": "append", **options, "fields": fields}
    )


@pytest.mark.parametrize(
    "header", ["email", "Email", "EMAIL", " Email ", "E-mail", "e mail", "E_MAIL"]
)
def test_header_matches_field_name_ignoring_case_spaces_underscores_and_hyphens(
    header: str,
) -> None:
    plan = plan_columns(importer({"email": {}}), ["id", header])

    assert plan.sources == {"email": header}


def test_from_name_matches_folded_header() -> None:
    definition = importer({"signup_date": {"from": "Signup Date"}})

    assert plan_columns(definition, ["SIGNUP-DATE"]).sources == {"signup_date": "SIGNUP-DATE"}


def test_from_names_replace_the_field_name() -> None:
    definition = importer({"email": {"from": "Mail"}})

    assert plan_columns(definition, ["email"]).sources == {"email": None}


def test_first_matching_from_alias_wins_over_column_order() -> None:
    definition = importer({"email": {"from": ["Email", "E-mail address", "mail"]}})

    plan = plan_columns(definition, ["mail", "e_mail_address", "id"])

    assert plan.sources == {"email": "e_mail_address"}


def test_first_of_two_headers_that_fold_alike_is_read() -> None:
    plan = plan_columns(importer({"email": {}}), ["E-mail", "email"])

    assert plan.sources == {"email": "E-mail"}


def test_absent_column_of_an_optional_field_maps_to_none() -> None:
    definition = importer({"email": {}, "age": {"from": "Age"}})

    assert plan_columns(definition, ["email"]).sources == {"email": "email", "age": None}


def test_failed_rows_export_columns_are_never_matched() -> None:
    definition = importer({"error_message": {}, "row_number": {"from": "_row_number"}})

    plan = plan_columns(definition, ["_error_message", "_row_number"])

    assert plan.sources == {"error_message": None, "row_number": None}


def test_missing_key_column_is_named_by_its_first_from_name() -> None:
    definition = importer(
        {"email": {"from": ["Email", "E-mail"]}, "name": {}}, action="upsert", key=["email"]
    )

    with pytest.raises(MissingColumns) as raised:
        plan_columns(definition, ["name", "mail"])

    assert str(raised.value) == 'Missing key column "Email"'


def test_missing_key_column_reports_the_first_missing_key_field_by_name() -> None:
    definition = importer(
        {"year": {}, "month": {}, "carrier": {}}, key=["year", "month", "carrier"]
    )

    with pytest.raises(MissingColumns) as raised:
        plan_columns(definition, ["year", "carrier"])

    assert str(raised.value) == 'Missing key column "month"'


def test_strict_headers_lists_every_missing_mapped_column() -> None:
    definition = importer(
        {
            "email": {"from": "Email"},
            "name": {"from": ["Name", "Full name"]},
            "age": {"from": "Age", "default": 0},
            "country": {},
        },
        strict_headers=True,
    )

    with pytest.raises(MissingColumns) as raised:
        plan_columns(definition, ["Email"])

    assert str(raised.value) == 'Missing mapped column(s): "Name", "Age", "country"'


def test_strict_headers_lets_a_field_without_from_but_with_a_default_be_absent() -> None:
    definition = importer({"email": {}, "score": {"default": 0}}, strict_headers=True)

    assert plan_columns(definition, ["Email"]).sources == {"email": "Email", "score": None}


def test_without_strict_headers_missing_mapped_columns_are_allowed() -> None:
    definition = importer({"email": {"from": "Email"}, "name": {"from": "Name"}})

    assert plan_columns(definition, ["Email"]).sources == {"email": "Email", "name": None}
