"""Shared test data."""

from typing import Any

USER_FIELDS: dict[str, Any] = {
    "email": {
        "from": ["Email", "E-mail"],
        "type": "email",
        "required": True,
        "transform": ["trim", "lower"],
    },
    "name": {"from": "Name", "type": "string", "required": True, "min_length": 2},
    "age": {"from": "Age", "type": "integer", "min": 0, "max": 150, "null_if": ["", "NA"]},
}
