"""One's own web sessions: list them, end one, or sign out everywhere (``/api/v1/me/sessions``)."""
from __future__ import annotations

from typing import Any

from flask import jsonify

from server.api import api_bp, me
from server.api.common import iso, no_content
from server.api.openapi import DATETIME, describe, register_schema
from server.core import audit, db
from server.core.errors import NotFound
from server.core.models import WebSession
from server.guards import MAX_ID
from server.people import web_sessions


def session_dict(row: WebSession) -> dict[str, Any]:
    return {"id": row.id, "address": row.address, "method": row.method, "created_at": iso(row.created_at),
            "last_seen_at": iso(row.last_seen_at), "current": web_sessions.is_current(row)}


@api_bp.get("/me/sessions")
@describe(response="WebSession")
def list_sessions():
    """Your signed-in browser sessions that are still live (not ended, idle or past their lifetime)."""
    items = [session_dict(r) for r in web_sessions.active_of(db.session(), me())]
    return jsonify({"items": items, "total": len(items)})


@api_bp.delete("/me/sessions")
@describe()
def sign_out_everywhere():
    """End every web session of yours (this one too, when called from the browser)."""
    s = db.session()
    count = web_sessions.revoke_all(s, me())
    audit.record(s, "auth.logout_everywhere", actor=me().username, target=me(), sessions_ended=count)
    s.commit()
    return no_content()


@api_bp.delete("/me/sessions/<int:session_id>")
@describe()
def end_session(session_id: int):
    """End one of your sessions."""
    s = db.session()
    if not (0 < session_id <= MAX_ID) or not web_sessions.revoke(s, me(), session_id):
        raise NotFound(f"session {session_id} does not exist")
    audit.record(s, "auth.logout", actor=me().username, target=me(), session_id=session_id)
    s.commit()
    return no_content()


register_schema("WebSession", {"type": "object", "properties": {
    "id": {"type": "integer"}, "address": {"type": "string"}, "method": {"type": "string"},
    "created_at": DATETIME, "last_seen_at": DATETIME, "current": {"type": "boolean"}}})
