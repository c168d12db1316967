"""Notifications end to end: channels through the API, events recorded in the caller's
transaction, delivery through Apprise to a real SMTP server (aiosmtpd) and a real HTTP
receiver, failures recorded and retried with backoff."""
from __future__ import annotations

import base64
import json
import socket
import threading
import time
from datetime import timedelta
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select

from server.reporting import notify
from server.core.models import AuditLog, NotificationChannel, NotificationDelivery, utcnow
from tests.reportdata import make_execution, make_task


# --- real receivers ---------------------------------------------------------------------

class Receiver:
    """A local HTTP server answering with the given statuses in turn (the last repeats)."""

    def __init__(self, statuses=(200,)):
        self.statuses = list(statuses)
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status = outer.statuses.pop(0) if len(outer.statuses) > 1 else outer.statuses[0]
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(statuses=(200,)):
        r = Receiver(statuses)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp_server():
    from aiosmtpd.controller import Controller

    class Handler:
        def __init__(self):
            self.messages = []

        async def handle_DATA(self, server, session, envelope):  # noqa: N802
            self.messages.append(envelope)
            return "250 Message accepted for delivery"

    handler = Handler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, handler
    controller.stop()


def add_channel(session, name, url, events=("execution.failed",)):
    ch = notify.create_channel(session, {"name": name, "url": url, "events": list(events)}, actor="test")
    session.commit()
    return ch


def failed_execution(session):
    task = make_task(session, "patch-kernel")
    ex = make_execution(
        session, task, "failed",
        hosts={"web-01": "succeeded", "web-02": "failed", "db-01": "unreachable"},
        errors={"web-02": "E: Unable to locate package linux-image-9.9\n", "db-01": "ssh: connect to host 10.0.0.9 port 22: No route to host"},
    )
    session.commit()
    return ex


# --- channels through the API ---------------------------------------------------------------

def test_channel_crud_encrypts_and_redacts_url(api, api_as, session):
    url = "json://bob:hunter2@127.0.0.1:9/hooks/tm?token=s3cr3t"
    status, body = api.post("/api/v1/notifications", {"name": "ops webhook", "url": url})
    assert status == 201, body
    assert body["events"] == ["execution.failed"] and body["enabled"] is True
    assert body["url"] == "json://127.0.0.1:9/…"
    for secret in ("bob", "hunter2", "s3cr3t", "hooks"):
        assert secret not in json.dumps(body)
    row = session.get(NotificationChannel, body["id"])
    assert b"hunter2" not in row.url_enc and notify.channel_url(row) == url

    status, listed = api.get("/api/v1/notifications")
    assert status == 200 and listed["total"] == 1
    assert [c["name"] for c in listed["items"]] == ["ops webhook"] and "hunter2" not in json.dumps(listed)

    status, patched = api.patch(f"/api/v1/notifications/{body['id']}",
                                {"events": ["execution.succeeded", "execution.failed"], "enabled": False})
    assert status == 200 and patched["events"] == ["execution.failed", "execution.succeeded"] and not patched["enabled"]
    # PATCH without url keeps the stored one
    session.expire_all()
    assert notify.channel_url(session.get(NotificationChannel, body["id"])) == url

    status, err = api.post("/api/v1/notifications", {"name": "bad", "url": "nonsense://x"})
    assert status == 422 and err["error"]["field"] == "url"
    status, err = api.post("/api/v1/notifications", {"name": "bad", "url": "json://h/p", "events": ["execution.exploded"]})
    assert status == 422 and err["error"]["field"] == "events"
    status, err = api.post("/api/v1/notifications", {"name": "ops webhook", "url": "json://h/p"})
    assert status == 409
    status, err = api.post("/api/v1/notifications", {"name": "x", "url": "json://h/p", "colour": "red"})
    assert status == 422
    status, err = api.post("/api/v1/notifications", ["not", "an", "object"])
    assert status == 422

    operator = api_as("olga", "operator")
    assert operator.get("/api/v1/notifications")[0] == 403
    assert operator.post("/api/v1/notifications", {"name": "x", "url": "json://h/p"})[0] == 403

    assert api.delete(f"/api/v1/notifications/{body['id']}")[0] == 204
    assert api.get(f"/api/v1/notifications/{body['id']}")[0] == 404

    actions = [a.action for a in session.execute(select(AuditLog).order_by(AuditLog.id)).scalars()]
    assert {"notification.create", "notification.update", "notification.delete"} <= set(actions)
    trail = json.dumps([a.detail for a in session.execute(select(AuditLog)).scalars()])
    assert "hunter2" not in trail and "s3cr3t" not in trail


def test_redact_hides_secrets_of_common_services():
    assert notify.redact("mailto://user:pw@smtp.example.com:587?to=a@example.com") == "mailto://smtp.example.com:587/…"
    slack = notify.redact("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#general")
    assert "TIiajkdnlazkcOXrIdevi7FQ" not in slack and "T1JJ3T3L2" not in slack and slack.startswith("slack://")


