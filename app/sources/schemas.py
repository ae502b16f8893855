"""Source API shapes. Field messages follow the service's Laravel voice."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from typing_extensions import TypeAliasType

from app.auth.schemas import TokenCreated
from app.core.openapi import documented_as
from app.core.schemas import RequestBody
from app.importers.schemas import ApprovalMode
from app.runs.schemas import RunOut
from app.sources.urls import canonical_url

INGESTION_TYPES = ("api", "scrape", "manual", "csv", "upload", "url")
APPROVAL_MODES = ("auto", "manual")
SOURCE_STATUSES = ("active", "paused", "error", "syncing")

# What the two states of a source mean: `status` is whether it takes work now, `onboarded`
# only records that it was set up.
STATUS = (
    "Whether the source takes work now. `active`: it takes pushes and syncs; `paused`: it takes "
    "no push, sync or scheduled run until it is resumed; `syncing`: the runs of a sync are under "
    "way; `error`: a run of the last sync failed (`last_sync_message` says which; the source "
    "still takes work)."
)
ONBOARDED = (
    "Whether the source is set up: its initial import (`POST /sources/{id}/import`) was "
    "started, or an operator said so. It gates nothing; `status` says whether the source takes "
    "work."
)

# The service role's abilities: what a source's agent token may hold.
AGENT_ABILITIES = ("ingest:view", "ingest:create")

# The tuples above as OpenAPI enums (tests/core/test_openapi_client.py keeps them equal).
IngestionType = TypeAliasType(
    "IngestionType", Literal["api", "scrape", "manual", "csv", "upload", "url"]
)
SourceStatus = TypeAliasType("SourceStatus", Literal["active", "paused", "error", "syncing"])
AgentAbility = TypeAliasType("AgentAbility", Literal["ingest:view", "ingest:create"])


def _one_of(value: str | None, allowed: tuple[str, ...], label: str) -> str | None:
    if value is not None and value not in allowed:
        raise ValueError(f"The selected {label} is invalid (choose from {', '.join(allowed)}).")
    return value


def _stripped(value: str | None) -> str | None:
    """Trimmed text; blank counts as absent, like Laravel's ConvertEmptyStringsToNull."""
    if value is None:
        return None
    value = value.strip()
    return value or None


class _SourceFields(RequestBody):
    model_config = ConfigDict(extra="forbid")

    provider: Annotated[str | None, Field(max_length=100)] = None
    external_source_id: Annotated[str | None, Field(max_length=200)] = Field(
        None, description="The source's id at its provider; unique within the provider."
    )
    source_priority: Annotated[int | None, Field(ge=-1_000_000, le=1_000_000)] = None
    onboarded: bool | None = Field(None, description=ONBOARDED)
    # Checked by the validators below, which word their own messages.
    approval_mode: Annotated[str | None, documented_as(ApprovalMode | None)] = Field(
        None, description="auto | manual: manual stages pushed rows as items to review."
    )
    ingestion_type: Annotated[str | None, documented_as(IngestionType | None)] = Field(
        None, description=" | ".join(INGESTION_TYPES)
    )

    @field_validator("provider", "external_source_id")
    @classmethod
    def _trim(cls, value: str | None) -> str | None:
        return _stripped(value)

    @field_validator("ingestion_type")
    @classmethod
    def _ingestion_type(cls, value: str | None) -> str | None:
        return _one_of(value, INGESTION_TYPES, "ingestion type")

    @field_validator("approval_mode")
    @classmethod
    def _approval_mode(cls, value: str | None) -> str | None:
        return _one_of(value, APPROVAL_MODES, "approval mode")

    @field_validator("source_url", check_fields=False)
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else canonical_url(value)

    @field_validator("name", check_fields=False)
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("The name field is required.")
        return None if value is None else value.strip()


class SourceCreate(_SourceFields):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    source_url: Annotated[str, Field(min_length=1, max_length=2000)] = Field(
        description="The source's canonical URL; unique. Items pushed with a source-bound "
        "token must carry it as their `source_url`."
    )


class SourceUpdate(_SourceFields):
    """Only the fields given change."""

    name: Annotated[str | None, Field(min_length=1, max_length=200)] = None
    source_url: Annotated[str | None, Field(min_length=1, max_length=2000)] = None


class SourceOut(BaseModel):
    id: int
    name: str
    source_url: str
    ingestion_type: IngestionType
    provider: str | None
    external_source_id: str | None
    source_priority: int
    onboarded: bool = Field(description=ONBOARDED)
    approval_mode: ApprovalMode
    status: SourceStatus = Field(description=STATUS)
    last_sync_started_at: str | None
    last_sync_finished_at: str | None
    last_sync_message: str | None
    created_at: str | None
    updated_at: str | None


class SyncOut(BaseModel):
    source: SourceOut
    runs: list[RunOut]


class SourceTokenCreate(RequestBody):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str | None, Field(min_length=1, max_length=200)] = Field(
        None, description="Default: `<source name> agent`."
    )
    abilities: list[Annotated[str, documented_as(AgentAbility)]] = Field(
        default_factory=lambda: list(AGENT_ABILITIES),
        description="A subset of ingest:view, ingest:create (the service role's abilities).",
    )
    user_email: Annotated[str | None, Field(max_length=320)] = Field(
        None, description="The token's service user; default: one agent user per source."
    )
    expires_in_days: int | None = Field(None, ge=1, le=3650)

    @field_validator("abilities")
    @classmethod
    def _abilities(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("The abilities field must name at least one ability.")
        for ability in value:
            if ability not in AGENT_ABILITIES:
                raise ValueError(
                    f"The selected ability {ability!r} is invalid: a source token belongs to a "
                    f"service user (choose from {', '.join(AGENT_ABILITIES)})."
                )
        return sorted(set(value))


SourceTokenOut = TokenCreated
