"""strftime patterns as a person reads them (app/core/timefmt.py)."""

import pytest

from app.core.timefmt import human_format


@pytest.mark.parametrize(
    ("fmt", "shown"),
    [
        ("%Y-%m-%d", "YYYY-MM-DD"),
        ("%d/%m/%y", "DD/MM/YY"),
        ("%Y-%m-%dT%H:%M:%S.%f%z", "YYYY-MM-DDTHH:mm:ss.ffffff±HHMM"),
        ("%I:%M %p", "hh:mm AM/PM"),
        ("%a %d %b %Y", "Dow DD Mon YYYY"),
        ("%A, %B %d", "Weekday, Month DD"),
        ("%Y-%j", "YYYY-DDD"),
        ("100%%", "100%"),
    ],
)
def test_directives_read_as_what_they_stand_for(fmt: str, shown: str) -> None:
    assert human_format(fmt) == shown


def test_each_directive_is_read_once_so_a_literal_percent_stays_literal() -> None:
    # `%%Y` is a literal `%` then `Y`, not the year.
    assert human_format("%%Y") == "%Y"
    assert human_format("%%%d") == "%DD"


@pytest.mark.parametrize("fmt", ["%Z", "%-d", "%e", "%G-W%V", "%c", "%x %X", "50%", "%"])
def test_directives_without_a_reading_stay_as_they_are(fmt: str) -> None:
    assert human_format(fmt) == fmt


def test_text_without_directives_is_unchanged() -> None:
    assert human_format("") == ""
    assert human_format("YYYY-MM-DD") == "YYYY-MM-DD"
    assert human_format("T") == "T"
