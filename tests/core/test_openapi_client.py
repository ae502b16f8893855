"""The OpenAPI document generates a good client.

A client generated from ``/openapi.json`` by openapi-python-client (run as a user runs it, in a
subprocess, failing on any warning but the known ones) drives a real server on a loopback port
and a real worker through a whole run: an importer created, a CSV with one bad row uploaded,
the run read until it ends, its error summary and its failed rows as CSV, all with the
client's typed functions and models. Beside it: every operation has a deliberate id and
documents its errors, and the document's enums are the sets the code checks against.
"""

import asyncio
import csv
import importlib
import io
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
import uvicorn
from pydantic import TypeAdapter

from app.auth.permissions import ABILITIES, ROLES
from app.core.config import Settings
from app.importers.schemas import (
    FieldSpec,
    FieldType,
    ImporterDefinition,
    ImporterDefinitionOut,
    SourceSpec,
)
from app.items.schemas import ITEM_STATUSES
from app.main import create_app
from app.pipeline.lifecycle import SUMMARY_KEYS
from app.runs.service import RUN_STATUSES
from app.sources.schemas import AGENT_ABILITIES, APPROVAL_MODES, INGESTION_TYPES, SOURCE_STATUSES
from tests.conftest import MakeToken, RunWorker

API = "/api/v1/ingest"
PACKAGE = "ingest_client"
GENERATOR = Path(sys.executable).with_name("openapi-python-client")

