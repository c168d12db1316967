"""What the analyst reads, without a browser: output kept and served by offset, colours
rendered or stripped, the audit trail in words, copying a task, and rates that ignore
cancelled runs."""
from __future__ import annotations

import json
from datetime import timedelta
from types import SimpleNamespace

from sqlalchemy import select

from server.core import audit
from server.core.models import Operation, Step, utcnow
from server.reporting import output, reports
from server.runs.recorder import Recorder
from tests.test_robustness_reaper import make_execution, make_task
from tests.test_notify import smtp_server  # noqa: F401  (fixture)
from tests.test_web_resources import Browser


def progress(index: int, **fields) -> dict:
    line = json.dumps({"index": index, "host": "r1", **fields})
    return {"event": "verbose", "stdout": f"P {line}"}


def test_running_output_is_recorded_as_it_comes_and_kept_on_cancel(session):
    task = make_task(session, "rec", hosts=("r1",))
    ex = make_execution(session, task, "running", started_at=utcnow())
    op = Operation(execution_id=ex.id, host_name="r1", status="pending")
    session.add(op)
    session.commit()
    rec = Recorder(session, ex, {"r1": op}, {"r1": "r1"}, commands=["slow", "never"], progress="P")
    rec.event_handler({"event": "runner_on_start", "event_data": {"host": "r1"}})
    rec.event_handler(progress(0, status="running", stdout="line-1\n"))
    rec.event_handler(progress(0, status="running", stdout="\x1b[32mline-2\x1b[0m\n", stderr="warn\n"))
    rec.flush()
    (step,) = session.execute(select(Step).where(Step.operation_id == op.id)).scalars()
    assert step.status == "running" and step.stdout == "line-1\n\x1b[32mline-2\x1b[0m\n" and step.stderr == "warn\n"

    result = rec.finish(SimpleNamespace(canceled=True, timed_out=False, rc=-15), 60)
    assert result.status == "cancelled"
    assert step.status == "cancelled" and "line-2" in step.stdout
    assert "line-1" in op.stdout and "line-2" in op.stdout and op.stderr == "warn\n"  # partial output stays


def test_failed_command_message_is_its_error_and_nothing_changed(session):
    task = make_task(session, "rec-fail", hosts=("r1",))
    ex = make_execution(session, task, "running", started_at=utcnow())
    op = Operation(execution_id=ex.id, host_name="r1", status="pending")
    session.add(op)
    session.commit()
    rec = Recorder(session, ex, {"r1": op}, {"r1": "r1"}, commands=["df -h /data | grep -q ok"], progress="P")
    rec.event_handler({"event": "runner_on_start", "event_data": {"host": "r1"}})
    rec.event_handler(progress(0, status="failed", rc=2, stdout="", stderr="df: /data: No such file\n",
                               start=1.0, end=2.0))
    assert op.message == "df: /data: No such file (command 1: non-zero return code 2)"
    assert "grep" not in op.message  # not the command line
    rec.event_handler(progress(0, status="succeeded", rc=0, stdout="", stderr="", start=1.0, end=2.0))
    (step,) = op.steps
    assert step.changed is False


def test_output_slices_by_offset_in_whole_lines():
    text = "a\n\x1b[1;31mb\nc"
    first = output.slice_from(text, 0, running=True)
    assert first.text == "a\n\x1b[1;31mb\n" and first.next_offset == len("a\n\x1b[1;31mb\n")
    assert first.html == 'a\n<span class="ansi-bold ansi-fg-red">b\n</span>'
    rest = output.slice_from(text, first.next_offset, running=False)
    assert rest.text == "c" and rest.html == '<span class="ansi-bold ansi-fg-red">c</span>'  # style carried over
    assert output.slice_from(text, first.next_offset, running=True).text == ""  # half a line waits
    assert output.strip("\x1b[1;32mok\x1b[0m \x1b]0;t\x07done") == "ok done"  # noqa: B005 (output.strip removes escape codes, not characters)
    assert output.to_html("<b>&") == "&lt;b&gt;&amp;"
    shown, hidden = output.tail("".join(f"{i}\n" for i in range(250)))
    assert hidden == 50 and shown.startswith("50\n")


