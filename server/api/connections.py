"""Connection tests: ``POST /api/v1/hosts/<id>/test``."""
from __future__ import annotations

from flask import jsonify

from server.core import db
from server.catalog.connections import test_host
from server.core.models import Host
from server.api import api_bp, json_body, me
from server.guards import visible_or_404
from server.api.openapi import describe, register_schema

register_schema("ConnectionTest", {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "reason": {"type": "string"},
        "protocol": {"type": "string"},
        "host": {"type": "string"},
        "address": {"type": "string"},
        "port": {"type": ["integer", "null"]},
        "credential": {"type": ["string", "null"]},
        "tested_at": {"type": "string", "format": "date-time"},
        "details": {"type": "object"},
    },
})
register_schema("ConnectionTestInput", {
    "type": "object",
    "properties": {"credential": {"type": "string", "description": "log in with this credential (needs hosts.edit)"}},
})


@api_bp.post("/hosts/<int:host_id>/test")
@describe(request="ConnectionTestInput", response="ConnectionTest", body_optional=True)
def test_host_connection(host_id: int):
    """Test the host's connection: TCP, the protocol handshake and, with a credential, a login."""
    body = json_body(required=False)
    host = visible_or_404(Host, host_id, "host")
    result = test_host(db.session(), me(), host, body.get("credential"))
    db.session.commit()
    return jsonify(result)
