"""Response shapes of SPEC §5 (for OpenAPI; the services build plain dicts)."""

from typing import Any

from pydantic import BaseModel

from app.core.schemas import RequestBody


class Progress(BaseModel):
    total: int
    processed: int
    successful: int
    failed: int
    skipped: int


class RowOut(BaseModel):
    id: int
    row_number: int
    status: str
    outcome: str | None
    data: dict[str, Any] | None  # null only when the run's input file was removed by hand
    errors: dict[str, Any] | None


class RunListItemOut(BaseModel):
    id: int
    importer: str
    status: str
    user_id: int | None
    source_id: int | None
    kind: str
    original_filename: str | None
    dry_run: bool
    parent_run_id: int | None
    progress: Progress
    summary: dict[str, int] | None
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
