"""SPEC §5 list envelope: ``{"data": [...], "meta": {...}, "links": {...}}``."""

import math
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query, Request
from pydantic import BaseModel
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.params import QueryInt

T = TypeVar("T")


class PageParams(BaseModel):
    page: int = 1
    per_page: int = 15


def page_params(
    page: Annotated[QueryInt, Query(description="Page number, from 1.")] = 1,
    per_page: Annotated[int, Query(ge=1, le=100, description="Items per page (1-100).")] = 15,
) -> PageParams:
    return PageParams(page=page, per_page=per_page)


class PageMeta(BaseModel):
    current_page: int
    per_page: int
    total: int
    last_page: int


class PageLinks(BaseModel):
    first: str
    last: str
    prev: str | None
    next: str | None


class Page(BaseModel, Generic[T]):
    data: list[T]
    meta: PageMeta
    links: PageLinks


class One(BaseModel, Generic[T]):
    """A single resource, wrapped."""

    data: T


def _link(request: Request, page: int) -> str:
    return str(request.url.include_query_params(page=page))


def build_page(
    request: Request, items: Sequence[T], total: int, params: PageParams
) -> dict[str, Any]:
    last_page = max(1, math.ceil(total / params.per_page))
    current = params.page
    return {
        "data": list(items),
        "meta": {
            "current_page": current,
            "per_page": params.per_page,
            "total": total,
            "last_page": last_page,
        },
        "links": {
            "first": _link(request, 1),
            "last": _link(request, last_page),
            "prev": _link(request, current - 1) if current > 1 else None,
            "next": _link(request, current + 1) if current < last_page else None,
        },
    }


def keyset_links(page: dict[str, Any], request: Request, last: int | str | None) -> dict[str, Any]:
    """A page fetched by keyset (``after=``): its next link continues after `last` (None when
    no page follows), and there is no previous one."""
    after = None if last is None else str(request.url.include_query_params(after=last))
    page["links"]["next"], page["links"]["prev"] = after, None
    return page


async def paginate(
    session: AsyncSession,
    request: Request,
    stmt: Select[Any],
    params: PageParams,
    serialize: Callable[[Any], Any],
) -> dict[str, Any]:
    """Run ``stmt`` (already filtered and ordered) for one page, plus a count."""
    total = await session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
    offset = (params.page - 1) * params.per_page
    rows = (await session.scalars(stmt.limit(params.per_page).offset(offset))).all()
    return build_page(request, [serialize(r) for r in rows], total or 0, params)
