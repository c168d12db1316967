"""The audit trail over HTTP (admins and auditors): ``GET /api/v1/audit`` (filtered, paged),
``GET /api/v1/audit/export.jsonl`` (everything matching, streamed) and ``GET /api/v1/audit/verify``."""
from __future__ import annotations

import json
from datetime import datetime, timezone

from flask import Response, jsonify, request

from server.people import access
from server.core import audit, db
from server.core.dates import MOMENT_SCHEMA, parse_moment
from server.core.models import AuditLog
from server.core.pagination import text_arg
from server.guards import requires
from server.api import api_bp, me
from server.api.common import page_of
from server.api.openapi import DATETIME, describe, register_schema

_FILTERS = {
    "actor": {"type": "string"}, "action": {"type": "string", "description": "exact, or a prefix ending in '*'"},
    "outcome": {"type": "string", "description": "ok, denied, ..."}, "target_type": {"type": "string"},
    "target_id": {"type": "string"},
    "from": {**MOMENT_SCHEMA, "description": "ISO date (a whole UTC day) or date-time: at or after"},
    "to": {**MOMENT_SCHEMA, "description": "ISO date (inclusive) or date-time (exclusive)"},
}


def _when(name: str, end: bool) -> datetime | None:
    raw = text_arg(request.args, name, max_len=40)
    return parse_moment(raw, name, end=end) if raw else None


def _query():
    access.require(me(), "audit.view")
    return audit.query(
        db.session(),
        actor=text_arg(request.args, "actor", 120),
        action=text_arg(request.args, "action", 80),
        outcome=text_arg(request.args, "outcome", 20),
        target_type=text_arg(request.args, "target_type", 40),
        target_id=text_arg(request.args, "target_id", 80),
        since=_when("from", False),
        until=_when("to", True),
    )


@api_bp.get("/audit")
@describe(response="AuditRow", paged=True, query=_FILTERS)
def list_audit():
    """Audit rows, newest first: who (actor), what (action, target), when (ts), outcome."""
    page = page_of(_query())
    return jsonify(page.envelope([audit.as_dict(row) for row in page.items]))


@api_bp.get("/audit/export.jsonl")
@describe(query=_FILTERS)
def export_audit():
    """Every matching row, oldest first, as JSON lines (with hashes, so a copy can be checked)."""
    query = _query().order_by(None).order_by(AuditLog.id)
    session = db.session()

    def rows(own):
        """One chunk per batch of rows, read on the stream's own session (``db.streamed``)."""
        last = 0
        while True:
            batch = own.execute(query.where(AuditLog.id > last).limit(1000)).scalars().all()
            if not batch:
                return
            last = batch[-1].id
            yield "".join(json.dumps(audit.as_dict(row), separators=(",", ":")) + "\n" for row in batch)

    filename = f"audit-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.jsonl"
    audit.record(session, "audit.export", actor=me().username, filters=dict(request.args))
    session.commit()
    return Response(db.streamed(rows), mimetype="application/x-ndjson",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@api_bp.get("/audit/verify")
@describe(response="AuditCheck")
@requires("audit.view")
def verify_audit():
    """Check the chain and the head anchors, like ``flask audit verify``."""
    check = audit.verify_trail(db.session())
    return jsonify({"ok": check.ok, "bad_row": check.bad_id, "message": check.why, "rows": check.rows})


register_schema("AuditRow", {"type": "object", "properties": {
    "id": {"type": "integer"}, "ts": DATETIME, "actor": {"type": ["string", "null"]}, "action": {"type": "string"},
    "target_type": {"type": ["string", "null"]}, "target_id": {"type": ["string", "null"]},
    "outcome": {"type": "string"}, "detail": {"type": "object"}, "hash": {"type": "string"},
    "prev_hash": {"type": "string"}}})
register_schema("AuditCheck", {"type": "object", "properties": {
    "ok": {"type": "boolean"}, "bad_row": {"type": ["integer", "null"]}, "message": {"type": "string"},
    "rows": {"type": "integer"}}})
