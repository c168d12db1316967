"""Notifications: record now, deliver later.

``emit`` only adds ``NotificationDelivery`` rows to the caller's transaction, so an event
is notified exactly when the change that caused it is committed, and sending (slow SMTP,
a dead webhook) can never block or break an execution. ``deliver_due`` sends what is due
through Apprise, records every failure and retries with backoff.

Who sends: a daemon thread (``start_thread``) in the scheduler process polls
``deliver_due`` every few seconds. A thread rather than an RQ job because the RQ worker
runs one execution at a time (a notification would wait behind an hour-long playbook)
and RQ's delayed retries need its own scheduler; the delivery rows in the database are
already a durable queue. Claims are atomic UPDATEs, so any number of processes may run
the loop (``flask --app wsgi notifier`` runs it on its own).
"""
from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from flask import current_app, has_app_context
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from server.core import audit
from server.core.errors import Conflict, ValidationError
from server.core.models import (
    EXECUTION_FAILED,
    OPERATION_FAILED,
    Execution,
    ExecutionStatus,
    NotificationChannel,
    NotificationDelivery,
    Operation,
    OperationStatus,
    TaskSubscription,
    utcnow,
)
from server.core.validation import Invalid, text as text_check
from server.core.vault import vault
from server.people import access

log = logging.getLogger(__name__)

EVENTS = ("execution.failed", "execution.succeeded", "approval.requested", "approval.decided", "schedule.missed")
DEFAULT_EVENTS = ["execution.failed"]
# Seconds to wait after the 1st, 2nd, ... failed attempt; after the last one the delivery is failed.
BACKOFF_S = (30, 120, 600, 1800, 3600)
MAX_ATTEMPTS = len(BACKOFF_S) + 1
CLAIM_LEASE_S = 300  # a claimed delivery whose sender died becomes due again after this
MAX_HOSTS_LISTED = 25
MAX_URL = 2000


# --- channels ----------------------------------------------------------------------------

def _apprise_plugin(url: str):
    import apprise

    return apprise.Apprise.instantiate(url)


def redact(url: str) -> str:
    """``scheme://host[:port]/…`` with no user, password, path or query (they carry secrets).

    Apprise's privacy form masks secrets that live in the host part (e.g. Slack tokens)."""
    try:
        plugin = _apprise_plugin(url)
        shown = plugin.url(privacy=True) if plugin is not None else url
    except Exception:  # noqa: BLE001 - redaction must never fail
        shown = url
    parts = urlsplit(shown)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    tail = "/…" if (parts.path.strip("/") or parts.query) else ""
    return f"{parts.scheme}://{host}{tail}" if parts.scheme else "…"


def validate_url(url: Any) -> str:
    if not isinstance(url, str) or not url.strip():
        raise ValidationError("'url' is required: an Apprise URL such as mailto://… or json://host/path", field="url")
    url = url.strip()
    if len(url) > MAX_URL:
        raise ValidationError(f"'url' is longer than {MAX_URL} characters", field="url")
    try:
        plugin = _apprise_plugin(url)
    except Exception:  # noqa: BLE001
        plugin = None
    if plugin is None:
        raise ValidationError(
            "'url' is not a valid Apprise URL (e.g. mailto://user:pass@smtp.example.com?to=ops@example.com, "
            "json://host:port/path, slack://TokenA/TokenB/TokenC)",
            field="url",
        )
    return url


def validate_events(events: Any) -> list[str]:
    if events is None:
        return list(DEFAULT_EVENTS)
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise ValidationError("'events' must be a list of event names", field="events")
    unknown = sorted(set(events) - set(EVENTS))
    if unknown:
        raise ValidationError(f"unknown events {', '.join(unknown)}; choose from {', '.join(EVENTS)}", field="events")
    if not events:
        raise ValidationError("choose at least one event", field="events")
    return [e for e in EVENTS if e in events]


NAME_CHECK = text_check(120)  # its .schema documents the field (api/notifications.py)


