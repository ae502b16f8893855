"""What the OpenAPI document says beyond the routes themselves: stable operation ids, and
bodies documented as a typed schema while they are parsed as they always were.

Operation ids are ``<tag>_<name>``: the route's first tag and the short name below, keyed by
the endpoint function. A generated client names its functions after them
(``runs_errors_summary``, ``importers_create``), so they do not follow paths or function names
and a new route gets one on purpose (tests/core/test_openapi_client.py lists them all).
"""

from typing import Any

from fastapi.routing import APIRoute
from pydantic import BeforeValidator

# Endpoint (module.function) -> the operation's name within its tag.
OPERATION_NAMES: dict[str, str] = {
    "app.core.health.healthz": "live",
    "app.core.health.readyz": "ready",
    # runs (app/runs/intake.py and app/runs/router.py)
    "app.runs.intake.upload": "upload",
    "app.runs.intake.trigger": "trigger",
    "app.runs.router.list_runs": "list",
    "app.runs.router.show_run": "show",
    "app.runs.router.list_rows": "rows",
    "app.runs.router.list_events": "events",
    "app.runs.router.stream_run": "stream",
    "app.runs.router.cancel_run": "cancel",
    "app.runs.router.retry_run": "retry",
    "app.runs.router.error_summary": "errors_summary",
    "app.runs.router.download_failed_rows": "failed_rows_download",
    # importers
    "app.importers.router.list_importers": "list",
    "app.importers.router.show_importer": "show",
    "app.importers.router.create_importer": "create",
    "app.importers.router.update_importer": "update",
    "app.importers.router.delete_importer": "delete",
    # sources
    "app.sources.router.list_sources": "list",
    "app.sources.router.show_source": "show",
    "app.sources.router.create_source": "create",
    "app.sources.router.update_source": "update",
    "app.sources.router.delete_source": "delete",
    "app.sources.router.pause_source": "pause",
    "app.sources.router.resume_source": "resume",
    "app.sources.router.sync_source": "sync",
    "app.sources.router.import_source": "import",
    "app.sources.router.create_source_token": "tokens_create",
    # items
    "app.items.router.push_items": "push",
    "app.items.router.list_items": "list",
    "app.items.router.show_item": "show",
    "app.items.router.approve_item": "approve",
    "app.items.router.reject_item": "reject",
    "app.items.router.request_changes": "request_changes",
    "app.items.router.retarget_item": "retarget",
    "app.items.router.promote_item": "promote",
    # records
    "app.records.router.list_records": "list",
    "app.records.router.show_record": "show",
    # tokens
    "app.auth.router.list_tokens": "list",
    "app.auth.router.create_token": "create",
    "app.auth.router.revoke_token": "revoke",
    # workers
    "app.worker.router.list_workers": "list",
    # webhooks
    "app.webhooks.router.list_webhooks": "list",
    "app.webhooks.router.create_webhook": "create",
    "app.webhooks.router.show_webhook": "show",
    "app.webhooks.router.update_webhook": "update",
    "app.webhooks.router.delete_webhook": "delete",
    "app.webhooks.router.rotate_webhook_secret": "rotate_secret",
    "app.webhooks.router.list_deliveries": "deliveries",
    "app.webhooks.router.redeliver": "redeliver",
}


def endpoint_key(route: APIRoute) -> str:
    return f"{route.endpoint.__module__}.{route.endpoint.__name__}"


def operation_id(route: APIRoute) -> str:
    """``<tag>_<name>`` (FastAPI's ``generate_unique_id_function``). A route missing from
    OPERATION_NAMES falls back to its function's name, which the operation-id test refuses."""
    tag = str(route.tags[0]) if route.tags else "api"
    name = OPERATION_NAMES.get(endpoint_key(route), route.name)
    return f"{tag}_{name}"


def _unchanged(value: Any) -> Any:
    return value


def documented_as(schema_type: Any) -> BeforeValidator:
    """``Annotated[T, documented_as(U)]``: validated as ``T`` (same errors, same messages),
    documented in requests as ``U`` (e.g. a body parsed later by a service, or a string whose
    validator words its own message, documented as its enum)."""
    return BeforeValidator(_unchanged, json_schema_input_type=schema_type)
