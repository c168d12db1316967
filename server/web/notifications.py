"""Notification channel pages (admins): the list with the add form, edit, delete, and a
test message; recent deliveries with their outcome. ``reporting.notify`` validates and stores."""
from __future__ import annotations

from typing import Any

from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import select

from server.core import audit, db
from server.core.errors import ValidationError
from server.core.models import NotificationChannel, Task, TaskSubscription
from server.guards import requires, visible_or_404
from server.people import access
from server.reporting import notify
from server.web import web_bp
from server.web.common import save


def _form_data() -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": request.form.get("name", ""),
        "events": request.form.getlist("events"),
        "enabled": request.form.get("enabled") == "on",
    }
    url = request.form.get("url", "").strip()
    if url:
        data["url"] = url
    return data


def _create_channel(session, form: dict[str, Any]) -> NotificationChannel:
    """The API's create, except that the form must name a URL (the API says so the same way)."""
    if "url" not in form:
        raise ValidationError("'url' is required: an Apprise URL such as mailto://… or json://host/path", field="url")
    return notify.create_channel(session, form, actor=current_user.username)


def _channel(channel_id: int) -> NotificationChannel:
    return visible_or_404(NotificationChannel, channel_id, "notification channel")


@web_bp.route("/notifications", methods=["GET", "POST"])
@login_required
@requires("notifications.manage")
def notifications():
    s = db.session()
    error, form = None, {"events": list(notify.DEFAULT_EVENTS), "enabled": True}
    if request.method == "POST":
        form = _form_data()
        channel, error = save(_create_channel, form)
        if not error:
            flash(f"Channel “{channel.name}” added. Send a test message to check it.", "success")
            return redirect(url_for("web.notifications"))
    channels = s.execute(select(NotificationChannel).order_by(NotificationChannel.name)).scalars().all()
    return render_template("notifications/list.html", channels=[notify.channel_dict(c) for c in channels],
                           recent=notify.recent_deliveries(s, limit=20), names={c.id: c.name for c in channels},
                           form=form, error=error, events=notify.EVENTS), (422 if error else 200)


@web_bp.route("/notifications/<int:channel_id>", methods=["GET", "POST"])
@login_required
@requires("notifications.manage")
def notification(channel_id: int):
    s = db.session()
    channel = _channel(channel_id)
    error = None
    form = notify.channel_dict(channel)
    if request.method == "POST":
        form = {**form, **_form_data()}
        _, error = save(notify.update_channel, channel, _form_data(), actor=current_user.username)
        if not error:
            flash(f"Channel “{channel.name}” saved.", "success")
            return redirect(url_for("web.notifications"))
    return render_template("notifications/edit.html", channel=notify.channel_dict(channel), form=form, error=error,
                           events=notify.EVENTS, recent=notify.recent_deliveries(s, channel_id, limit=20)), \
        (422 if error else 200)


@web_bp.post("/notifications/<int:channel_id>/delete")
@login_required
@requires("notifications.manage")
def notification_delete(channel_id: int):
    s = db.session()
    channel = _channel(channel_id)
    name = channel.name
    notify.delete_channel(s, channel, actor=current_user.username)
    s.commit()
    flash(f"Channel “{name}” deleted.", "success")
    return redirect(url_for("web.notifications"))


@web_bp.post("/notifications/<int:channel_id>/test")
@login_required
@requires("notifications.manage")
def notification_test(channel_id: int):
    s = db.session()
    channel = _channel(channel_id)
    notify.send_test(s, channel, actor=current_user.username)
    s.commit()
    flash(f"Test message queued for “{channel.name}”; its result appears below within a few seconds.", "success")
    return redirect(url_for("web.notifications"))


# --- "notify me": a user's own subscription to a task's failures ------------------------------

@web_bp.app_template_global("subscribed_to")
def subscribed_to(task_id: int) -> bool:
    return db.session.execute(select(TaskSubscription.id).where(
        TaskSubscription.task_id == task_id, TaskSubscription.user_id == current_user.id)).first() is not None


@web_bp.post("/tasks/<int:task_id>/subscription")
@login_required
def task_subscription(task_id: int):
    """Subscribe (``on=1``) or unsubscribe the signed-in user to failures of a task he may see,
    sent to his e-mail address through the admin's e-mail channel."""
    task = visible_or_404(Task, task_id, "task", lambda t: "view" in access.task_permissions(db.session(), current_user, t))
    s = db.session()
    current = s.execute(select(TaskSubscription).where(
        TaskSubscription.task_id == task.id, TaskSubscription.user_id == current_user.id)).scalar_one_or_none()
    if request.form.get("on") == "1":
        if not current_user.email:
            flash("Add your e-mail address to your account first: failures are sent there.", "error")
            return redirect(url_for("web.task", task_id=task.id))
        if current is None:
            s.add(TaskSubscription(user_id=current_user.id, task_id=task.id))
            audit.record(s, "subscription.create", actor=current_user.username, target=task, email=current_user.email)
        note = f"You will get an e-mail at {current_user.email} when a run of {task.name} fails."
        if notify.mail_channel(s) is None:
            note += " No e-mail channel is set up yet: an admin must add one before anything is sent."
    else:
        if current is not None:
            s.delete(current)
            audit.record(s, "subscription.delete", actor=current_user.username, target=task)
        note = f"You no longer get e-mails about {task.name}."
    s.commit()
    flash(note, "success")
    return redirect(url_for("web.task", task_id=task.id))