def test_step_output_api_and_pages(api, app, session, admin_user):
    task = make_task(session, "out", hosts=("o1",))
    ex = make_execution(session, task, "running", started_at=utcnow())
    op = Operation(execution_id=ex.id, host_name="o1", status="running")
    session.add(op)
    session.flush()
    step = Step(operation_id=op.id, seq=1, name="command 1: x", status="running", changed=False,
                stdout="one\n\x1b[31mtwo\x1b[0m\nthr", stderr="")
    session.add(step)
    session.commit()
    status, body = api.get(f"/api/v1/executions/{ex.id}/steps/{step.id}/output?stdout_offset=4")
    assert status == 200 and body["stdout"] == {"text": "\x1b[31mtwo\x1b[0m\n", "next_offset": 17}
    assert body["status"] == "running" and body["stderr"] == {"text": "", "next_offset": 0}
    status, err = api.get(f"/api/v1/executions/{ex.id}/steps/{step.id}/output?stdout_offset=-1")
    assert status == 422 and err["error"]["field"] == "stdout_offset"
    assert api.get(f"/api/v1/executions/{ex.id}/steps/{step.id + 1}/output")[0] == 404

    web = Browser(app, "admin")
    status, page = web.get(f"/executions/{ex.id}")
    assert status == 200 and 'class="output live"' in page and '<span class="ansi-fg-red">two</span>' in page
    assert "\x1b" not in page
    status, live = web.get(f"/executions/{ex.id}/live?tail={step.id}:4:0")
    (tail,) = json.loads(live)["tails"]
    assert tail["stdout"] == {"html": '<span class="ansi-fg-red">two</span>\n', "next_offset": 17}
    resp = web.client.get(f"/executions/{ex.id}/steps/{step.id}/output?stream=stdout&download=1")
    assert resp.status_code == 200 and resp.get_data(as_text=True) == "one\ntwo\nthr"
    assert "attachment" in resp.headers["Content-Disposition"]


def test_audit_rows_name_their_targets_and_a_word_finds_its_actions(app, session, admin_user):
    audit.record(session, "approval.decide", actor="admin", target=admin_user, level=1, hosts=["a", "b"])
    session.commit()
    web = Browser(app, "admin")
    status, page = web.get("/audit?action=approval")
    assert status == 200 and "approval.decide" in page
    assert f"user {admin_user.id}" not in page and ">admin<" in page.replace("\n", "")
    assert "<dt>hosts</dt><dd>a, b</dd>" in page and '{"hosts"' not in page


def test_copy_task_opens_a_filled_new_task_form(app, session, admin_user):
    task = make_task(session, "nightly", hosts=("c1", "c2"))
    web = Browser(app, "admin")
    status, page = web.get(f"/tasks/{task.id}")
    assert f"/tasks/new?copy={task.id}" in page
    status, form = web.get(f"/tasks/new?copy={task.id}")
    assert status == 200 and 'value="Copy of nightly"' in form and "true</textarea>" in form
    assert web.get("/tasks/new?copy=999999")[0] == 404


def test_cancelled_runs_do_not_count_as_failures(session):
    task = make_task(session, "cancel-only", hosts=("k1",))
    now = utcnow()
    make_execution(session, task, "cancelled", started_at=now, finished_at=now)
    (row,) = reports.task_success(session, None, now - timedelta(days=1))
    assert row["runs"] == 1 and row["rate"] is None


def test_bulk_host_actions(app, session, admin_user):
    from server.core.models import Host
    from tests.conftest import make_user

    make_task(session, "uses-b1", hosts=("b1", "b2", "b3"))
    ids = {h.name: h.id for h in session.execute(select(Host)).scalars()}
    web = Browser(app, "admin")
    status, _, where = web.submit("/hosts", "/hosts/selected", {"action": "group", "group": "web",
                                                          "host": [str(ids["b1"]), str(ids["b2"])]})
    assert status == 302
    session.expire_all()
    assert [g.name for g in session.get(Host, ids["b1"]).groups] == ["web"]
    assert session.get(Host, ids["b3"]).groups == []
    status, _, _ = web.submit("/hosts", "/hosts/selected", {"action": "group", "group": "bad name!",
                                                      "host": [str(ids["b1"])]})
    assert "web" in [g.name for g in session.get(Host, ids["b1"]).groups]
    assert "group name must start with a letter" in web.get("/hosts")[1]

    status, _, _ = web.submit("/hosts", "/hosts/selected", {"action": "delete",
                                                      "host": [str(ids["b2"]), str(ids["b3"])]})
    session.expire_all()
    assert status == 302 and session.get(Host, ids["b2"]) is None and session.get(Host, ids["b3"]) is None
    assert "Deleted 2 hosts" in web.get("/hosts")[1]
    assert web.submit("/hosts", "/hosts/selected", {"action": "delete", "host": ["99999"]})[0] == 302
    assert "host 99999 does not exist" in web.get("/hosts")[1]

    make_user(session, "opal", "operator")
    operator = Browser(app, "opal")
    status, _, _ = operator.submit("/hosts", "/hosts/selected", {"action": "delete", "host": [str(ids["b1"])]})
    assert status == 403 and session.get(Host, ids["b1"]) is not None


