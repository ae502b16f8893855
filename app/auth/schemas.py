"""Token API shapes. A token's hash never appears here; its plaintext only in ``TokenCreated``."""

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from typing_extensions import TypeAliasType

from app.auth.permissions import ABILITIES, ROLES
from app.core.openapi import documented_as
from app.core.schemas import Int4Id, RequestBody

# ABILITIES and ROLES as OpenAPI enums (tests/core/test_openapi_client.py keeps them equal).
Ability = TypeAliasType(
    "Ability", Literal["ingest:view", "ingest:create", "ingest:review", "ingest:admin"]
)
Role = TypeAliasType("Role", Literal["admin", "curator", "service", "viewer"])
TokenStatus = TypeAliasType("TokenStatus", Literal["active", "expired", "revoked"])

_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")


def looks_like_email(value: str) -> bool:
    # Deliberately loose: internal users like admin@localhost are fine.
    return _EMAIL_RE.match(value) is not None


class TokenCreate(RequestBody):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=200)]
    # Checked by the validators below, which word their own messages.
    abilities: list[Annotated[str, documented_as(Ability)]] = Field(
        description=f"One or more of {', '.join(ABILITIES)}."
    )
    user_email: Annotated[str | None, Field(max_length=320)] = Field(
        None, description="The token's user; created when new. Default: the caller."
    )
    role: Annotated[str | None, documented_as(Role | None)] = Field(
        None, description=f"Role of a new user ({', '.join(ROLES)}); needs user_email."
    )
    source_id: Int4Id | None = Field(None, description="Bind the token to this source.")
    expires_in_days: int | None = Field(None, ge=1, le=3650)
    expires_at: datetime | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("The name field is required.")
        return value

    @field_validator("abilities")
    @classmethod
    def _abilities(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("The abilities field must name at least one ability.")
        unknown = [a for a in value if a not in ABILITIES]
        if unknown:
            raise ValueError(
                f"The selected ability {unknown[0]!r} is invalid "
                f"(choose from {', '.join(ABILITIES)})."
            )
        return sorted(set(value))

    @field_validator("role")
    @classmethod
    def _role(cls, value: str | None) -> str | None:
        if value is not None and value not in ROLES:
            raise ValueError(f"The selected role is invalid (choose from {', '.join(ROLES)}).")
        return value

    @field_validator("user_email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not looks_like_email(value):
            raise ValueError("The user email must be a valid email address.")
        return value

    @field_validator("expires_at")
    @classmethod
    def _future(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        if value is None:
            return None
        if info.data.get("expires_in_days") is not None:
            raise ValueError("Give either expires_in_days or expires_at, not both.")
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        if value <= datetime.now(UTC):
            raise ValueError("The expires at must be a date after now.")
        return value

    @property
    def expires_in(self) -> timedelta | None:
        return None if self.expires_in_days is None else timedelta(days=self.expires_in_days)


class TokenUser(BaseModel):
    id: int
    email: str
    role: Role


class TokenOut(BaseModel):
    id: int
    name: str
    prefix: str = Field(description="The token's first characters, to recognise it.")
    abilities: list[Ability]
    effective_abilities: list[Ability] = Field(
        description="What the token can do now: its abilities ∩ its user's role."
    )
    status: TokenStatus = Field(description="active | expired | revoked")
    user: TokenUser
    source_id: int | None
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    created_at: datetime


class TokenCreated(TokenOut):
    token: str = Field(description="The plaintext token. Shown once: store it now.")
