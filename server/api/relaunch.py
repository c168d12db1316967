"""``POST /api/v1/executions/<id>/relaunch`` with ``{"failed_only": true, "reason": ...}``."""
from __future__ import annotations

from flask import jsonify

from server.core import db
from server.core.errors import NotFound
from server.core.models import Execution
from server.executions.relaunch import relaunch
from server.api import api_bp, json_body, me


@api_bp.post("/executions/<int:execution_id>/relaunch")
def relaunch_execution(execution_id: int):
    parent = db.session.get(Execution, execution_id) if execution_id <= 2**31 - 1 else None
    if parent is None:
        raise NotFound(f"execution {execution_id} does not exist")
    body = json_body(required=False)
    child = relaunch(
        db.session(), parent, me(), failed_only=body.get("failed_only", True), reason=body.get("reason")
    )
    db.session.commit()
    return jsonify(
        {"id": child.id, "status": child.status, "parent_id": parent.id, "limit_hosts": child.limit_hosts}
    ), 202
