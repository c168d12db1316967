"""CSV exports: ``/api/v1/reports/executions.csv`` and ``/api/v1/reports/operations.csv``.

Optional ``from``/``to`` (ISO dates, inclusive days, or datetimes), ``task`` (id or name),
plus ``status``, ``trigger`` and ``host``. Streamed: memory stays flat for any size, and the
rows are read through ``db.streamed`` (a connection only while a batch is read).
"""
from __future__ import annotations

from flask import Response, request

from server.people import access
from server.core import db
from server.reporting import reports
from server.core.models import utcnow
from server.api import api_bp, me
from server.core.dates import MOMENT_SCHEMA
from server.api.openapi import describe

_QUERY = {
    "from": {**MOMENT_SCHEMA, "description": "ISO date (a whole UTC day) or date-time: at or after"},
    "to": {**MOMENT_SCHEMA, "description": "ISO date (inclusive) or date-time (exclusive)"},
    "task": {"type": "string", "description": "task id or name"},
    "host": {"type": "string", "description": "only executions/operations on this host"},
    "status": {"type": "string", "description": "execution status"},
    "trigger": {"type": "string", "description": "manual, schedule, ..."},
}


def _csv(name: str, produce) -> Response:
    """``produce(session)`` yields the CSV text; it runs after the request, on its own session."""
    stamp = utcnow().strftime("%Y%m%d-%H%M%S")
    resp = Response(db.streamed(produce), mimetype="text/csv")
    resp.headers["Content-Disposition"] = f'attachment; filename="{name}-{stamp}.csv"'
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


def _filters(statuses=reports.EXECUTION_STATUSES) -> reports.Filters:
    user = me()
    access.require(user, "reports.view")
    return reports.parse_filters(db.session(), user, request.args, statuses=statuses)


@api_bp.get("/reports/executions.csv")
@describe(query=_QUERY, summary="Executions as CSV (header row; streamed)")
def report_executions_csv():
    """Executions as CSV, oldest first: id, task, status, trigger, requested_by, times, duration_s,
    host counts, revision, reason, message."""
    f = _filters()
    return _csv("executions", lambda session: reports.iter_executions_csv(session, f))


@api_bp.get("/reports/operations.csv")
@describe(query=_QUERY, summary="Operations (one per host and execution) as CSV (header row; streamed)")
def report_operations_csv():
    """Operations as CSV, by execution then host: execution_id, task, host, status, rc, times,
    duration_s, execution_status, trigger, message (output is not included)."""
    f = _filters()
    return _csv("operations", lambda session: reports.iter_operations_csv(session, f))
