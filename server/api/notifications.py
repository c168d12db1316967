"""Notification channels: ``/api/v1/notifications`` (admins only; URLs are write-only)."""
from __future__ import annotations

from flask import jsonify
from sqlalchemy import select

from server.core import db
from server.reporting import notify
from server.core.models import NotificationChannel
from server.guards import requires, visible_or_404
from server.api import api_bp, json_body, me
from server.api.common import page_of
from server.core.validation import schema_of
from server.api.openapi import describe, register_schema

_EVENTS = {"type": "array", "items": {"type": "string", "enum": list(notify.EVENTS)},
           "description": "default [\"execution.failed\"]"}
_EVENTS_INPUT = {**_EVENTS, "type": ["array", "null"], "minItems": 1, "description": "null: [\"execution.failed\"]"}
register_schema("NotificationChannel", {
    "type": "object",
    "properties": {
        "id": {"type": "integer"}, "name": {"type": "string"},
        "url": {"type": "string", "description": "redacted: scheme://host[:port]/… (credentials never returned)"},
        "events": _EVENTS, "enabled": {"type": "boolean"},
        "created_at": {"type": "string", "format": "date-time"},
    },
})
register_schema("NotificationChannelInput", {
    "type": "object", "additionalProperties": False, "required": ["name", "url"],
    "description": "POST needs name and url; PATCH takes any subset (an empty url keeps the stored one)",
    "properties": {
        "name": schema_of(notify.NAME_CHECK),
        "url": {"type": "string", "maxLength": notify.MAX_URL, "pattern": "\\S", "writeOnly": True,
                "description": "an Apprise URL (mailto://, json://, slack://, ...); write-only"},
        "events": _EVENTS_INPUT, "enabled": {"type": "boolean"},
    },
})
register_schema("NotificationDelivery", {
    "type": "object",
    "properties": {k: {"type": t} for k, t in (
        ("id", "integer"), ("event", "string"), ("title", "string"), ("status", "string"), ("attempts", "integer"),
        ("last_error", ["string", "null"]), ("created_at", "string"), ("sent_at", ["string", "null"]),
        ("next_attempt_at", ["string", "null"]))},
})


def _channel(channel_id: int) -> NotificationChannel:
    return visible_or_404(NotificationChannel, channel_id, "notification channel")


@api_bp.get("/notifications")
@describe(response="NotificationChannel", paged=True)
@requires("notifications.manage")
def list_notifications():
    """List notification channels by name (admins)."""
    page = page_of(select(NotificationChannel).order_by(NotificationChannel.name))
    return jsonify(page.envelope([notify.channel_dict(ch) for ch in page.items]))


@api_bp.post("/notifications")
@describe(request="NotificationChannelInput", response="NotificationChannel", status=201)
@requires("notifications.manage")
def create_notification():
    """Add a channel; the URL is stored encrypted."""
    channel = notify.create_channel(db.session(), json_body(), actor=me().username)
    db.session.commit()
    return jsonify(notify.channel_dict(channel)), 201


@api_bp.get("/notifications/<int:channel_id>")
@describe(response="NotificationChannel")
@requires("notifications.manage")
def get_notification(channel_id: int):
    return jsonify(notify.channel_dict(_channel(channel_id)))


@api_bp.patch("/notifications/<int:channel_id>")
@describe(request="NotificationChannelInput", response="NotificationChannel")
@requires("notifications.manage")
def update_notification(channel_id: int):
    """Change a channel; an omitted or empty url keeps the stored one."""
    channel = notify.update_channel(db.session(), _channel(channel_id), json_body(), actor=me().username)
    db.session.commit()
    return jsonify(notify.channel_dict(channel))


@api_bp.delete("/notifications/<int:channel_id>")
@describe(status=204)
@requires("notifications.manage")
def delete_notification(channel_id: int):
    notify.delete_channel(db.session(), _channel(channel_id), actor=me().username)
    db.session.commit()
    return "", 204


@api_bp.post("/notifications/<int:channel_id>/test")
@describe(status=202)
@requires("notifications.manage")
def test_notification(channel_id: int):
    """Queue a test message to this channel; its outcome shows in ``deliveries``."""
    row = notify.send_test(db.session(), _channel(channel_id), actor=me().username)
    db.session.commit()
    return jsonify({"delivery": row.id, "status": row.status}), 202


@api_bp.get("/notifications/<int:channel_id>/deliveries")
@describe(response="NotificationDelivery")
@requires("notifications.manage")
def list_deliveries(channel_id: int):
    """The channel's 50 latest deliveries with their outcome."""
    _channel(channel_id)
    rows = notify.recent_deliveries(db.session(), channel_id, limit=50)
    return jsonify([
        {
            "id": d.id, "event": d.event, "title": d.title, "status": d.status, "attempts": d.attempts,
            "last_error": d.last_error, "created_at": d.created_at.isoformat() if d.created_at else None,
            "sent_at": d.sent_at.isoformat() if d.sent_at else None,
            "next_attempt_at": d.next_attempt_at.isoformat() if d.next_attempt_at else None,
        }
        for d in rows
    ])