def test_dashboard_upcoming_runs_and_recent_failures_and_task_next_run(app, session, admin_user):
    from server.core.models import Schedule

    task = make_task(session, "daily-restart", hosts=("d1",))
    now = utcnow()
    session.add(Schedule(task_id=task.id, task=task, cron="0 6 * * *", timezone="Europe/Paris", vars={},
                         next_fire_at=now + timedelta(hours=3)))
    failed = make_execution(session, task, "failed", started_at=now, finished_at=now, message="1 failed of 1 hosts")
    session.commit()
    web = Browser(app, "admin")
    status, page = web.get("/dashboard")
    assert status == 200
    upcoming = page.split('id="upcoming"')[1].split("</section>")[0]
    assert "daily-restart" in upcoming and "<time datetime=" in upcoming
    failures = page.split('id="recent-failures"')[1].split("</section>")[0]
    assert f"#{failed.id}" in failures and "1 failed of 1 hosts" in failures
    status, page = web.get(f"/tasks/{task.id}")
    next_run = page.split('id="next-run"')[1].split("</dd>")[0]
    assert "<time datetime=" in next_run and "not scheduled" not in next_run


def test_operator_subscribes_to_a_task_and_gets_its_failures_by_email(app, session, admin_user, smtp_server):  # noqa: F811
    from email import message_from_bytes

    from server.core.models import Policy, TaskSubscription
    from server.reporting import notify
    from tests.conftest import make_user

    controller, handler = smtp_server
    notify.create_channel(session, {"name": "mail", "events": ["execution.succeeded"],
                                    "url": f"mailto://127.0.0.1:{controller.port}/?to=ops@example.com"
                                           "&from=tm@example.com&smtp=127.0.0.1"}, actor="test")
    task = make_task(session, "backup-db", hosts=("s1",))
    hidden = make_task(session, "secret-task", hosts=("s1",))
    olaf = make_user(session, "olaf", "operator")
    olaf.email = "olaf@example.com"
    session.add(Policy(name="olaf-sees-backup", permissions=["view"], users=[olaf], tasks=[task]))
    session.commit()

    web = Browser(app, "olaf")
    status, page = web.get(f"/tasks/{task.id}")
    assert status == 200 and "Notify me of failures" in page
    status, _, _ = web.submit(f"/tasks/{task.id}", f"/tasks/{task.id}/subscription", {"on": "1"})
    assert status == 302 and "Stop notifying me" in web.get(f"/tasks/{task.id}")[1]
    assert web.submit(f"/tasks/{task.id}", f"/tasks/{hidden.id}/subscription", {"on": "1"})[0] == 404
    assert session.execute(select(TaskSubscription.task_id)).scalars().all() == [task.id]

    now = utcnow()
    ex = make_execution(session, task, "failed", started_at=now, finished_at=now, message="1 failed of 1 hosts")
    assert len(notify.execution_finished(session, ex)) == 1  # the channel itself only wants successes
    session.commit()
    assert notify.deliver_due(session) == 1
    (envelope,) = handler.messages
    assert envelope.rcpt_tos == ["olaf@example.com"]  # his address, not the channel's
    assert "backup-db" in message_from_bytes(envelope.original_content)["Subject"]

    status, _, _ = web.submit(f"/tasks/{task.id}", f"/tasks/{task.id}/subscription", {"on": ""})
    assert session.execute(select(TaskSubscription)).first() is None
