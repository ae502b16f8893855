"""Front doors that start a run from a file: upload and URL trigger."""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, status

from app.auth.dependencies import Principal, require
from app.auth.permissions import CREATE
from app.core.deps import SessionDep, SettingsDep, check_queue_room, split_after_commit
from app.core.errors import UnsupportedMediaType, ValidationFailed, error_responses
from app.core.idempotency import IdempotencyDep, fingerprint
from app.core.pagination import One
from app.core.storage import Storage, storage_of
from app.core.uploads import Upload, receive_upload
from app.importers import service as importers
from app.pipeline.readers import ReadError, check_format
from app.pipeline.readers.base import check_head
from app.runs import service
from app.runs.schemas import RunOut, TriggerIn

router = APIRouter(tags=["runs"], responses=error_responses(401, 403, 404))

TRUE = {"1", "true", "yes", "on"}

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "dry_run": {"type": "boolean", "default": False},
                    },
                }
            }
        },
    }
}


class _LookInside(Exception):
    """Only the whole file tells: a ZIP archive whose name does not say it is a workbook."""


def _look_inside() -> bool:
    raise _LookInside


async def _check_format(storage: Storage, upload: Upload, expected: str) -> None:
    """Refuse at the door what is obviously not the importer's format (415)."""
    assert upload.key is not None
    filename = upload.filename or ""
    try:
        try:
            check_head(upload.head, filename, expected, _look_inside)
        except _LookInside:
            async with storage.local_file(upload.key) as path:
                check_format(path, filename, expected)
    except ReadError as exc:
        raise UnsupportedMediaType(str(exc)) from exc


@router.post(
    "/upload/{importer}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=One[RunOut],
    responses=error_responses(400, 413, 415, 422, 429),
    openapi_extra=UPLOAD_BODY,
)
async def upload(
    importer: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: Annotated[Principal, Depends(require(CREATE))],
    idempotency: IdempotencyDep,
) -> Any:
    """Upload a file (multipart `file`, optional `dry_run`) and start a run."""
    found = await importers.get_by_slug(session, importer, source_id=principal.source_id)
    definition = importers.definition_of(found)
    if definition.source.type != "upload":
        raise ValidationFailed(
            f"Importer '{importer}' takes no uploads (its source is {definition.source.type})."
        )
    await check_queue_room(request)
    storage = storage_of(settings)
    received = await receive_upload(request, storage, settings.max_upload_bytes)
    dry_run = received.fields.get("dry_run", "").strip().lower() in TRUE
    request_hash = fingerprint("upload", importer, received.sha256, str(dry_run))
    try:
        replayed = await idempotency.replay(session, principal.token_id, request_hash)
        if replayed is not None:
            await received.discard(storage)
            return replayed
        await _check_format(storage, received, definition.format)
        run = await service.create_run(
            session,
            found,
            kind="upload",
            user_id=principal.user_id,
            token_id=principal.token_id,
            dry_run=dry_run,
            original_filename=received.filename,
            file_key=received.key,
            file_sha256=received.sha256,
            file_size=received.size,
        )
    except BaseException:
        await received.discard(storage)
        raise
    result = {"data": service.to_resource(run)}
    await idempotency.save(session, principal.token_id, request_hash, 202, result)
    split_after_commit(request, run.id)
    return result


@router.post(
    "/trigger/{importer}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=One[RunOut],
    responses=error_responses(400, 422, 429),
)
async def trigger(
    importer: str,
    request: Request,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(CREATE))],
    idempotency: IdempotencyDep,
    body: Annotated[TriggerIn | None, Body()] = None,
) -> Any:
    """Start a run of a URL importer now (the worker downloads the file)."""
    found = await importers.get_by_slug(session, importer, source_id=principal.source_id)
    definition = importers.definition_of(found)
    if definition.source.type != "url":
        raise ValidationFailed(
            f"Importer '{importer}' has no URL source to trigger (its source is "
            f"{definition.source.type})."
        )
    await check_queue_room(request)
    dry_run = bool(body and body.dry_run)
    request_hash = fingerprint("trigger", importer, str(dry_run))
    replayed = await idempotency.replay(session, principal.token_id, request_hash)
    if replayed is not None:
        return replayed
    run = await service.create_run(
        session,
        found,
        kind="url",
        user_id=principal.user_id,
        token_id=principal.token_id,
        dry_run=dry_run,
    )
    result = {"data": service.to_resource(run)}
    await idempotency.save(session, principal.token_id, request_hash, 202, result)
    split_after_commit(request, run.id)
    return result
