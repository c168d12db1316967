"""Recorded SSH host keys: ``GET`` / ``DELETE /api/v1/hosts/<id>/host-keys``."""
from __future__ import annotations

from flask import current_app, jsonify

from server.core import db
from server.runs import hostkeys
from server.people.access import require_host
from server.core.models import Host
from server.api import api_bp, me
from server.guards import requires, visible_or_404
from server.api.openapi import describe, register_schema

register_schema("HostKeys", {
    "type": "object",
    "properties": {
        "host": {"type": "string"},
        "keys": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "type": {"type": "string"}, "fingerprint": {"type": "string"}}}},
    },
})
register_schema("ForgottenHostKeys", {
    "type": "object",
    "properties": {"host": {"type": "string"}, "forgotten": {"type": "array", "items": {"type": "object"}}},
})


@api_bp.get("/hosts/<int:host_id>/host-keys")
@describe(response="HostKeys")
@requires("hosts.view")
def get_host_keys(host_id: int):
    """The SSH host keys recorded for this host (learnt on first contact)."""
    host = visible_or_404(Host, host_id, "host")
    require_host(db.session(), me(), host)
    return jsonify({"host": host.name, "keys": hostkeys.keys(current_app.config["TM"].instance_dir, host)})


@api_bp.delete("/hosts/<int:host_id>/host-keys")
@describe(response="ForgottenHostKeys")
def forget_host_keys(host_id: int):
    """Forget this host's recorded SSH host keys (after a rebuild); the next connection learns the new one."""
    host = visible_or_404(Host, host_id, "host")
    result = hostkeys.forget(db.session(), me(), host, current_app.config["TM"].instance_dir)
    db.session.commit()
    return jsonify(result)
