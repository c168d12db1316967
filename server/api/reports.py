"""CSV exports: ``/api/v1/reports/executions.csv`` and ``/api/v1/reports/operations.csv``.

Optional ``from``/``to`` (ISO dates, inclusive days, or datetimes), ``task`` (id or name),
plus ``status``, ``trigger`` and ``host``. Streamed: memory stays flat for any size.
"""
from __future__ import annotations

from flask import Response, request, stream_with_context

from .. import access, db, reports
from ..models import utcnow
from . import api_bp, me


def _csv(name: str, rows) -> Response:
    stamp = utcnow().strftime("%Y%m%d-%H%M%S")
    resp = Response(stream_with_context(rows), mimetype="text/csv")
    resp.headers["Content-Disposition"] = f'attachment; filename="{name}-{stamp}.csv"'
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


def _filters(statuses=reports.EXECUTION_STATUSES) -> reports.Filters:
    user = me()
    access.require(user, "reports.view")
    return reports.parse_filters(db.session(), user, request.args, statuses=statuses)


@api_bp.get("/reports/executions.csv")
def report_executions_csv():
    f = _filters()
    return _csv("executions", reports.iter_executions_csv(db.session(), f))


@api_bp.get("/reports/operations.csv")
def report_operations_csv():
    f = _filters()
    return _csv("operations", reports.iter_operations_csv(db.session(), f))
