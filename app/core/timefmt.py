"""Timestamps as SPEC §5 shows them (``2023-10-27T10:00:00.000000Z``), and strftime patterns as
a person reads them (``%Y-%m-%d`` -> ``YYYY-MM-DD``)."""

import re
from datetime import UTC, datetime

# What each strftime directive stands for, in the letters date pickers and docs use.
# Minutes are `mm` and seconds `ss` so that `MM` can stay the month.
_DIRECTIVES = {
    "Y": "YYYY",
    "y": "YY",
    "m": "MM",
    "d": "DD",
    "j": "DDD",
    "H": "HH",
    "I": "hh",
    "M": "mm",
    "S": "ss",
    "f": "ffffff",
    "p": "AM/PM",
    "z": "±HHMM",
    "b": "Mon",
    "B": "Month",
    "a": "Dow",
    "A": "Weekday",
    "%": "%",
}
_DIRECTIVE = re.compile(r"%(.)", re.DOTALL)


def iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if value else None


def human_format(fmt: str) -> str:
    """``%Y-%m-%d %H:%M`` -> ``YYYY-MM-DD HH:mm``, for messages a person reads. Directives
    without a reading of their own (``%Z``, ``%-d``, ...) and a lone trailing ``%`` stay as
    they are."""
    return _DIRECTIVE.sub(lambda m: _DIRECTIVES.get(m[1], m[0]), fmt)
