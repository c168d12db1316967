"""Small helpers shared by the resource modules of the API."""
from __future__ import annotations

from datetime import datetime
from typing import TypeVar

from flask import Response, request

from server.core import db
from server.core.errors import NotFound
from server.core.pagination import Page, page_args, paginate

T = TypeVar("T")


def get_or_404(model: type[T], obj_id: int, label: str) -> T:
    obj = db.session.get(model, obj_id) if 0 < obj_id <= 2**31 - 1 else None
    if obj is None:
        raise NotFound(f"{label} {obj_id} does not exist")
    return obj


def page_of(query) -> Page:
    page, per_page = page_args(request.args)
    return paginate(db.session(), query, page, per_page)


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def no_content() -> Response:
    return Response(status=204)
