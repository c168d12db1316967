"""Notification channels: ``/api/v1/notifications`` (admins only; URLs are write-only)."""
from __future__ import annotations

from flask import jsonify

from .. import access, db, notify
from ..errors import NotFound
from ..models import NotificationChannel
from . import api_bp, json_body, me


def _channel(channel_id: int) -> NotificationChannel:
    channel = db.session.get(NotificationChannel, channel_id)
    if channel is None:
        raise NotFound(f"notification channel {channel_id} not found")
    return channel


@api_bp.get("/notifications")
def list_notifications():
    access.require(me(), "notifications.manage")
    rows = db.session.query(NotificationChannel).order_by(NotificationChannel.name).all()
    return jsonify([notify.channel_dict(ch) for ch in rows])


@api_bp.post("/notifications")
def create_notification():
    access.require(me(), "notifications.manage")
    channel = notify.create_channel(db.session(), json_body(), actor=me().username)
    db.session.commit()
    return jsonify(notify.channel_dict(channel)), 201


@api_bp.get("/notifications/<int:channel_id>")
def get_notification(channel_id: int):
    access.require(me(), "notifications.manage")
    return jsonify(notify.channel_dict(_channel(channel_id)))


@api_bp.patch("/notifications/<int:channel_id>")
def update_notification(channel_id: int):
    access.require(me(), "notifications.manage")
    channel = notify.update_channel(db.session(), _channel(channel_id), json_body(), actor=me().username)
    db.session.commit()
    return jsonify(notify.channel_dict(channel))


@api_bp.delete("/notifications/<int:channel_id>")
def delete_notification(channel_id: int):
    access.require(me(), "notifications.manage")
    notify.delete_channel(db.session(), _channel(channel_id), actor=me().username)
    db.session.commit()
    return "", 204


@api_bp.post("/notifications/<int:channel_id>/test")
def test_notification(channel_id: int):
    """Queue a test message to this channel; its outcome shows in ``deliveries``."""
    access.require(me(), "notifications.manage")
    row = notify.send_test(db.session(), _channel(channel_id), actor=me().username)
    db.session.commit()
    return jsonify({"delivery": row.id, "status": row.status}), 202


@api_bp.get("/notifications/<int:channel_id>/deliveries")
def list_deliveries(channel_id: int):
    access.require(me(), "notifications.manage")
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