# Every operation: its id (what a generated client names its function), method, path and the
# error statuses it documents. A route added later fails here until it is given a row.
OPERATIONS: dict[str, tuple[str, str, set[int]]] = {
    "health_live": ("GET", "/healthz", set()),
    "health_ready": ("GET", "/readyz", {503}),
    "importers_list": ("GET", f"{API}/importers", {401, 403, 422}),
    "importers_create": ("POST", f"{API}/importers", {400, 401, 403, 409, 413, 422}),
    "importers_show": ("GET", f"{API}/importers/{{slug}}", {401, 403, 404, 422}),
    "importers_update": (
        "PUT",
        f"{API}/importers/{{slug}}",
        {400, 401, 403, 404, 409, 413, 422},
    ),
    "importers_delete": ("DELETE", f"{API}/importers/{{slug}}", {401, 403, 404, 422}),
    "sources_list": ("GET", f"{API}/sources", {401, 403, 422}),
    "sources_create": ("POST", f"{API}/sources", {400, 401, 403, 422}),
    "sources_show": ("GET", f"{API}/sources/{{source_id}}", {401, 403, 404, 422}),
    "sources_update": ("PUT", f"{API}/sources/{{source_id}}", {400, 401, 403, 404, 422}),
    "sources_delete": ("DELETE", f"{API}/sources/{{source_id}}", {401, 403, 404, 422}),
    "sources_pause": ("POST", f"{API}/sources/{{source_id}}/pause", {401, 403, 404, 422}),
    "sources_resume": ("POST", f"{API}/sources/{{source_id}}/resume", {401, 403, 404, 422}),
    "sources_sync": (
        "POST",
        f"{API}/sources/{{source_id}}/sync",
        {401, 403, 404, 409, 422, 429},
    ),
    "sources_import": (
        "POST",
        f"{API}/sources/{{source_id}}/import",
        {401, 403, 404, 409, 422, 429},
    ),
    "sources_tokens_create": (
        "POST",
        f"{API}/sources/{{source_id}}/tokens",
        {400, 401, 403, 404, 422},
    ),
    "items_push": ("POST", f"{API}/items/{{type}}", {401, 403, 404, 409, 413, 422, 429}),
    "items_list": ("GET", f"{API}/items", {401, 403, 422}),
    "items_show": ("GET", f"{API}/items/{{item_id}}", {401, 403, 404, 405, 422}),
    **{
        f"items_{action.replace('-', '_')}": (
            "POST",
            f"{API}/items/{{item_id}}/{action}",
            {400, 401, 403, 404, 409, 422},
        )
        for action in ("approve", "reject", "request-changes", "retarget", "promote")
    },
    "records_list": ("GET", f"{API}/records/{{collection}}", {401, 403, 422}),
    "records_show": ("GET", f"{API}/records/{{collection}}/{{key}}", {401, 403, 404, 422}),
    "tokens_list": ("GET", f"{API}/tokens", {401, 403, 422}),
    "tokens_create": ("POST", f"{API}/tokens", {400, 401, 403, 422}),
    "tokens_revoke": ("DELETE", f"{API}/tokens/{{token_id}}", {401, 403, 404, 422}),
    "workers_list": ("GET", f"{API}/workers", {401, 403, 422}),
    "webhooks_list": ("GET", f"{API}/webhooks", {401, 403, 422}),
    "webhooks_create": ("POST", f"{API}/webhooks", {400, 401, 403, 422}),
    "webhooks_show": ("GET", f"{API}/webhooks/{{webhook_id}}", {401, 403, 404, 422}),
    "webhooks_update": ("PATCH", f"{API}/webhooks/{{webhook_id}}", {400, 401, 403, 404, 422}),
    "webhooks_delete": ("DELETE", f"{API}/webhooks/{{webhook_id}}", {401, 403, 404, 422}),
    "webhooks_rotate_secret": (
        "POST",
        f"{API}/webhooks/{{webhook_id}}/rotate-secret",
        {401, 403, 404, 422},
    ),
    "webhooks_deliveries": (
        "GET",
        f"{API}/webhooks/{{webhook_id}}/deliveries",
        {401, 403, 404, 422},
    ),
    "webhooks_redeliver": (
        "POST",
        f"{API}/webhooks/{{webhook_id}}/deliveries/{{delivery_id}}/redeliver",
        {401, 403, 404, 409, 422},
    ),
    "runs_upload": (
        "POST",
        f"{API}/upload/{{importer}}",
        {400, 401, 403, 404, 413, 415, 422, 429},
    ),
    "runs_trigger": ("POST", f"{API}/trigger/{{importer}}", {400, 401, 403, 404, 422, 429}),
    "runs_list": ("GET", f"{API}/", {401, 403, 422}),
    "runs_show": ("GET", f"{API}/{{run}}", {401, 403, 404, 422}),
    "runs_rows": ("GET", f"{API}/{{run}}/rows", {401, 403, 404, 422}),
    "runs_events": ("GET", f"{API}/{{run}}/events", {401, 403, 404, 422}),
    "runs_stream": ("GET", f"{API}/{{run}}/stream", {401, 403, 404, 422}),
    "runs_cancel": ("POST", f"{API}/{{run}}/cancel", {401, 403, 404, 409, 422}),
    "runs_retry": ("POST", f"{API}/{{run}}/retry", {400, 401, 403, 404, 409, 422, 429}),
    "runs_errors_summary": ("GET", f"{API}/{{run}}/errors/summary", {401, 403, 404, 422}),
    "runs_failed_rows_download": (
        "GET",
        f"{API}/{{run}}/failed-rows/download",
        {401, 403, 404, 422},
    ),
}


def _document() -> dict[str, Any]:
    # The document only: building the app opens no connection (its lifespan does).
    settings = Settings(
        database_url="postgresql://unused@127.0.0.1:1/unused",
        redis_url="redis://127.0.0.1:1/0",
        _env_file=None,  # type: ignore[call-arg]
    )
    return create_app(settings).openapi()


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield method.upper(), path, operation


def test_every_operation_has_a_deliberate_id_and_documents_its_errors() -> None:
    document = _document()
    found = {
        operation["operationId"]: (
            method,
            path,
            {int(code) for code in operation["responses"] if int(code) >= 400},
        )
        for method, path, operation in _operations(document)
    }
    assert found == OPERATIONS
    assert len(found) == len(list(_operations(document)))  # ids are unique
    for method, path, operation in _operations(document):
        for code, response in operation["responses"].items():
            if int(code) >= 400:
                schema = response["content"]["application/json"]["schema"]
                body = "Readiness" if path == "/readyz" else "ErrorBody"
                assert schema == {"$ref": f"#/components/schemas/{body}"}, (method, path, code)
    # FastAPI's own 422 body ({"detail": [...]}) is never what this API answers.
    assert "HTTPValidationError" not in document["components"]["schemas"]


