"""The importer definition of SPEC §3: one pydantic model for the API and the YAML files."""

import re
from datetime import datetime
from typing import Annotated, Any, Literal, NotRequired

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from typing_extensions import TypeAliasType, TypedDict

from app.core.schemas import Int4, Int4Id, RequestBody
from app.core.url_secrets import mask_url

FieldType = Literal[
    "string", "integer", "number", "boolean", "date", "datetime", "email", "url", "list", "json"
]
Transform = Literal["trim", "lower", "upper", "slug", "strip_non_digits"]
Format = Literal["csv", "xlsx", "json", "ndjson", "auto"]
# The closed sets of a definition, named so that OpenAPI shows each as one enum (a generated
# client's enum class). The Literals above stay plain for code that lists them (get_args).
FieldSpecType = TypeAliasType("FieldSpecType", FieldType)
FieldTransform = TypeAliasType("FieldTransform", Transform)
ImporterFormat = TypeAliasType("ImporterFormat", Format)
SourceType = TypeAliasType("SourceType", Literal["upload", "url", "push"])
OnDuplicate = TypeAliasType("OnDuplicate", Literal["skip", "update", "fail", "update_if_newer"])
Action = TypeAliasType("Action", Literal["append", "upsert", "replace"])
ApprovalMode = TypeAliasType("ApprovalMode", Literal["auto", "manual"])
LogRows = TypeAliasType("LogRows", Literal["all", "failed"])
ImporterOrigin = TypeAliasType("ImporterOrigin", Literal["api", "file"])
SLUG_RE = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
COLLECTION_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")


class Strict(RequestBody):
    model_config = ConfigDict(extra="forbid")


class FieldSpec(Strict):
    # `from` is a Python keyword, hence the alias.
    from_: list[str] | None = Field(None, alias="from")
    type: FieldSpecType = "string"
    required: bool = False
    min: float | None = None
    max: float | None = None
    min_length: Int4 | None = Field(None, ge=0)
    max_length: Int4 | None = Field(None, ge=0)
    pattern: str | None = None
    in_: list[Any] | None = Field(None, alias="in")
    default: Any = None
    null_if: list[str] = Field(default_factory=list)
    format: str | None = None
    separator: str = Field(",", min_length=1)
    transform: list[FieldTransform] = Field(default_factory=list)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("from_", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("transform", "null_if", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"The pattern is not a valid regular expression: {exc}.") from exc
        return value

    @model_validator(mode="after")
    def _format_fits_type(self) -> "FieldSpec":
        if self.format is not None and self.type in ("date", "datetime"):
            try:
                datetime.now().strftime(self.format)
            except ValueError as exc:
                raise ValueError(f"The format is not a valid date format: {exc}.") from exc
        return self


# What GET shows of a source and PUT ignores.
READ_ONLY_SOURCE_KEYS = frozenset({"has_secret_headers", "has_headers"})


class SourceSpec(Strict):
    type: SourceType = "upload"
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    schedule: str | None = None
    sheet: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_read_only(cls, data: Any) -> Any:
        # `has_secret_headers` is what the API shows instead of the headers: a definition read
        # back from GET can be PUT as it is (`has_headers` is what it was called before).
        if isinstance(data, dict) and READ_ONLY_SOURCE_KEYS & data.keys():
            data = {k: v for k, v in data.items() if k not in READ_ONLY_SOURCE_KEYS}
        return data

    @field_validator("url")
    @classmethod
    def _http_only(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value, re.I):
            raise ValueError("The url must be an http or https URL.")
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"The schedule {value!r} is not a valid cron expression.")
        return value

    @model_validator(mode="after")
    def _url_rules(self) -> "SourceSpec":
        if self.type == "url" and not self.url:
            raise ValueError("A url source needs a url.")
        if self.type != "url" and (self.url or self.schedule):
            raise ValueError("Only a url source takes a url and a schedule.")
        return self