def validate_name(session: Session, name: Any, channel_id: int | None = None) -> str:
    if name is None or name == "":
        raise ValidationError("'name' is required", field="name")
    try:
        name = NAME_CHECK(name)
    except Invalid as exc:
        raise ValidationError(f"'name' {exc}", field="name") from None
    clash = session.execute(select(NotificationChannel.id).where(NotificationChannel.name == name)).scalar()
    if clash is not None and clash != channel_id:
        raise Conflict(f"a channel named {name!r} already exists", field="name")
    return name


def channel_url(channel: NotificationChannel) -> str:
    return vault().decrypt(channel.url_enc) or ""


def channel_dict(channel: NotificationChannel) -> dict[str, Any]:
    """The API form: the URL is redacted, never returned whole."""
    return {
        "id": channel.id,
        "name": channel.name,
        "url": redact(channel_url(channel)),
        "events": list(channel.events or []),
        "enabled": bool(channel.enabled),
        "created_at": channel.created_at.isoformat() if channel.created_at else None,
    }


def create_channel(session: Session, data: dict[str, Any], *, actor: str) -> NotificationChannel:
    unknown = set(data) - {"name", "url", "events", "enabled"}
    if unknown:
        raise ValidationError(f"unknown fields: {', '.join(sorted(unknown))}")
    name = validate_name(session, data.get("name"))
    url = validate_url(data.get("url"))
    events = validate_events(data.get("events"))
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ValidationError("'enabled' must be true or false", field="enabled")
    channel = NotificationChannel(name=name, url_enc=vault().encrypt(url), events=events, enabled=enabled)
    session.add(channel)
    session.flush()
    audit.record(session, "notification.create", actor=actor, target=channel, name=name,
                 url=redact(url), events=events, enabled=enabled)
    return channel


def update_channel(session: Session, channel: NotificationChannel, data: dict[str, Any], *, actor: str) -> NotificationChannel:
    unknown = set(data) - {"name", "url", "events", "enabled"}
    if unknown:
        raise ValidationError(f"unknown fields: {', '.join(sorted(unknown))}")
    changes: dict[str, Any] = {}
    if "name" in data:
        channel.name = changes["name"] = validate_name(session, data["name"], channel.id)
    if "url" in data and data["url"] not in (None, ""):
        url = validate_url(data["url"])
        channel.url_enc = vault().encrypt(url)
        changes["url"] = redact(url)
    if "events" in data:
        channel.events = changes["events"] = validate_events(data["events"])
    if "enabled" in data:
        if not isinstance(data["enabled"], bool):
            raise ValidationError("'enabled' must be true or false", field="enabled")
        channel.enabled = changes["enabled"] = data["enabled"]
    session.flush()
    audit.record(session, "notification.update", actor=actor, target=channel, **changes)
    return channel


def delete_channel(session: Session, channel: NotificationChannel, *, actor: str) -> None:
    audit.record(session, "notification.delete", actor=actor, target=channel, name=channel.name)
    session.delete(channel)
    session.flush()


def send_test(session: Session, channel: NotificationChannel, *, actor: str) -> NotificationDelivery:
    """Queue a test message to one channel (whatever its events)."""
    row = NotificationDelivery(
        channel_id=channel.id,
        event="test",
        title="[Task Manager] Test notification",
        body=f"This is a test of the notification channel '{channel.name}', sent by {actor}.\n{_public_url()}/",
        status="pending",
        next_attempt_at=utcnow(),
    )
    session.add(row)
    session.flush()
    audit.record(session, "notification.test", actor=actor, target=channel)
    return row


# --- messages ------------------------------------------------------------------------------

def _public_url() -> str:
    if has_app_context():
        return current_app.config["TM"].public_url.rstrip("/")
    import os

    return os.environ.get("TASKMANAGER_PUBLIC_URL", "http://127.0.0.1:5000").rstrip("/")


def execution_link(execution_id: int) -> str:
    return f"{_public_url()}/executions/{execution_id}"


def _op_error(op: Operation) -> str:
    """One line saying why a host failed: its message, else the last line of stderr/stdout."""
    for text in (op.message, op.stderr, op.stdout):
        if text and text.strip():
            line = text.strip().splitlines()[-1].strip()
            return line[:300]
    return f"exit code {op.rc}" if op.rc is not None else op.status


def _fmt_time(dt: datetime | None) -> str:
    return dt.isoformat(timespec="seconds") if dt else "-"