def _enum(document: dict[str, Any], name: str) -> tuple[str, ...]:
    return tuple(document["components"]["schemas"][name]["enum"])


def test_the_enums_are_the_sets_the_code_checks() -> None:
    document = _document()
    assert _enum(document, "RunStatus") == RUN_STATUSES
    assert _enum(document, "ItemStatus") == ITEM_STATUSES
    assert _enum(document, "Ability") == ABILITIES
    assert _enum(document, "Role") == ROLES
    assert _enum(document, "AgentAbility") == AGENT_ABILITIES
    assert _enum(document, "IngestionType") == INGESTION_TYPES
    assert _enum(document, "SourceStatus") == SOURCE_STATUSES
    assert _enum(document, "ApprovalMode") == APPROVAL_MODES
    assert _enum(document, "FieldSpecType") == get_args(FieldType)
    summary = document["components"]["schemas"]["RunSummary"]
    assert tuple(summary["properties"]) == SUMMARY_KEYS == tuple(summary["required"])
    # Request fields whose validators word their own messages are documented as their enums.
    token = document["components"]["schemas"]["TokenCreate"]["properties"]
    assert token["abilities"]["items"] == {"$ref": "#/components/schemas/Ability"}


def _aliases(model: type[Any]) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items()}


def test_the_definition_the_api_shows_has_every_field_of_the_definition() -> None:
    # ImporterOut.definition is validated as ImporterDefinitionOut: a field it lacks would
    # silently go missing from every importer response.
    shown = TypeAdapter(ImporterDefinitionOut)
    keys = shown.json_schema()["$defs"]
    assert set(ImporterDefinitionOut.__annotations__) == _aliases(ImporterDefinition)
    assert set(keys["FieldSpecOut"]["properties"]) == _aliases(FieldSpec)
    assert set(keys["SourceSpecOut"]["properties"]) == _aliases(SourceSpec) - {"headers"} | {
        "has_secret_headers"
    }
    definition = ImporterDefinition.model_validate(
        {
            "slug": "feed",
            "description": "A feed.",
            "format": "csv",
            "source": {
                "type": "url",
                "url": "https://user:secret@example.com/feed.csv",
                "headers": {"X-Key": "secret"},
                "schedule": "0 * * * *",
                "sheet": "Sheet1",
            },
            "source_id": 1,
            "collection": "feed",
            "key": ["email"],
            "on_duplicate": "update_if_newer",
            "compare_field": "email",
            "approval": "manual",
            "failure_threshold": 5.5,
            "log_rows": "failed",
            "title_field": "email",
            "external_id_field": "email",
            "fields": {
                "email": {
                    "from": ["Email"],
                    "min": 0.5,
                    "max": 2.5,
                    "min_length": 1,
                    "max_length": 100,
                    "pattern": "^a",
                    "in": ["a", 1],
                    "default": {"a": [1]},
                    "null_if": ["NA"],
                    "format": "%Y",
                    "separator": ";",
                    "transform": ["trim"],
                }
            },
        }
    )
    public = definition.public()
    assert shown.dump_python(shown.validate_python(public)) == public


# --- the generated client against a real server and worker -------------------------------------


# The generator knows no YAML body: it leaves the YAML alternative of the two definition bodies
# out of the client, which sends them as JSON. (Listing both content types in its client, as
# openapi-python-client 0.29 would with a content-type override, emits `| Unset` without
# importing it: openapi-generators/openapi-python-client#1451.)
KNOWN_WARNINGS = [
    ("POST", f"{API}/importers", "Unsupported content type application/yaml"),
    ("PUT", f"{API}/importers/{{slug}}", "Unsupported content type application/yaml"),
]


