"""Item API shapes: the push answer, review actions and the item with its markers and history."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypeAliasType

from app.core.schemas import RequestBody

ITEM_STATUSES = (
    "submitted",
    "processing",
    "pending",
    "approved",
    "merged",
    "rejected",
    "changes_requested",
)
ItemStatus = TypeAliasType(
    "ItemStatus",
    Literal[
        "submitted", "processing", "pending", "approved", "merged", "rejected", "changes_requested"
    ],
)

Note = Annotated[str | None, Field(max_length=5000)]


class PushOut(BaseModel):
    queued: int = Field(description="How many items the run will process.")
    source_id: int | None
    run_id: int


class _Action(RequestBody):
    model_config = ConfigDict(extra="forbid")

    note: Note = Field(None, description="Shown in the item's history.")


class ApproveIn(_Action):
    pass


class PromoteIn(_Action):
    pass


class RejectIn(_Action):
    reason: Note = Field(None, description="Why; stored as the transition's note.")


class RequestChangesIn(_Action):
    note: Note = Field(None, description="Required: what the sender should change.")


class RetargetIn(_Action):
    type: Annotated[str | None, Field(max_length=100)] = Field(
        None, description="Required: the slug of the importer the item belongs to instead."
    )


class Marker(BaseModel):
    kind: Literal["exact", "near"]
    match: Literal["record", "item"]
    id: int
    score: float


class Actor(BaseModel):
    user_id: int | None
    token_id: int | None
    email: str | None


class ItemEventOut(BaseModel):
    id: int
    from_status: ItemStatus | None = Field(alias="from")
    to_status: ItemStatus = Field(alias="to")
    note: str | None
    actor: Actor
    created_at: str | None

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class ItemOut(BaseModel):
    id: int
    type: str
    status: ItemStatus
    source_id: int | None
    importer_id: int | None
    run_id: int | None
    row_number: int | None
    external_id: str | None
    collection: str
    key: str | None
    title: str | None
    data: dict[str, Any]
    original: dict[str, Any] | None
    content_hash: str | None
    duplicates: list[Marker]
    has_duplicates: bool
    record_id: int | None
    note: str | None
    created_at: str | None
    updated_at: str | None


class ItemDetailOut(ItemOut):
    events: list[ItemEventOut] = Field(description="The transition history, oldest first.")
