"""Small helpers shared by the resource modules of the API."""
from __future__ import annotations

from datetime import datetime

from flask import Response, request

from server.core import db
from server.core.pagination import Page, page_args, paginate


def page_of(query) -> Page:
    page, per_page = page_args(request.args)
    return paginate(db.session(), query, page, per_page)


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def no_content() -> Response:
    return Response(status=204)