def _execution_message(ex: Execution) -> tuple[str, str]:
    task_name = ex.task.name if ex.task else f"task {ex.task_id}"
    status = ex.status.replace("_", " ").upper()
    title = f"[Task Manager] {status}: {task_name} (execution #{ex.id})"
    ops = list(ex.operations or [])
    bad = [op for op in ops if op.status in OPERATION_FAILED]
    good = sum(1 for op in ops if op.status == OperationStatus.SUCCEEDED)
    lines = [
        f"Task: {task_name}",
        f"Execution: #{ex.id} — {ex.status}",
        f"Trigger: {ex.trigger}" + (f" by {ex.requested_by.username}" if ex.requested_by else ""),
        f"Started: {_fmt_time(ex.started_at)}   Finished: {_fmt_time(ex.finished_at)}",
        f"Hosts: {ex.host_count} total, {good} succeeded, {len(bad)} failed",
    ]
    if ex.duration_s is not None:
        lines.insert(4, f"Duration: {ex.duration_s:.1f} s")
    if ex.message:
        lines.append(f"Message: {ex.message}")
    if bad:
        lines.append("")
        lines.append("Failed hosts:")
        for op in bad[:MAX_HOSTS_LISTED]:
            lines.append(f"  - {op.host_name} ({op.status}): {_op_error(op)}")
        if len(bad) > MAX_HOSTS_LISTED:
            lines.append(f"  … and {len(bad) - MAX_HOSTS_LISTED} more")
    lines += ["", f"Details: {execution_link(ex.id)}"]
    return title, "\n".join(lines)


def render(event: str, context: dict[str, Any]) -> tuple[str, str]:
    """Title and body for an event. Known context keys: execution, schedule, due_at,
    decision, approver, comment, reason, message."""
    ex: Execution | None = context.get("execution")
    if event in ("execution.failed", "execution.succeeded") and ex is not None:
        return _execution_message(ex)
    extra = []
    for key in ("decision", "approver", "comment", "reason", "due_at", "message"):
        value = context.get(key)
        if value not in (None, ""):
            extra.append(f"{key.replace('_', ' ').capitalize()}: {value}")
    if event.startswith("approval.") and ex is not None:
        task_name = ex.task.name if ex.task else f"task {ex.task_id}"
        verb = "needs approval" if event == "approval.requested" else f"was {context.get('decision') or ex.status}"
        who = ex.requested_by.username if ex.requested_by else "the scheduler"
        title = f"[Task Manager] {task_name} (execution #{ex.id}) {verb}"
        body = [f"Task: {task_name}", f"Requested by: {who}", f"Reason: {ex.reason or '-'}"]
        body += extra + ["", f"Details: {execution_link(ex.id)}"]
        return title, "\n".join(body)
    schedule = context.get("schedule")
    if event.startswith("approval.") and schedule is not None:
        task_name = schedule.task.name if getattr(schedule, "task", None) else f"task {schedule.task_id}"
        verb = "needs approval" if event == "approval.requested" else f"was {context.get('decision') or 'decided'}"
        title = str(context.get("title") or f"[Task Manager] Schedule #{schedule.id} of {task_name} {verb}")
        body = [f"Task: {task_name}", f"Schedule: #{schedule.id} {schedule.cron} ({schedule.timezone})"] + extra
        body += ["", f"Details: {_public_url()}/schedules/{schedule.id}"]
        return title, "\n".join(body)
    if event == "schedule.missed" and schedule is not None:
        task_name = schedule.task.name if getattr(schedule, "task", None) else f"task {schedule.task_id}"
        title = f"[Task Manager] Schedule missed: {task_name} ({schedule.cron} {schedule.timezone})"
        body = [f"Task: {task_name}", f"Schedule: #{schedule.id} {schedule.cron} ({schedule.timezone})"] + extra
        body += ["", f"Details: {_public_url()}/schedules/{schedule.id}"]
        return title, "\n".join(body)
    title = str(context.get("title") or f"[Task Manager] {event}")
    return title, "\n".join(extra) or title


