"""Approval flows end to end through the API: levels, four eyes, rejection, expiry,
fingerprint binding (request → approval and approval → run), dry runs, schedules."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from resource_factories import credential, host, make_playbook_dir, task
from server.executions import approvals, jobs
from server.core.models import Approval, ApprovalRequest, AuditLog, Execution, Host, NotificationDelivery, Schedule, Task, utcnow


@pytest.fixture
def world(api, api_as, session):
    """An operator, three approvers on levels 1-3, and a task under approval."""
    host(api, "db1", address="127.0.0.11")
    host(api, "db2", address="127.0.0.12")
    t = task(api, "restart-db", hosts=["db1", "db2"], commands=["systemctl restart postgresql"])
    people = {name: api_as(name, role) for name, role in
              [("olga", "operator"), ("ann", "approver"), ("ben", "approver"), ("cat", "approver"),
               ("otto", "operator")]}
    status, pol = api.post("/api/v1/policies", {
        "name": "db restarts", "users": ["olga", "ann", "admin"], "tasks": ["restart-db"],
        "permissions": ["view", "execute"], "requires_approval": True, "requires_reason": True,
        "approvers": [{"user": "ann", "level": 1}, {"user": "ben", "level": 2}, {"user": "cat", "level": 3}],
        "approval_ttl_s": 3600,
    })
    assert status == 201, pol
    return {"task": t, "policy": pol, "admin": api, **people}


def request_run(client, task_id, **body):
    body.setdefault("reason", "CHG-1234 maintenance window")
    status, res = client.post(f"/api/v1/tasks/{task_id}/executions", body)
    assert status == 202, res
    return res["id"]


def test_levels_are_decided_in_order_and_the_last_one_queues(world, session):
    w = world
    ex_id = request_run(w["olga"], w["task"]["id"])
    ex = session.get(Execution, ex_id)
    assert ex.status == "waiting_approval" and ex.approval_level == 1 and ex.queued_at is None
    assert f"execution-{ex_id}" not in jobs.queue().job_ids

    # Level 2 and 3 approvers cannot jump the queue; an unrelated operator cannot decide.
    for who in ("ben", "cat", "otto"):
        status, err = w[who].post(f"/api/v1/executions/{ex_id}/approve", {})
        assert status in (403, 404), (who, err)
    status, body = w["ann"].get("/api/v1/approvals")
    assert status == 200 and [i["id"] for i in body["items"]] == [ex_id] and body["items"][0]["can_decide"]
    assert body["items"][0]["hosts"] == ["db1", "db2"] and body["items"][0]["reason"] == "CHG-1234 maintenance window"
    status, body = w["ben"].get("/api/v1/approvals")
    assert body["items"][0]["can_decide"] is False and "level 1" in body["items"][0]["why_not"]

    status, body = w["ann"].post(f"/api/v1/executions/{ex_id}/approve", {"comment": "looks fine"})
    assert status == 200 and body["status"] == "waiting_approval" and body["level"] == 2
    # One person, one level: ann cannot also approve level 2.
    status, err = w["ann"].post(f"/api/v1/executions/{ex_id}/approve", {})
    assert status == 403 and "already decided" in err["error"]["message"]
    status, body = w["ben"].post(f"/api/v1/executions/{ex_id}/approve")
    assert status == 200 and body["level"] == 3
    status, body = w["cat"].post(f"/api/v1/executions/{ex_id}/approve", {"comment": "go"})
    assert status == 200 and body["status"] == "queued"
    assert [(lv["level"], lv["decision"]["approver"]) for lv in body["levels"]] == [(1, "ann"), (2, "ben"), (3, "cat")]

    session.expire_all()
    ex = session.get(Execution, ex_id)
    assert ex.status == "queued" and ex.queued_at is not None
    assert f"execution-{ex_id}" in jobs.queue().job_ids  # enqueued once committed
    decided = session.execute(select(Approval).where(Approval.execution_id == ex_id).order_by(Approval.level)).scalars().all()
    assert [(a.level, a.approver.username, a.decision, a.fingerprint) for a in decided] == [
        (1, "ann", "approved", ex.fingerprint), (2, "ben", "approved", ex.fingerprint),
        (3, "cat", "approved", ex.fingerprint)]
    actions = session.execute(select(AuditLog.action, AuditLog.actor).where(AuditLog.target_id == str(ex_id),
                                                                             AuditLog.target_type == "execution")).all()
    assert ("execution.request", "olga") in actions and ("approval.approve", "cat") in actions
    assert approvals.verify_before_run(session, ex) is None
    # Deciding a finished request is a conflict, not a second approval.
    assert w["cat"].post(f"/api/v1/executions/{ex_id}/approve")[0] == 409


def test_nobody_approves_their_own_request_not_even_an_admin(world, session):
    w = world
    ex_id = request_run(w["admin"], w["task"]["id"])  # admin is one of the policy's users
    assert session.get(Execution, ex_id).status == "waiting_approval"
    # Admins may stand in for any level of someone else's request, but never their own.
    status, err = w["admin"].post(f"/api/v1/executions/{ex_id}/approve", {"comment": "me"})
    assert status == 403 and "own request" in err["error"]["message"]
    assert session.execute(select(Approval).where(Approval.execution_id == ex_id)).first() is None
    denied = session.execute(select(AuditLog).where(AuditLog.action == "approval.approve")).first()
    assert denied is None
    # The approver who requests a run cannot approve it either.
    ex2 = request_run(w["ann"], w["task"]["id"])
    status, err = w["ann"].post(f"/api/v1/executions/{ex2}/approve")
    assert status == 403 and "own request" in err["error"]["message"]
    status, err = w["ann"].post(f"/api/v1/executions/{ex2}/reject")
    assert status == 403
    # ...while an admin may decide ann's level 1 (break glass, audited under the admin's name).
    status, body = w["admin"].post(f"/api/v1/executions/{ex2}/approve", {"comment": "covering for ann"})
    assert status == 200 and body["level"] == 2


def test_rejection_ends_the_request(world, session):
    w = world
    ex_id = request_run(w["olga"], w["task"]["id"])
    assert w["ann"].post(f"/api/v1/executions/{ex_id}/approve")[0] == 200
    status, body = w["ben"].post(f"/api/v1/executions/{ex_id}/reject", {"comment": "not during business hours"})
    assert status == 200 and body["status"] == "rejected"
    session.expire_all()
    ex = session.get(Execution, ex_id)
    assert ex.status == "rejected" and ex.finished_at is not None and "not during business hours" in ex.message
    assert w["cat"].post(f"/api/v1/executions/{ex_id}/approve")[0] == 409
    assert f"execution-{ex_id}" not in jobs.queue().job_ids
    status, mine = w["olga"].get("/api/v1/approvals?scope=mine&status=decided")
    assert [i["status"] for i in mine["items"]] == ["rejected"]


def test_comment_and_input_validation(world):
    w = world
    ex_id = request_run(w["olga"], w["task"]["id"])
    assert w["ann"].post(f"/api/v1/executions/{ex_id}/approve", {"comment": 5})[0] == 422
    assert w["ann"].post(f"/api/v1/executions/{ex_id}/approve", {"comment": "x" * 2001})[0] == 422
    assert w["ann"].post(f"/api/v1/executions/{ex_id}/approve", {"decision": "yes"})[0] == 422
    assert w["ann"].post(f"/api/v1/executions/{ex_id}/approve", [1, 2])[0] == 422
    assert w["ann"].get("/api/v1/approvals?status=bogus")[0] == 422
    assert w["ann"].get("/api/v1/approvals?scope=all")[0] == 403
    assert w["ann"].post("/api/v1/executions/999999/approve")[0] == 404
    # A reason is required by this policy.
    status, err = w["olga"].post(f"/api/v1/tasks/{w['task']['id']}/executions", {})
    assert status == 422 and err["error"]["field"] == "reason"


def test_requests_expire_lazily_and_by_the_sweep(world, session):
    w = world
    first = request_run(w["olga"], w["task"]["id"])
    second = request_run(w["olga"], w["task"]["id"])
    ex = session.get(Execution, first)
    assert timedelta(seconds=3590) < ex.approval_expires_at - ex.created_at <= timedelta(seconds=3600)
    # Lazily: the approver acts after the deadline.
    session.execute(ApprovalRequest.__table__.update().where(ApprovalRequest.execution_id == first)
                    .values(expires_at=utcnow() - timedelta(seconds=1)))
    session.commit()
    session.expire_all()  # the test shares the request's session
    status, err = w["ann"].post(f"/api/v1/executions/{first}/approve")
    assert status == 409 and err["error"]["code"] == "expired"
    session.expire_all()
    assert session.get(Execution, first).status == "expired"
    # By the periodic sweep: nothing is due now, everything is due in two hours.
    assert approvals.expire_due(session) == 0
    assert approvals.expire_due(session, utcnow() + timedelta(hours=2)) == 1
    session.commit()
    session.expire_all()
    ex2 = session.get(Execution, second)
    assert ex2.status == "expired" and ex2.finished_at is not None and "no decision before" in ex2.message
    rows = session.execute(select(AuditLog).where(AuditLog.action == "approval.expire")).scalars().all()
    assert sorted(int(r.target_id) for r in rows) == [first, second] and {r.actor for r in rows} == {"system"}
    assert w["ann"].get("/api/v1/approvals")[1]["items"] == []


def test_fingerprint_change_between_request_and_approval_refuses(world, session, api):
    w = world
    ex_id = request_run(w["olga"], w["task"]["id"])
    assert w["ann"].post(f"/api/v1/executions/{ex_id}/approve")[0] == 200
    # The task's commands change while the request waits at level 2.
    status, _ = api.patch(f"/api/v1/tasks/{w['task']['id']}", {"commands": ["rm -rf /var/lib/postgresql"]})
    assert status == 200
    status, err = w["ben"].post(f"/api/v1/executions/{ex_id}/approve")
    assert status == 409 and err["error"]["code"] == "refused"
    assert err["error"]["message"] == ("refused: commands changed since the request was made; "
                                       "request the run again for a new approval")
    session.expire_all()
    ex = session.get(Execution, ex_id)
    assert ex.status == "failed" and ex.message == err["error"]["message"]
    assert f"execution-{ex_id}" not in jobs.queue().job_ids

    # A target host's address changes: named as such.
    ex_id = request_run(w["olga"], w["task"]["id"])
    db1 = session.execute(select(Host).where(Host.name == "db1")).scalar_one()
    assert api.patch(f"/api/v1/hosts/{db1.id}", {"address": "10.9.9.9"})[0] == 200
    status, err = w["ann"].post(f"/api/v1/executions/{ex_id}/approve")
    assert status == 409 and "target hosts changed" in err["error"]["message"]


def test_fingerprint_change_between_approval_and_run_refuses(world, session, api):
    w = world
    cred = credential(api, "dbadmin")
    assert api.patch(f"/api/v1/tasks/{w['task']['id']}", {"credential": "dbadmin"})[0] == 200
    ex_id = request_run(w["olga"], w["task"]["id"], vars={"service": "postgresql"})
    for who in ("ann", "ben", "cat"):
        assert w[who].post(f"/api/v1/executions/{ex_id}/approve")[0] == 200
    session.expire_all()
    ex = session.get(Execution, ex_id)
    assert ex.status == "queued" and approvals.verify_before_run(session, ex) is None
    # The credential's secret is rotated after the approval: the worker must refuse.
    assert api.patch(f"/api/v1/credentials/{cred['id']}", {"secret": "another-secret"})[0] == 200
    session.expire_all()
    ex = session.get(Execution, ex_id)
    reason = approvals.verify_before_run(session, ex)
    assert reason and "credential changed" in reason and "new approval" in reason
    approvals.refuse(session, ex, reason)
    session.commit()
    ex = session.get(Execution, ex_id)
    assert ex.status == "failed" and ex.message == reason
    assert session.execute(select(AuditLog).where(AuditLog.action == "execution.refused")).scalar_one().target_id == str(ex_id)


def test_run_time_check_also_refuses_forged_status(world, session):
    """A waiting request flipped to queued in the database (no approvals) does not run."""
    w = world
    ex_id = request_run(w["olga"], w["task"]["id"])
    session.execute(Execution.__table__.update().where(Execution.id == ex_id).values(status="queued"))
    session.commit()
    session.expire_all()
    reason = approvals.verify_before_run(session, session.get(Execution, ex_id))
    assert reason and "lacks approval for level(s) 1, 2, 3" in reason


def test_unbound_runs_are_not_checked(api, session):
    host(api, "free1")
    t = task(api, "free-task", hosts=["free1"])
    status, body = api.post(f"/api/v1/tasks/{t['id']}/executions", {})
    assert status == 202 and body["status"] == "queued"
    status, dry = api.post(f"/api/v1/tasks/{t['id']}/executions", {"dry_run": True})  # check mode for any run
    assert status == 202 and session.get(Execution, dry["id"]).check_mode
    ex = session.get(Execution, body["id"])
    api.patch(f"/api/v1/tasks/{t['id']}", {"commands": ["hostname"]})
    assert approvals.verify_before_run(session, ex) is None


def test_dry_run_for_the_approver(world, api, app, tmp_path, session):
    w = world
    make_playbook_dir(app, tmp_path)
    status, t = api.post("/api/v1/tasks", {"name": "site", "kind": "playbook", "playbook": "site.yml",
                                           "hosts": ["db1", "db2"]})
    assert status == 201, t
    assert api.patch(f"/api/v1/policies/{w['policy']['id']}", {"tasks": ["restart-db", "site"]})[0] == 200
    # A commands task has no check mode worth showing.
    assert w["olga"].post(f"/api/v1/tasks/{w['task']['id']}/executions",
                          {"reason": "x", "dry_run": True})[0] == 422
    assert w["olga"].post(f"/api/v1/tasks/{t['id']}/executions", {"reason": "x", "dry_run": "yes"})[0] == 422
    ex_id = request_run(w["olga"], t["id"], dry_run=True)
    dry = session.execute(select(Execution).where(Execution.parent_id == ex_id)).scalar_one()
    assert dry.check_mode and dry.trigger == "dry_run" and dry.status == "queued"
    assert dry.fingerprint == session.get(Execution, ex_id).fingerprint
    assert f"execution-{dry.id}" in jobs.queue().job_ids and f"execution-{ex_id}" not in jobs.queue().job_ids
    status, item = w["ann"].get(f"/api/v1/executions/{ex_id}/approval")
    assert status == 200 and item["dry_run"]["id"] == dry.id and item["dry_run"]["status"] == "queued"
    # The approver may ask again; while one is queued the same one is returned.
    status, again = w["ann"].post(f"/api/v1/executions/{ex_id}/dry-run")
    assert status == 202 and again["id"] == dry.id
    # Someone unrelated may not.
    assert w["otto"].post(f"/api/v1/executions/{ex_id}/dry-run")[0] == 404
    # The approval covers every file the run can read: a filter plugin added after it → refused.
    plugin = app.config["TM"].playbook_dir / "filter_plugins" / "evil.py"
    plugin.parent.mkdir()
    plugin.write_text("import os\n")
    assert approvals.verify_before_run(session, dry) == \
        "refused: project files changed since it was approved; a new approval is needed"
    plugin.unlink()
    assert approvals.verify_before_run(session, dry) is None
    # The dry run is bound too: the playbook changes → refused at run time.
    (app.config["TM"].playbook_dir / "site.yml").write_text("- hosts: all\n  tasks:\n    - ansible.builtin.shell: reboot\n")
    reason = approvals.verify_before_run(session, dry)
    assert reason and "playbook content changed" in reason


def test_policy_approvers_notified(world, api, session):
    """If a channel subscribes to approval.requested, requests and level changes record deliveries."""
    status, ch = api.post("/api/v1/notifications", {"name": "approvers", "url": "json://127.0.0.1:9/hook",
                                                    "events": ["approval.requested", "approval.decided"]})
    assert status == 201, ch
    ex_id = request_run(world["olga"], world["task"]["id"])
    assert world["ann"].post(f"/api/v1/executions/{ex_id}/reject", {"comment": "no"})[0] == 200
    events = session.execute(select(NotificationDelivery.event, NotificationDelivery.title)).all()
    assert [e for e, _ in events] == ["approval.requested", "approval.decided"]
    assert all(f"#{ex_id}" in title for _, title in events)


def _schedule(session, task_id: int, creator) -> Schedule:
    sch = Schedule(task_id=task_id, cron="0 6 * * *", timezone="Europe/Berlin", created_by_id=creator.id, vars={})
    session.add(sch)
    session.flush()
    return sch


def test_schedule_needs_one_approval_and_is_suspended_when_the_task_changes(world, api, session):
    w = world
    task_row = session.get(Task, w["task"]["id"])
    from server.core.models import User

    olga = session.execute(select(User).where(User.username == "olga")).scalar_one()
    assert approvals.schedule_requires_approval(session, task_row)
    sch = _schedule(session, task_row.id, olga)
    assert approvals.request_schedule_approval(session, sch, olga) is True
    session.commit()
    assert sch.approval_status == "pending"
    reason = approvals.check_schedule_fire(session, sch)
    assert reason and "pending" in reason

    status, inbox = w["ann"].get("/api/v1/approvals")
    assert [(i["kind"], i["id"]) for i in inbox["items"]] == [("schedule", sch.id)]
    assert w["olga"].post(f"/api/v1/schedules/{sch.id}/approve")[0] in (403, 404)  # own request
    assert w["ben"].post(f"/api/v1/schedules/{sch.id}/approve")[0] == 403  # level 1 comes first
    for who in ("ann", "ben"):
        status, body = w[who].post(f"/api/v1/schedules/{sch.id}/approve", {})
        assert status == 200 and body["status"] == "pending", body
    status, body = w["cat"].post(f"/api/v1/schedules/{sch.id}/approve", {"comment": "ok daily"})
    assert status == 200 and body["status"] == "approved"
    session.expire_all()
    sch = session.get(Schedule, sch.id)
    assert sch.approval_status == "approved" and sch.approved_fingerprint
    assert approvals.check_schedule_fire(session, sch) is None

    # A run the scheduler creates carries the approved fingerprint and passes the run-time check.
    from server.executions.request import request_execution

    ex = request_execution(session, sch.task, None, run_vars=sch.vars, trigger="schedule", schedule_id=sch.id,
                           scheduled_for=utcnow(), enqueue=False)
    session.commit()
    assert ex.fingerprint == sch.approved_fingerprint and approvals.verify_before_run(session, ex) is None

    # The task changes: the queued run is refused and the schedule suspended until re-approved.
    assert api.patch(f"/api/v1/tasks/{task_row.id}", {"timeout_s": 60})[0] == 200
    session.expire_all()
    ex = session.get(Execution, ex.id)
    reason = approvals.verify_before_run(session, ex)
    assert reason and "task definition changed" in reason
    session.commit()
    sch = session.get(Schedule, sch.id)
    assert sch.suspended_reason and sch.approval_status == "pending"
    reason = approvals.check_schedule_fire(session, sch)
    assert reason and "suspended" in reason
    for who in ("ann", "ben", "cat"):
        assert w[who].post(f"/api/v1/schedules/{sch.id}/approve")[0] == 200
    session.expire_all()
    sch = session.get(Schedule, sch.id)
    assert sch.approval_status == "approved" and sch.suspended_reason is None
    assert approvals.check_schedule_fire(session, sch) is None
    actions = [a for (a,) in session.execute(select(AuditLog.action).where(AuditLog.target_type == "schedule"))]
    assert actions.count("schedule.approve") == 6 and "schedule.suspend" in actions


def test_schedule_rejected_and_fire_check_without_approval(world, api, session):
    from server.core.models import User

    olga = session.execute(select(User).where(User.username == "olga")).scalar_one()
    sch = _schedule(session, world["task"]["id"], olga)
    approvals.request_schedule_approval(session, sch, olga)
    session.commit()
    status, body = world["ann"].post(f"/api/v1/schedules/{sch.id}/reject", {"comment": "too often"})
    assert status == 200 and body["status"] == "rejected"
    session.expire_all()
    sch = session.get(Schedule, sch.id)
    assert "rejected" in approvals.check_schedule_fire(session, sch)
    # A task under no approval policy: schedules fire freely and need nothing.
    host(api, "free2")
    t = task(api, "free", hosts=["free2"])
    free = _schedule(session, t["id"], olga)
    assert approvals.request_schedule_approval(session, free, olga) is False
    assert approvals.check_schedule_fire(session, free) is None
    # A schedule made before a policy put its task under approval: the next fire asks for it.
    assert api.patch(f"/api/v1/policies/{world['policy']['id']}", {"tasks": ["restart-db", "free"]})[0] == 200
    session.expire_all()
    free = session.get(Schedule, free.id)
    reason = approvals.check_schedule_fire(session, free)
    assert reason and "needs approval" in reason and free.approval_status == "pending"


def test_unchanged_task_keeps_its_fingerprint(world, session):
    """The snapshot taken at request time is reproducible: no false "changed" refusals."""
    ex_id = request_run(world["olga"], world["task"]["id"], vars={"b": 2, "a": [1, {"x": None}]})
    ex = session.get(Execution, ex_id)
    snap = approvals.current_snapshot(session, ex.task, ex.vars, ex.limit_hosts)
    assert snap.error is None and snap.fingerprint == ex.fingerprint and snap.parts == ex.approval.parts
    assert approvals.explain_change(ex.approval.parts, snap.parts).startswith("the task definition")


def test_reading_an_execution_expires_an_overdue_request(world, session):
    w = world
    ex_id = request_run(w["olga"], w["task"]["id"])
    session.execute(ApprovalRequest.__table__.update().where(ApprovalRequest.execution_id == ex_id)
                    .values(expires_at=utcnow() - timedelta(minutes=5)))
    session.commit()
    session.expire_all()
    status, body = w["olga"].get(f"/api/v1/executions/{ex_id}")
    assert status == 200 and body["status"] == "expired" and "no decision before" in body["message"]
    later = request_run(w["olga"], w["task"]["id"])
    session.execute(ApprovalRequest.__table__.update().where(ApprovalRequest.execution_id == later)
                    .values(expires_at=utcnow() - timedelta(seconds=1)))
    session.commit()
    session.expire_all()
    status, page = w["olga"].get("/api/v1/executions?status=waiting_approval")
    assert status == 200 and page["items"] == []


def test_two_approvers_at_once_decide_a_level_only_once(api, api_as, app, session):
    """Two approvers of the same level press Approve together: one wins, the other gets a conflict."""
    import threading

    from server.core import db
    from server.core.errors import ApiError
    from server.core.models import User

    host(api, "c1")
    t = task(api, "race", hosts=["c1"])
    op = api_as("op", "operator")
    api_as("a1", "approver")
    api_as("a2", "approver")
    assert api.post("/api/v1/policies", {"name": "race", "users": ["op"], "tasks": ["race"],
                                         "requires_approval": True,
                                         "approvers": [{"user": "a1", "level": 1}, {"user": "a2", "level": 1},
                                                       {"user": "admin", "level": 2}]})[0] == 201
    ex_id = request_run(op, t["id"])
    barrier = threading.Barrier(2)
    results: dict[str, str] = {}

    def press(name: str) -> None:
        with app.app_context():
            s = db.session()
            try:
                user = s.execute(select(User).where(User.username == name)).scalar_one()
                ex = s.get(Execution, ex_id)
                barrier.wait(10)
                approvals.decide(s, ex, user, "approved")
                s.commit()
                results[name] = "ok"
            except ApiError as err:
                s.rollback()
                results[name] = f"{err.status}"
            finally:
                db.session.remove()

    threads = [threading.Thread(target=press, args=(n,)) for n in ("a1", "a2")]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert sorted(results.values()) == ["409", "ok"], results
    session.expire_all()
    ex = session.get(Execution, ex_id)
    assert ex.status == "waiting_approval" and ex.approval_level == 2  # level 2 was not skipped
    assert len(session.execute(select(Approval).where(Approval.execution_id == ex_id)).scalars().all()) == 1


def test_scheduler_fires_a_schedule_only_once_it_is_approved(world, api, session):
    """Through the API and the real scheduler tick: a schedule on a task under approval is
    recorded as suspended until approved, then fires with the approved fingerprint."""
    from datetime import datetime, timezone

    from server.scheduling import scheduler
    from server.core.models import ScheduleFire

    status, sch = api.post(f"/api/v1/tasks/{world['task']['id']}/schedules",
                           {"cron": "0 6 * * *", "timezone": "UTC"})
    assert status == 201, sch
    session.expire_all()
    row = session.get(Schedule, sch["id"])
    assert row.approval_status == "pending"

    def fire_at(day: int):
        due = datetime(2030, 1, day, 6, 0, tzinfo=timezone.utc)
        row = session.get(Schedule, sch["id"])
        row.next_fire_at = due
        session.commit()
        scheduler.tick(session, due)
        session.expire_all()
        return session.execute(select(ScheduleFire).where(ScheduleFire.schedule_id == sch["id"],
                                                          ScheduleFire.due_at == due)).scalar_one()

    first = fire_at(1)
    assert first.outcome == "suspended" and first.execution_id is None and "pending" in first.detail
    for who in ("ann", "ben", "cat"):
        assert world[who].post(f"/api/v1/schedules/{sch['id']}/approve")[0] == 200
    second = fire_at(2)
    assert second.outcome == "fired" and second.execution_id
    ex = session.get(Execution, second.execution_id)
    assert ex.trigger == "schedule" and ex.status == "queued"
    assert ex.fingerprint == session.get(Schedule, sch["id"]).approved_fingerprint
