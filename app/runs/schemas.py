"""Response shapes of SPEC §5 (for OpenAPI; the services build plain dicts)."""

from typing import Any, Literal, NotRequired

from pydantic import BaseModel, ConfigDict
from typing_extensions import TypeAliasType, TypedDict

from app.core.schemas import RequestBody

# Closed sets, named so that OpenAPI shows each as one enum (a generated client's enum class).
RunStatus = TypeAliasType(
    "RunStatus",
    Literal["pending", "processing", "completed", "completed_with_errors", "failed", "cancelled"],
)
RunKind = TypeAliasType("RunKind", Literal["upload", "url", "push", "retry", "cli"])
RowStatus = TypeAliasType("RowStatus", Literal["success", "failed", "skipped"])
RowOutcome = TypeAliasType(
    "RowOutcome", Literal["created", "updated", "unchanged", "skipped", "staged"]
)


class RunSummary(BaseModel):
    """What a finished run did to records (SPEC §4); every count is always there."""

    # Always serialised, so required in the response schema despite the defaults.
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    staged: int = 0
    deleted: int = 0


class RowErrors(TypedDict):
    """Why a row failed: one message, and per-field messages when it failed validation."""

    message: str
    validation: NotRequired[dict[str, list[str]]]


class Progress(BaseModel):
    total: int
    processed: int
    successful: int
    failed: int
    skipped: int


class RowOut(BaseModel):
    # The row log entry's id; null for a row its chunk records (app.runs.rowlog).
    id: int | None
    row_number: int
    status: RowStatus
    outcome: RowOutcome | None  # null for a failed row
    data: dict[str, Any] | None  # null only when the run's input file was removed by hand
    errors: RowErrors | None  # null unless the row failed


class RunListItemOut(BaseModel):
    id: int
    importer: str
    status: RunStatus
    user_id: int | None
    source_id: int | None
    kind: RunKind
    original_filename: str | None
    dry_run: bool
    parent_run_id: int | None
    progress: Progress
    # Null until the run has finished, and for a run that failed before any chunk applied.
    summary: RunSummary | None
    error_message: str | None
    cancel_requested: bool
    started_at: str | None
    completed_at: str | None
    created_at: str | None


class RunOut(RunListItemOut):
    # The first `INGEST_MAX_SHOW_ROWS` rows on `GET /{run}`; `[]` from the doors that start a run.
    rows: list[RowOut]


class TriggerIn(RequestBody):
    dry_run: bool = False


class RetryIn(RequestBody):
    dry_run: bool = False