# --- emit ------------------------------------------------------------------------------------

def test_emit_records_in_the_callers_transaction(app, session):
    add_channel(session, "failures", "json://127.0.0.1:9/a")
    add_channel(session, "successes", "json://127.0.0.1:9/b", events=("execution.succeeded",))
    add_channel(session, "off", "json://127.0.0.1:9/c", events=("execution.failed",))
    session.execute(select(NotificationChannel).where(NotificationChannel.name == "off")).scalar_one().enabled = False
    session.commit()
    ex = failed_execution(session)

    rows = notify.execution_finished(session, ex)
    assert [r.channel_id for r in rows] and len(rows) == 1
    session.rollback()  # the caller's change failed: no notification either
    assert session.execute(select(NotificationDelivery)).first() is None

    rows = notify.execution_finished(session, ex)
    session.commit()
    stored = session.execute(select(NotificationDelivery)).scalars().all()
    assert len(stored) == 1 and stored[0].event == "execution.failed" and stored[0].status == "pending"

    ex.status = "succeeded"
    assert len(notify.execution_finished(session, ex)) == 1
    ex.status = "cancelled"
    assert notify.execution_finished(session, ex) == []
    # never raises, whatever it is given
    assert notify.emit(session, "no.such.event") == []
    assert notify.emit(session, "execution.failed", execution=object()) == []
    session.rollback()


def test_message_names_task_failed_hosts_errors_and_link(app, session):
    ex = failed_execution(session)
    title, body = notify.render("execution.failed", {"execution": ex})
    assert "FAILED" in title and "patch-kernel" in title and f"#{ex.id}" in title
    assert "web-02 (failed): E: Unable to locate package linux-image-9.9" in body
    assert "db-01 (unreachable): ssh: connect to host 10.0.0.9 port 22: No route to host" in body
    assert "web-01" not in body.split("Failed hosts:")[1]
    assert f"{app.config['TM'].public_url}/executions/{ex.id}" in body


def test_messages_for_approvals_and_missed_schedules(app, session, admin_user):
    from server.core.models import Schedule

    task = make_task(session, "rotate-logs")
    ex = make_execution(session, task, "waiting_approval", user=admin_user)
    ex.reason = "weekly rotation"
    sched = Schedule(task_id=task.id, task=task, cron="0 6 * * *", timezone="Europe/Paris")
    session.add(sched)
    session.flush()
    title, body = notify.render("approval.requested", {"execution": ex})
    assert "rotate-logs" in title and "needs approval" in title and "weekly rotation" in body
    assert f"/executions/{ex.id}" in body
    title, body = notify.render("approval.decided", {"execution": ex, "decision": "rejected", "approver": "carol",
                                                     "comment": "not during the freeze"})
    assert "was rejected" in title and "Approver: carol" in body and "not during the freeze" in body
    title, body = notify.render("approval.requested", {"schedule": sched})
    assert "Schedule #" in title and "rotate-logs" in title and "0 6 * * * (Europe/Paris)" in body
    title, body = notify.render("schedule.missed", {"schedule": sched, "due_at": "2026-11-23T05:00:00+00:00",
                                                    "message": "scheduler was down"})
    assert "Schedule missed: rotate-logs" in title and "2026-11-23T05:00:00+00:00" in body
    assert "scheduler was down" in body and f"/schedules/{sched.id}" in body
    session.rollback()


# --- delivery ----------------------------------------------------------------------------------

def test_webhook_delivery_to_a_real_http_receiver(app, session, receiver):
    r = receiver()
    add_channel(session, "hook", f"json://tm:hook-pass@127.0.0.1:{r.port}/incoming")
    ex = failed_execution(session)
    notify.execution_finished(session, ex)
    session.commit()

    assert notify.deliver_due(session) == 1
    assert len(r.requests) == 1
    req = r.requests[0]
    assert req["path"] == "/incoming"
    assert req["headers"]["Authorization"] == "Basic " + base64.b64encode(b"tm:hook-pass").decode()
    payload = json.loads(req["body"])
    assert "patch-kernel" in payload["title"]
    assert "web-02 (failed): E: Unable to locate package" in payload["message"]
    assert f"/executions/{ex.id}" in payload["message"]
    row = session.execute(select(NotificationDelivery)).scalar_one()
    assert row.status == "sent" and row.attempts == 1 and row.sent_at is not None and row.last_error is None
    assert notify.deliver_due(session) == 0  # nothing left


