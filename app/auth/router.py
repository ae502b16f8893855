"""Service tokens over HTTP. A source-bound admin token manages only its source's tokens."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, status

from app.auth import service
from app.auth.dependencies import Principal, require
from app.auth.models import User
from app.auth.permissions import ADMIN
from app.auth.schemas import TokenCreate, TokenCreated, TokenOut
from app.core.deps import SessionDep
from app.core.errors import Unauthenticated, error_responses
from app.core.pagination import One, Page, PageParams, page_params, paginate
from app.core.params import TokenId

# 422: a parameter out of range, or a NUL anywhere in the query (app/core/params.py).
router = APIRouter(prefix="/tokens", tags=["tokens"], responses=error_responses(401, 403, 422))

AdminDep = Annotated[Principal, Depends(require(ADMIN))]


@router.get("", response_model=Page[TokenOut])
async def list_tokens(
    request: Request,
    session: SessionDep,
    params: Annotated[PageParams, Depends(page_params)],
    principal: AdminDep,
) -> dict[str, Any]:
    """List tokens, newest first (never their secrets)."""
    return await paginate(
        session,
        request,
        service.list_query(principal.source_id),
        params,
        service.to_resource,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=One[TokenCreated],
    responses=error_responses(400, 422),
)
async def create_token(session: SessionDep, principal: AdminDep, body: TokenCreate) -> Any:
    """Create a token; the plaintext is in `data.token`, shown this once."""
    user_email = body.user_email
    if user_email is None:
        # No user named: the token is the caller's own.
        caller = await session.get(User, principal.user_id)
        if caller is None:  # deleted since authentication
            raise Unauthenticated()
        user_email = caller.email
    issued = await service.create_token(
        session,
        name=body.name,
        abilities=body.abilities,
        user_email=user_email,
        role=body.role,
        source_id=body.source_id,
        expires_in=body.expires_in,
        expires_at=body.expires_at,
        scope_source_id=principal.source_id,
    )
    resource = service.to_resource(issued.token)
    return {"data": {**resource, "token": issued.plaintext}}


@router.delete(
    "/{token_id:int}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404)
)
async def revoke_token(token_id: TokenId, session: SessionDep, principal: AdminDep) -> None:
    """Revoke a token (at once; revoking twice is harmless)."""
    await service.revoke_token(session, token_id, scope_source_id=principal.source_id)