def _generate(document: dict[str, Any], workdir: Path) -> None:
    spec = workdir / "openapi.json"
    spec.write_text(httpx.Response(200, json=document).text)
    # No post hooks: the generated code is imported, not read, so it needs no formatter.
    config = workdir / "config.json"
    config.write_text('{"post_hooks": []}')
    result = subprocess.run(
        [
            str(GENERATOR),
            "generate",
            "--path",
            str(spec),
            "--output-path",
            str(workdir / PACKAGE),
            "--meta",
            "none",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Not `--fail-on-warning`: the two warnings below are expected, and any other fails.
    warnings = re.findall(r"WARNING parsing (\w+) (\S+) within \w+\.\s+(.+)", output)
    assert sorted(warnings) == sorted(KNOWN_WARNINGS), output
    assert output.count("WARNING") == len(KNOWN_WARNINGS), output


def _import(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(workdir))
    return importlib.import_module(PACKAGE)


def _module(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


@pytest.fixture
def forget_client() -> Iterator[None]:
    """The generated package is imported from a temporary directory: forget it afterwards."""
    yield
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(f"{PACKAGE}.")]:
        del sys.modules[name]


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[str]:
    """The app served by uvicorn on a free loopback port, in this event loop; its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(settings), lifespan="on", ws="none", log_level="warning", access_log=False
    )
    served = uvicorn.Server(config)
    task = asyncio.create_task(served.serve(sockets=[sock]))
    deadline = time.monotonic() + 30
    while not served.started:
        assert not task.done(), "uvicorn stopped while starting"
        assert time.monotonic() < deadline, "uvicorn did not start"
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        served.should_exit = True
        await task
        sock.close()


CSV_TEXT = (
    "Email,Name,Age\n"
    "ada@example.com,Ada,36\n"
    "not-an-email,Bob,41\n"  # the bad row: row 2
    "grace@example.com,Grace,NA\n"
)


@pytest.mark.usefixtures("forget_client")
async def test_a_generated_client_runs_an_import_end_to_end(
    client: httpx.AsyncClient,
    server: str,
    make_token: MakeToken,
    run_worker: RunWorker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    document = (await client.get("/openapi.json")).json()
    await asyncio.to_thread(_generate, document, tmp_path)
    package = _import(tmp_path, monkeypatch)
    models, types = _module("models"), _module("types")
    importers_create = _module("api.importers.importers_create")
    importers_show = _module("api.importers.importers_show")
    runs_upload = _module("api.runs.runs_upload")
    runs_show = _module("api.runs.runs_show")
    runs_rows = _module("api.runs.runs_rows")
    runs_errors_summary = _module("api.runs.runs_errors_summary")
    runs_failed_rows_download = _module("api.runs.runs_failed_rows_download")
    records_list = _module("api.records.records_list")

    api = package.AuthenticatedClient(base_url=server, token=await make_token())
    async with api:
        # An importer, built from the client's typed definition model.
        fields = models.ImporterDefinitionFields()
        fields["email"] = models.FieldSpec(
            from_=["Email", "E-mail"],
            type_=models.FieldSpecType.EMAIL,
            required=True,
            transform=[models.FieldTransform.TRIM, models.FieldTransform.LOWER],
        )
        fields["name"] = models.FieldSpec(
            from_=["Name"], type_=models.FieldSpecType.STRING, required=True, min_length=2
        )
        fields["age"] = models.FieldSpec(
            from_=["Age"], type_=models.FieldSpecType.INTEGER, min_=0, max_=150, null_if=["NA"]
        )
        definition = models.ImporterDefinition(
            slug="people",
            collection="people",
            key=["email"],
            format_=models.ImporterFormat.CSV,
            on_duplicate=models.OnDuplicate.FAIL,
            fields=fields,
        )
        created = await importers_create.asyncio_detailed(client=api, body=definition)
        assert created.status_code == 201, created.content
        importer = created.parsed.data
        assert isinstance(importer, models.ImporterOut)
        assert importer.origin is models.ImporterOrigin.API
        assert importer.definition.format_ is models.ImporterFormat.CSV
        assert importer.definition.source.type_ is models.SourceType.UPLOAD
        assert importer.definition.source.has_secret_headers is False
        assert importer.definition.fields["email"].type_ is models.FieldSpecType.EMAIL
        assert importer.definition.fields["age"].max_ == 150

        # Errors come back as the typed error body.
        again = await importers_create.asyncio_detailed(client=api, body=definition)
        assert again.status_code == 422
        assert isinstance(again.parsed, models.ErrorBody)
        assert again.parsed.errors["slug"] == ["The slug has already been taken."]
        missing = await importers_show.asyncio_detailed(slug="nobody", client=api)
        assert missing.status_code == 404
        assert missing.parsed.message == "Importer 'nobody' not found."

        # The upload: multipart, as the client sends it.
        upload = models.RunsUploadBody(
            file=types.File(
                payload=io.BytesIO(CSV_TEXT.encode()),
                file_name="people.csv",
                mime_type="text/csv",
            )
        )
        started = await runs_upload.asyncio_detailed(importer="people", client=api, body=upload)
        assert started.status_code == 202, started.content
        run = started.parsed.data
        assert (run.status, run.kind) == (models.RunStatus.PENDING, models.RunKind.UPLOAD)
        assert (run.original_filename, run.dry_run, run.summary) == ("people.csv", False, None)

        # A real worker drains the queue; the run is read until it has ended.
        unfinished = {models.RunStatus.PENDING, models.RunStatus.PROCESSING}
        for _ in range(20):
            await run_worker()
            shown = (await runs_show.asyncio(run.id, client=api)).data
            if shown.status not in unfinished:
                break
        assert shown.status is models.RunStatus.COMPLETED_WITH_ERRORS
        progress = shown.progress
        assert (progress.total, progress.processed, progress.successful, progress.failed) == (
            3,
            3,
            2,
            1,
        )
        assert isinstance(shown.summary, models.RunSummary)
        assert shown.summary.to_dict() == {
            "created": 2,
            "updated": 0,
            "unchanged": 0,
            "skipped": 0,
            "staged": 0,
            "deleted": 0,
        }
        assert [(row.row_number, row.status, row.outcome) for row in shown.rows] == [
            (1, models.RowStatus.SUCCESS, models.RowOutcome.CREATED),
            (2, models.RowStatus.FAILED, None),
            (3, models.RowStatus.SUCCESS, models.RowOutcome.CREATED),
        ]

        failed = await runs_rows.asyncio(run.id, client=api, status=models.RowStatus.FAILED)
        assert failed.meta.total == 1
        (row,) = failed.data
        assert row.data.to_dict() == {"Email": "not-an-email", "Name": "Bob", "Age": "41"}
        assert row.errors.message == "The given data was invalid."
        assert row.errors.validation["email"] == ["The email must be a valid email address."]

        summary = (await runs_errors_summary.asyncio(run.id, client=api)).data
        assert summary.total_failed_rows == 1
        assert [(e.message, e.count) for e in summary.error_summary] == [
            ("The given data was invalid.", 1)
        ]
        assert [(e.message, e.count) for e in summary.validation_summary] == [
            ("email: The email must be a valid email address.", 1)
        ]

        download = await runs_failed_rows_download.asyncio_detailed(run.id, client=api)
        assert download.status_code == 200
        assert download.headers["content-type"].startswith("text/csv")
        assert list(csv.reader(io.StringIO(download.parsed))) == [
            ["Email", "Name", "Age", "_error_message", "_row_number"],
            [
                "not-an-email",
                "Bob",
                "41",
                "The given data was invalid. email: The email must be a valid email address.",
                "2",
            ],
        ]

        records = await records_list.asyncio("people", client=api)
        assert records.meta.total == 2
        assert {record.key for record in records.data} == {
            "ada@example.com",
            "grace@example.com",
        }
        grace = next(r for r in records.data if r.key == "grace@example.com")
        assert grace.data.to_dict() == {
            "email": "grace@example.com",
            "name": "Grace",
            "age": None,
        }