def test_email_delivery_to_a_real_smtp_server(app, session, smtp_server):
    controller, handler = smtp_server
    add_channel(session, "mail",
                f"mailto://127.0.0.1:{controller.port}/?to=ops@example.com&from=taskmanager@example.com&smtp=127.0.0.1")
    ex = failed_execution(session)
    notify.execution_finished(session, ex)
    session.commit()

    assert notify.deliver_due(session) == 1
    assert len(handler.messages) == 1
    envelope = handler.messages[0]
    assert envelope.rcpt_tos == ["ops@example.com"]
    msg = message_from_bytes(envelope.original_content)
    assert "patch-kernel" in msg["Subject"] and "FAILED" in msg["Subject"]
    part = next(p for p in msg.walk() if p.get_content_type() == "text/plain")
    text = part.get_payload(decode=True).decode()
    assert "db-01 (unreachable): ssh: connect to host 10.0.0.9 port 22: No route to host" in text
    assert f"/executions/{ex.id}" in text
    assert session.execute(select(NotificationDelivery.status)).scalar_one() == "sent"


def test_failed_send_is_recorded_and_retried_with_backoff(app, session, receiver):
    r = receiver(statuses=(500, 200))
    add_channel(session, "flaky", f"json://127.0.0.1:{r.port}/flaky")
    notify.execution_finished(session, failed_execution(session))
    session.commit()
    now = utcnow()

    assert notify.deliver_due(session, now) == 1
    row = session.execute(select(NotificationDelivery)).scalar_one()
    session.refresh(row)
    assert row.status == "pending" and row.attempts == 1 and row.last_error
    assert "500" in row.last_error
    wait = (row.next_attempt_at - now).total_seconds()
    assert notify.BACKOFF_S[0] - 1 <= wait <= notify.BACKOFF_S[0] + 60

    assert notify.deliver_due(session, now + timedelta(seconds=5)) == 0  # not due yet
    assert notify.deliver_due(session, now + timedelta(seconds=notify.BACKOFF_S[0] + 61)) == 1
    session.refresh(row)
    assert row.status == "sent" and row.attempts == 2 and row.last_error is None
    assert len(r.requests) == 2 and r.requests[0]["body"] == r.requests[1]["body"]


def test_gives_up_after_the_last_attempt(app, session):
    port = free_port()  # nothing listens: connection refused
    add_channel(session, "dead", f"json://127.0.0.1:{port}/x")
    notify.execution_finished(session, failed_execution(session))
    session.commit()
    now = utcnow()
    for _attempt in range(notify.MAX_ATTEMPTS):
        assert notify.deliver_due(session, now) == 1
        now += timedelta(seconds=notify.BACKOFF_S[-1] + notify.CLAIM_LEASE_S + 1)
    row = session.execute(select(NotificationDelivery)).scalar_one()
    session.refresh(row)
    assert row.status == "failed" and row.attempts == notify.MAX_ATTEMPTS and row.last_error
    assert notify.deliver_due(session, now) == 0


def test_background_thread_delivers(app, session, receiver):
    r = receiver()
    add_channel(session, "hook", f"json://127.0.0.1:{r.port}/bg", events=("execution.succeeded",))
    task = make_task(session)
    ex = make_execution(session, task, "succeeded")
    notify.execution_finished(session, ex)
    session.commit()
    notify.start_thread(app, interval_s=0.2)
    try:
        deadline = time.monotonic() + 15
        while not r.requests and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        notify.stop_thread()
    assert len(r.requests) == 1 and "SUCCEEDED" in json.loads(r.requests[0]["body"])["title"]


def test_notifier_command_delivers(app, session, receiver, env):
    """`flask --app wsgi notifier` as its own process (for machines without a scheduler)."""
    import os
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    r = receiver()
    add_channel(session, "hook", f"json://127.0.0.1:{r.port}/cli")
    notify.execution_finished(session, failed_execution(session))
    session.commit()
    proc = subprocess.Popen([str(repo / ".venv" / "bin" / "flask"), "--app", "wsgi", "notifier", "--interval", "0.2"],
                            cwd=repo, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not r.requests and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0]
    assert len(r.requests) == 1, out.decode()[-2000:]
    assert proc.returncode == 0, out.decode()[-2000:]
    session.expire_all()
    assert session.execute(select(NotificationDelivery.status)).scalar_one() == "sent"


def test_test_message_endpoint(api, session, receiver):
    r = receiver()
    status, ch = api.post("/api/v1/notifications", {"name": "hook", "url": f"json://127.0.0.1:{r.port}/t",
                                                    "events": ["schedule.missed"]})
    assert status == 201
    status, body = api.post(f"/api/v1/notifications/{ch['id']}/test")
    assert status == 202
    assert notify.deliver_due(session) == 1
    assert "Test notification" in json.loads(r.requests[0]["body"])["title"]
    status, deliveries = api.get(f"/api/v1/notifications/{ch['id']}/deliveries")
    assert status == 200 and deliveries[0]["status"] == "sent" and deliveries[0]["event"] == "test"
