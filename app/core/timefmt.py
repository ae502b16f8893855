"""Timestamps as SPEC §5 shows them: ``2023-10-27T10:00:00.000000Z``."""

from datetime import UTC, datetime


def iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if value else None
