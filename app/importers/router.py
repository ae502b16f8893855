from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, status

from app.auth.dependencies import Principal, require
from app.auth.permissions import ADMIN, VIEW
from app.core.deps import SessionDep
from app.core.errors import error_responses
from app.core.openapi import documented_as
from app.core.pagination import One, Page, PageParams, page_params, paginate
from app.importers import service
from app.importers.bodies import YAML_BODY, DefinitionRoute
from app.importers.schemas import ImporterDefinition, ImporterOut

# 422: a parameter out of range, or a NUL anywhere in the query (app/core/params.py).
# DefinitionRoute: a definition body may be JSON or YAML (app/importers/bodies.py).
router = APIRouter(
    prefix="/importers",
    tags=["importers"],
    responses=error_responses(401, 403, 422),
    route_class=DefinitionRoute,
)

# Parsed by service.parse_definition (its messages name the field), documented as the model.
DefinitionBody = Annotated[dict[str, Any], documented_as(ImporterDefinition)]


@router.get("", response_model=Page[ImporterOut])
async def list_importers(
    request: Request,
    session: SessionDep,
    params: Annotated[PageParams, Depends(page_params)],
    principal: Annotated[Principal, Depends(require(VIEW))],
) -> dict[str, Any]:
    """List importers."""
    return await paginate(
        session, request, service.list_query(principal.source_id), params, service.to_resource
    )


@router.get("/{slug}", response_model=One[ImporterOut], responses=error_responses(404))
async def show_importer(
    slug: str, session: SessionDep, principal: Annotated[Principal, Depends(require(VIEW))]
) -> dict[str, Any]:
    """Show one importer (source headers are never returned)."""
    importer = await service.get_by_slug(session, slug, source_id=principal.source_id)
    return {"data": service.to_resource(importer)}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=One[ImporterOut],
    responses=error_responses(400, 409, 413, 422),
    openapi_extra=YAML_BODY,
)
async def create_importer(
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(ADMIN))],
    body: Annotated[DefinitionBody, Body(description="An importer definition (SPEC §3).")],
) -> dict[str, Any]:
    """Create an importer."""
    definition = service.parse_definition(body)
    service.check_source_scope(definition, principal.source_id)
    importer = await service.create(session, definition)
    return {"data": service.to_resource(importer)}


@router.put(
    "/{slug}",
    response_model=One[ImporterOut],
    responses=error_responses(400, 403, 404, 409, 413, 422),
    openapi_extra=YAML_BODY,
)
async def update_importer(
    slug: str,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(ADMIN))],
    body: Annotated[DefinitionBody, Body(description="The full importer definition.")],
) -> dict[str, Any]:
    """Replace an importer's definition."""
    importer = await service.get_by_slug(session, slug, source_id=principal.source_id)
    body.setdefault("slug", slug)
    definition = service.parse_definition(body)
    service.check_source_scope(definition, principal.source_id)
    importer = await service.update(session, importer, definition)
    return {"data": service.to_resource(importer)}


@router.delete("/{slug}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404))
async def delete_importer(
    slug: str, session: SessionDep, principal: Annotated[Principal, Depends(require(ADMIN))]
) -> None:
    """Delete an importer and its runs (records stay)."""
    importer = await service.get_by_slug(session, slug, source_id=principal.source_id)
    await service.delete(session, importer)