class ImporterDefinition(Strict):
    slug: Annotated[str, Field(min_length=1, max_length=100, pattern=SLUG_RE)]
    name: str = ""
    description: str | None = None
    format: ImporterFormat = "auto"
    source: SourceSpec = Field(default_factory=SourceSpec)
    source_id: Int4Id | None = None
    # It names the collection's table (app.records.tables).
    collection: Annotated[str, Field(min_length=1, max_length=100)]
    key: list[str] = Field(default_factory=list)
    on_duplicate: OnDuplicate = "update"
    compare_field: str | None = None
    action: Action = "upsert"
    approval: ApprovalMode = "auto"
    strict_headers: bool = False
    # None: the service sizes chunks (app.pipeline.splitter); a number is an upper bound.
    chunk_size: int | None = Field(None, ge=1, le=50_000)
    failure_threshold: float = Field(100, ge=0, le=100)
    log_rows: LogRows = "all"
    # Review workflow: the field compared for near duplicates, and the item's external id.
    title_field: str | None = None
    external_id_field: str | None = None
    fields: dict[str, FieldSpec] = Field(min_length=1)

    @field_validator("key", mode="before")
    @classmethod
    def _key_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("collection")
    @classmethod
    def _table_name(cls, value: str) -> str:
        if not COLLECTION_RE.fullmatch(value):
            raise ValueError(
                "The collection must be a lower-case name of letters, digits and underscores, "
                "starting with a letter, at most 63 characters: it names a table."
            )
        return value

    @field_validator("fields")
    @classmethod
    def _column_names(cls, value: dict[str, FieldSpec]) -> dict[str, FieldSpec]:
        for name in value:
            if name.startswith("_"):
                raise ValueError(
                    f"The field name {name!r} starts with '_', which the collection table's "
                    "own columns (_key, _created_at, ...) use."
                )
            if not name or len(name.encode()) > 63:
                raise ValueError(
                    f"The field name {name!r} must be 1 to 63 bytes: it names a column."
                )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "ImporterDefinition":
        if not self.name:
            self.name = self.slug
        if self.action != "append" and not self.key:
            raise ValueError("A key is required unless the action is append.")
        for name in self.key:
            if name not in self.fields:
                raise ValueError(f"The key field {name!r} is not one of the fields.")
        if self.on_duplicate == "update_if_newer":
            if not self.compare_field:
                raise ValueError("update_if_newer needs a compare_field.")
            if self.compare_field not in self.fields:
                raise ValueError(f"The compare_field {self.compare_field!r} is not a field.")
        for attr in ("title_field", "external_id_field"):
            value = getattr(self, attr)
            if value is not None and value not in self.fields:
                raise ValueError(f"The {attr} {value!r} is not one of the fields.")
        return self

    def public(self) -> dict[str, Any]:
        """The definition as the API shows it: source headers are write-only, and so are the
        credentials in the source url (shown masked)."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        data["source"].pop("headers", None)
        data["source"]["has_secret_headers"] = bool(self.source.headers)
        if self.source.url is not None:
            data["source"]["url"] = mask_url(self.source.url)
        return data


# The definition as the API shows it, ImporterDefinition.public(): optional fields that are
# not set are left out (not null), source headers are write-only (`has_secret_headers` says
# whether there are any) and a source url's credentials are masked. Keys as the API spells them.
FieldSpecOut = TypedDict(
    "FieldSpecOut",
    {
        "from": NotRequired[list[str]],
        "type": FieldSpecType,
        "required": bool,
        "min": NotRequired[float],
        "max": NotRequired[float],
        "min_length": NotRequired[int],
        "max_length": NotRequired[int],
        "pattern": NotRequired[str],
        "in": NotRequired[list[Any]],
        "default": NotRequired[Any],
        "null_if": list[str],
        "format": NotRequired[str],
        "separator": str,
        "transform": list[FieldTransform],
    },
)


class SourceSpecOut(TypedDict):
    type: SourceType
    url: NotRequired[str]  # credentials masked
    schedule: NotRequired[str]
    sheet: NotRequired[str]
    # Whether the source sends request headers (e.g. Authorization), which are never shown.
    has_secret_headers: bool


class ImporterDefinitionOut(TypedDict):
    slug: str
    name: str
    description: NotRequired[str]
    format: ImporterFormat
    source: SourceSpecOut
    source_id: NotRequired[int]
    collection: str
    key: list[str]
    on_duplicate: OnDuplicate
    compare_field: NotRequired[str]
    action: Action
    approval: ApprovalMode
    strict_headers: bool
    chunk_size: NotRequired[int]
    failure_threshold: float
    log_rows: LogRows
    title_field: NotRequired[str]
    external_id_field: NotRequired[str]
    fields: dict[str, FieldSpecOut]


class ImporterOut(BaseModel):
    id: int
    slug: str
    name: str
    origin: ImporterOrigin
    source_id: int | None
    definition: ImporterDefinitionOut
    created_at: datetime
    updated_at: datetime
