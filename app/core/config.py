"""Typed settings, read from the environment (prefix ``INGEST_``) and validated at start-up."""

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INGEST_", env_file=".env", extra="ignore")

    # None means "not configured": `ingest dev` then starts embedded servers, other
    # commands refuse to start with a clear message.
    database_url: str | None = None
    redis_url: str | None = None

    api_prefix: str = "/api/v1/ingest"
    # Inputs and chunk payloads: in `storage_dir`, or in a bucket (s3://bucket/prefix, with
    # the endpoint of a non-AWS server and the usual AWS_* credentials), when `storage_dir`
    # only holds each process's temporary copies.
    storage_dir: Path = Path(".ingest/storage")
    storage_url: str | None = Field(None, pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$")
    s3_endpoint_url: str | None = None
    importers_dir: Path | None = None
    queue_name: str = "ingest:queue"

    # A console sign-in lasts this long at most (and never beyond its token's expiry).
    console_session_hours: float = Field(12.0, gt=0)

    max_upload_mb: int = Field(512, ge=1)
    max_show_rows: int = Field(100, ge=0)
    max_push_items: int = Field(1000, ge=1)
    # GET /{run}/stream: a keep-alive comment this often (0: none), and a re-read of the run
    # this often beside the Postgres notifications (a safety net, e.g. while LISTEN reconnects).
    stream_ping_seconds: float = Field(15.0, ge=0)
    stream_recheck_seconds: float = Field(2.0, gt=0)

    allow_private_urls: bool = False
    url_timeout_seconds: float = Field(30.0, gt=0)
    url_max_mb: int = Field(512, ge=1)
    url_max_redirects: int = Field(5, ge=0)

    # Back-pressure: while the arq queue holds this many jobs or more (queued or running), the
    # doors that start runs answer 429 with `Retry-After`; 0 never refuses.
    max_queue_depth: int = Field(10_000, ge=0)
    queue_retry_after_seconds: int = Field(30, ge=1)

    worker_max_jobs: int = Field(4, ge=1)
    # arq starts queued jobs only when it polls the queue, so a finished chunk's slot stays
    # idle until the next poll: at 0.1 s a worker spent more time waiting than working.
    worker_poll_seconds: float = Field(0.01, gt=0, le=5)
    run_timeout_minutes: int = Field(120, ge=1)
    reconcile_interval_seconds: int = Field(10, ge=1)
    # A split or chunk is claimed in Postgres for this long, renewed every third of it while
    # its worker lives; an expired claim is taken over by the reconciler.
    lease_seconds: int = Field(30, ge=1)
    # Claims of one chunk (or split) before it is given up: its rows (or its run) fail.
    max_attempts: int = Field(5, ge=1)
    # On SIGTERM a worker takes no new job and gives running ones this long to finish.
    shutdown_grace_seconds: int = Field(30, ge=0)
    # A split saves where it stands this often, so that a successor goes on from there.
    split_checkpoint_seconds: float = Field(5.0, ge=0)
    # For tests only: a chunk job sleeps this long after claiming its chunk
    # (`claim_hold`), or inside its transaction once the ledger row is locked (`hold`).
    test_chunk_claim_hold_seconds: float = Field(0, ge=0)
    test_chunk_hold_seconds: float = Field(0, ge=0)
    # For tests only: a split sleeps this long after each batch of chunks it stores.
    test_split_hold_seconds: float = Field(0, ge=0)

    # The schema of the collection tables (app.records.tables).
    data_schema: str = Field("ingest_data", pattern=r"^[a-z][a-z0-9_]{0,62}$")

    # Webhooks (app/webhooks): the waits before each retry of a failed delivery (after the
    # last one it is `failed`), the time one attempt may take, the failed deliveries in a
    # row that disable a subscription (0: never), and how often workers look for due ones
    # beside the wake-up each commit sends.
    webhook_retry_seconds: list[Annotated[float, Field(ge=0)]] = Field(
        [5, 30, 120, 900, 3600, 21600], max_length=20
    )
    webhook_timeout_seconds: float = Field(10.0, gt=0, le=60)
    webhook_disable_after: int = Field(20, ge=0)
    webhook_poll_seconds: float = Field(5.0, gt=0)

    near_duplicate_threshold: float = Field(0.6, ge=0, le=1)
    idempotency_ttl_hours: int = Field(24, ge=1)

    log_level: str = "INFO"
    # `text` (for people, the default) or `json` (one object per line, app/core/logs.py).
    log_format: Literal["text", "json"] = "text"
    # GET /metrics answers only `Authorization: Bearer <this>`; unset, it answers 404.
    metrics_token: SecretStr | None = Field(None, min_length=16)

    @field_validator("metrics_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        # `INGEST_METRICS_TOKEN=` (as compose passes an unset variable) leaves metrics off.
        return None if value == "" else value

    @field_validator("api_prefix")
    @classmethod
    def _normalise_prefix(cls, value: str) -> str:
        value = "/" + value.strip("/")
        return "" if value == "/" else value

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    def require_database_url(self) -> str:
        if not self.database_url:
            raise RuntimeError(
                "INGEST_DATABASE_URL is not set "
                "(e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/ingest); "
                "`ingest dev` starts an embedded PostgreSQL instead."
            )
        return self.database_url

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise RuntimeError(
                "INGEST_REDIS_URL is not set (e.g. redis://127.0.0.1:6379/0); "
                "`ingest dev` starts an embedded Redis instead."
            )
        return self.redis_url


@lru_cache
def get_settings() -> Settings:
    return Settings()