def emit(session: Session, event: str, **context: Any) -> list[NotificationDelivery]:
    """Record one pending delivery per enabled channel subscribed to ``event``.

    Adds rows to the caller's session without flushing, so they commit (or roll back)
    with the caller's change. Never raises: a notification problem must not fail the
    operation that triggered it."""
    try:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}")
        channels = [
            ch
            for ch in session.execute(
                select(NotificationChannel).where(NotificationChannel.enabled.is_(True)).order_by(NotificationChannel.id)
            ).scalars()
            if event in (ch.events or [])
        ]
        if not channels:
            return []
        title, body = render(event, context)
        now = utcnow()
        rows = [
            NotificationDelivery(
                channel_id=ch.id, event=event, title=title[:500], body=body, status="pending",
                attempts=0, next_attempt_at=now, created_at=now,
            )
            for ch in channels
        ]
        session.add_all(rows)
        return rows
    except Exception:  # noqa: BLE001 - by design
        log.exception("could not record notification %s", event)
        return []


def execution_finished(session: Session, ex: Execution) -> list[NotificationDelivery]:
    """Call after an execution reached a final status (in the same transaction)."""
    if ex.status == ExecutionStatus.SUCCEEDED:
        return emit(session, "execution.succeeded", execution=ex)
    if ex.status in EXECUTION_FAILED:
        return emit(session, "execution.failed", execution=ex) + emit_to_subscribers(session, ex)
    return []


# --- personal subscriptions ("notify me" on a task) -------------------------------------------

MAIL_SCHEMES = ("mailto", "mailtos")


def mail_channel(session: Session) -> NotificationChannel | None:
    """The admin's e-mail channel (the first enabled mailto:// one): its SMTP server also
    carries the subscribers' messages, each to the subscriber's own address."""
    for ch in session.execute(select(NotificationChannel).where(NotificationChannel.enabled.is_(True))
                              .order_by(NotificationChannel.id)).scalars():
        try:
            if urlsplit(channel_url(ch)).scheme in MAIL_SCHEMES:
                return ch
        except Exception:  # noqa: BLE001 - an undecryptable channel is no mail server
            continue
    return None


def to_recipient(url: str, recipient: str) -> str:
    """The channel's mailto:// URL addressed to ``recipient`` only."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() not in ("to", "cc", "bcc")]
    return urlunsplit(parts._replace(query=urlencode(query + [("to", recipient)])))


def emit_to_subscribers(session: Session, ex: Execution) -> list[NotificationDelivery]:
    """One delivery per subscriber of the failed run's task who has an e-mail address and
    may still see the task. Never raises, like ``emit``."""
    try:
        subs = session.execute(select(TaskSubscription).where(TaskSubscription.task_id == ex.task_id)).scalars().all()
        people = [s.user for s in subs if s.user.email and s.user.is_active and ex.task is not None
                  and "view" in access.task_permissions(session, s.user, ex.task)]
        channel = mail_channel(session) if people else None
        if channel is None:
            return []
        title, body = render("execution.failed", {"execution": ex})
        now = utcnow()
        rows = [NotificationDelivery(channel_id=channel.id, event="execution.failed", title=title[:500], body=body,
                                     status="pending", attempts=0, next_attempt_at=now, created_at=now,
                                     recipient=user.email) for user in people]
        session.add_all(rows)
        return rows
    except Exception:  # noqa: BLE001 - by design
        log.exception("could not record subscribers' notifications of execution %s", ex.id)
        return []


# --- delivery ----------------------------------------------------------------------------

def _send(url: str, title: str, body: str) -> tuple[bool, str | None]:
    """Send one message through Apprise; (ok, error text). Secrets are scrubbed from errors."""
    import apprise

    notifier = apprise.Apprise()
    if not notifier.add(url):
        return False, "the channel URL is not a valid Apprise URL"
    with apprise.LogCapture(level=logging.WARNING) as output:
        try:
            ok = bool(notifier.notify(title=title, body=body))
        except Exception as exc:  # noqa: BLE001 - any plugin error is a failed attempt
            ok = False
            output.write(f"{type(exc).__name__}: {exc}\n")
        captured = output.getvalue()
    if ok:
        return True, None
    error = " ".join(line.split(" - ", 2)[-1] for line in captured.strip().splitlines()[-3:]) or "delivery failed"
    parts = urlsplit(url)
    for secret in (parts.password, parts.username):
        if secret and len(secret) > 2:
            error = error.replace(secret, "****")
    return False, error[:1000]


def _claim(session: Session, delivery_id: int, now: datetime) -> bool:
    result = session.execute(
        update(NotificationDelivery)
        .where(
            NotificationDelivery.id == delivery_id,
            NotificationDelivery.status == "pending",
            NotificationDelivery.next_attempt_at <= now,
        )
        .values(next_attempt_at=now + timedelta(seconds=CLAIM_LEASE_S), attempts=NotificationDelivery.attempts + 1)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def deliver_due(session: Session, now: datetime | None = None, *, limit: int = 20) -> int:
    """Send deliveries that are due; returns how many were attempted.

    Commits per delivery: a claim first (so concurrent loops never double-send), then the
    outcome. Sending happens outside any open transaction."""
    now = now or utcnow()
    session.commit()
    ids = session.execute(
        select(NotificationDelivery.id)
        .where(NotificationDelivery.status == "pending", NotificationDelivery.next_attempt_at <= now)
        .order_by(NotificationDelivery.next_attempt_at, NotificationDelivery.id)
        .limit(limit)
    ).scalars().all()
    session.commit()
    attempted = 0
    for delivery_id in ids:
        if not _claim(session, delivery_id, now):
            continue
        attempted += 1
        row = session.get(NotificationDelivery, delivery_id, populate_existing=True)
        channel = session.get(NotificationChannel, row.channel_id) if row else None
        if row is None:
            continue
        if channel is None or not channel.enabled:
            ok, error = False, "channel disabled or deleted"
            row.attempts = MAX_ATTEMPTS
        else:
            try:
                url = channel_url(channel)
            except Exception as exc:  # noqa: BLE001 - e.g. vault key rotated away
                url, ok, error = None, False, f"cannot decrypt the channel URL: {exc}"
            session.commit()  # end the read transaction before the slow network call
            if url:
                ok, error = _send(to_recipient(url, row.recipient) if row.recipient else url, row.title, row.body)
        done = utcnow()
        if ok:
            row.status, row.sent_at, row.last_error, row.next_attempt_at = "sent", done, None, None
        else:
            row.last_error = error
            if row.attempts >= MAX_ATTEMPTS:
                row.status, row.next_attempt_at = "failed", None
                log.warning("notification %s to channel %s failed for good: %s", row.id, row.channel_id, error)
            else:
                row.next_attempt_at = done + timedelta(seconds=BACKOFF_S[min(row.attempts, len(BACKOFF_S)) - 1])
        session.commit()
    return attempted


def recent_deliveries(session: Session, channel_id: int | None = None, limit: int = 20) -> list[NotificationDelivery]:
    q = select(NotificationDelivery).order_by(NotificationDelivery.id.desc()).limit(limit)
    if channel_id is not None:
        q = q.where(NotificationDelivery.channel_id == channel_id)
    return list(session.execute(q).scalars())


# --- background loop -----------------------------------------------------------------------

_thread: threading.Thread | None = None
_stop = threading.Event()


def run_loop(app, stop: threading.Event, interval_s: float = 5.0) -> None:
    """Deliver due notifications until ``stop`` is set. Errors are logged, never fatal."""
    from server.core import db

    while not stop.is_set():
        try:
            with app.app_context():
                while deliver_due(db.session()) and not stop.is_set():
                    pass
        except Exception:  # noqa: BLE001 - keep the loop alive (database restarts, ...)
            log.exception("notification delivery loop")
            try:
                with app.app_context():
                    db.session.rollback()
                    db.session.remove()
            except Exception:  # noqa: BLE001
                pass
        stop.wait(interval_s)


def start_thread(app, interval_s: float = 5.0) -> threading.Thread:
    """Start the delivery loop once per process (daemon thread); returns it."""
    global _thread
    if _thread is None or not _thread.is_alive():
        _stop.clear()
        _thread = threading.Thread(
            target=run_loop, args=(app, _stop, interval_s), name="notifications", daemon=True
        )
        _thread.start()
    return _thread


def stop_thread(timeout_s: float = 10.0) -> None:
    _stop.set()
    if _thread is not None:
        _thread.join(timeout_s)
