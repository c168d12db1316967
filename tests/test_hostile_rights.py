"""Hostile users and who may do what: approval belongs to the task, ``edit`` stays within the
editor's rights, ``local`` hosts are admin-only targets, schedules keep their owner's rights,
and relaunch reveals nothing about executions one may not see.

Everything goes through the real app: the JSON API, the web forms and the scheduler tick.
"""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from flask import g
from flask.testing import FlaskClient
from sqlalchemy import select

from resource_factories import credential, csrf_token, host, make_playbook_dir, task
from server.executions import approvals
from server.scheduling import scheduler
from server.core.errors import ValidationError
from server.executions.request import request_execution
from server.core.models import AuditLog, Execution, Schedule, ScheduleFire, Task, User

U = timezone.utc


class IsolatedClient(FlaskClient):
    """The tests keep one app context open: drop flask-login's and flask-wtf's per-request
    caches so that one browser's user and CSRF token never leak into another's request."""

    def open(self, *args, **kwargs):
        for key in ("_login_user", "csrf_token"):
            g.pop(key, None)
        return super().open(*args, **kwargs)


def browser(app, username: str):
    from conftest import ADMIN_PASSWORD

    app.test_client_class = IsolatedClient
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    resp = client.post("/login", data={"username": username, "password": ADMIN_PASSWORD,
                                       "csrf_token": csrf_token(page)})
    assert resp.status_code == 302, resp.data
    return client


def post_form(client, page: str, action: str, data: dict):
    token = csrf_token(client.get(page).get_data(as_text=True))
    return client.post(action, data={"csrf_token": token, **data})


def audit_actions(session, action: str) -> list[AuditLog]:
    return list(session.execute(select(AuditLog).where(AuditLog.action == action).order_by(AuditLog.id)).scalars())


# ---------------------------------------------------------------- approval belongs to the task


@pytest.fixture
def gated(api, api_as, session):
    """A task under an approval policy that names neither the admin nor the author."""
    host(api, "pay1", address="127.0.0.21")
    t = task(api, "payroll", hosts=["pay1"], commands=["run-payroll"])
    people = {name: api_as(name, role) for name, role in
              [("alice", "author"), ("ann", "approver"), ("olga", "operator"), ("admin2", "admin")]}
    status, pol = api.post("/api/v1/policies", {
        "name": "payroll needs approval", "users": ["olga"], "tasks": ["payroll"],
        "permissions": ["view", "execute"], "requires_approval": True,
        "approvers": [{"user": "ann", "level": 1}],
    })
    assert status == 201, pol
    return {"task": t, "policy": pol, "admin": api, **people}


def test_admin_and_author_requests_wait_for_approval_like_anyone_elses(gated, session):
    tid = gated["task"]["id"]
    for who in ("admin", "alice", "olga"):
        status, body = gated[who].post(f"/api/v1/tasks/{tid}/executions", {"reason": f"by {who}"})
        assert status == 202 and body["status"] == "waiting_approval", (who, body)
        ex = session.get(Execution, body["id"])
        # The approvers are the policy's, whoever asked.
        assert ex.queued_at is None and ex.approval.levels == {"1": [session.execute(
            select(User.id).where(User.username == "ann")).scalar_one()]}, who
    status, inbox = gated["ann"].get("/api/v1/approvals")
    assert status == 200 and sorted(i["requested_by"] for i in inbox["items"]) == ["admin", "alice", "olga"]
    assert all(i["can_decide"] for i in inbox["items"])


def test_nobody_decides_his_own_request_and_an_admin_decides_for_another(gated, session):
    tid = gated["task"]["id"]
    mine = gated["admin"].post(f"/api/v1/tasks/{tid}/executions", {})[1]["id"]
    status, err = gated["admin"].post(f"/api/v1/executions/{mine}/approve")
    assert status == 403 and "own request" in err["error"]["message"]
    status, err = gated["admin"].post(f"/api/v1/executions/{mine}/reject")
    assert status == 403
    # The approver's own request: he cannot approve it; another admin may stand in.
    ann_req = gated["ann"].post(f"/api/v1/tasks/{tid}/executions", {})
    assert ann_req[0] == 403  # ann may not execute the task at all (she only approves it)
    olga_req = gated["olga"].post(f"/api/v1/tasks/{tid}/executions", {})[1]["id"]
    status, err = gated["olga"].post(f"/api/v1/executions/{olga_req}/approve")
    assert status == 403 and "own request" in err["error"]["message"]
    status, body = gated["admin2"].post(f"/api/v1/executions/{mine}/approve", {"comment": "four eyes"})
    assert status == 200 and body["status"] == "queued"
    session.expire_all()
    assert session.get(Execution, mine).status == "queued"
    assert [(a.actor, a.detail["final"]) for a in audit_actions(session, "approval.approve")] == [("admin2", True)]


def test_a_request_only_its_requester_could_approve_is_refused_up_front(api, api_as, app, session):
    """A single admin under a policy whose only approver is himself: the request would wait
    until it expires. It is refused with a 422 saying why, and nothing is written."""
    host(api, "solo1")
    t = task(api, "solo", hosts=["solo1"])
    olga = api_as("olga", "operator")
    assert api.post("/api/v1/policies", {"name": "solo gate", "users": ["olga"], "tasks": ["solo"],
                                         "requires_approval": True,
                                         "approvers": [{"user": "admin", "level": 1}]})[0] == 201
    status, err = api.post(f"/api/v1/tasks/{t['id']}/executions", {})
    assert status == 422 and err["error"]["code"] == "no_approver" and err["error"]["field"] == "task"
    assert "nobody but you could approve" in err["error"]["message"] and "level 1" in err["error"]["message"]
    assert session.execute(select(Execution)).first() is None
    # The Run button says the same, on the task's page.
    resp = post_form(browser(app, "admin"), f"/tasks/{t['id']}", f"/tasks/{t['id']}/run", {"vars": "", "reason": ""})
    assert resp.status_code == 422 and "nobody but you could approve" in resp.get_data(as_text=True)
    assert session.execute(select(Execution)).first() is None
    # Someone else's request waits: the admin can decide it.
    status, body = olga.post(f"/api/v1/tasks/{t['id']}/executions", {})
    assert status == 202 and body["status"] == "waiting_approval"
    # Two levels need two people other than the requester: with one admin and one approver,
    # an operator's two-level request is fine, the approver's own is not.
    api_as_ann = api_as("ann", "approver")
    assert api.patch("/api/v1/policies/1", {"users": ["olga", "ann"], "approvers": [
        {"user": "ann", "level": 1}, {"user": "admin", "level": 2}]})[0] == 200
    assert olga.post(f"/api/v1/tasks/{t['id']}/executions", {})[0] == 202
    status, err = api_as_ann.post(f"/api/v1/tasks/{t['id']}/executions", {})
    assert status == 422 and "levels 1, 2" in err["error"]["message"], err
    # A schedule the sole admin asks for, which only he could approve, is refused the same way.
    status, err = api.post(f"/api/v1/tasks/{t['id']}/schedules", {"cron": "0 6 * * *", "timezone": "UTC"})
    assert status == 422 and err["error"]["code"] == "no_approver", err
    assert session.execute(select(Schedule)).first() is None


def test_web_run_button_and_relaunch_take_the_same_path(gated, app, session):
    tid = gated["task"]["id"]
    alice = browser(app, "alice")
    resp = post_form(alice, f"/tasks/{tid}", f"/tasks/{tid}/run", {"vars": "", "reason": "from the page"})
    assert resp.status_code == 302, resp.data
    ex = session.execute(select(Execution).where(Execution.task_id == tid)).scalar_one()
    assert ex.status == "waiting_approval" and ex.requested_by.username == "alice"
    # A finished run relaunched by an author needs approval too.
    ex.status, ex.finished_at = "failed", ex.created_at
    session.commit()
    status, body = gated["alice"].post(f"/api/v1/executions/{ex.id}/relaunch", {"failed_only": False})
    assert status == 202 and body["status"] == "waiting_approval", body
    # When the policy asks its users for a reason, the page's relaunch is a form that asks for it.
    assert gated["admin"].patch(f"/api/v1/policies/{gated['policy']['id']}", {"requires_reason": True})[0] == 200
    olga, form = browser(app, "olga"), f"/executions/{ex.id}/relaunch"
    assert f'href="{form}"' in olga.get(f"/executions/{ex.id}").get_data(as_text=True)
    resp = post_form(olga, form, form, {"failed_only": ""})
    assert resp.status_code == 422 and "a reason is required" in resp.get_data(as_text=True)
    resp = post_form(olga, form, form, {"failed_only": "", "reason": "payday"})
    assert resp.status_code == 302, resp.data
    child = session.get(Execution, int(resp.headers["Location"].rsplit("/", 1)[1]))
    assert child.parent_id == ex.id and child.reason == "payday" and child.status == "waiting_approval"
    assert child.requested_by.username == "olga"


def test_a_dry_run_is_made_only_for_an_approval_request_and_never_relaunched(gated, api, app, tmp_path, session):
    make_playbook_dir(app, tmp_path)
    status, t = api.post("/api/v1/tasks", {"name": "site", "kind": "playbook", "playbook": "site.yml",
                                           "hosts": ["pay1"]})
    assert status == 201, t
    assert api.patch(f"/api/v1/policies/{gated['policy']['id']}", {"tasks": ["payroll", "site"]})[0] == 200
    task_row = session.get(Task, t["id"])
    user = session.execute(select(User).where(User.username == "olga")).scalar_one()
    # The request path refuses to make a dry run itself.
    with pytest.raises(ValidationError) as err:
        request_execution(session, task_row, user, trigger=approvals.DRY_RUN_TRIGGER)
    assert err.value.field == "trigger"
    session.rollback()
    status, body = gated["olga"].post(f"/api/v1/tasks/{t['id']}/executions", {"dry_run": True})
    assert status == 202 and body["status"] == "waiting_approval"
    dry = session.execute(select(Execution).where(Execution.parent_id == body["id"])).scalar_one()
    assert dry.check_mode and dry.trigger == approvals.DRY_RUN_TRIGGER
    # No dry run of a dry run, nor of a run that needs no approval.
    session.execute(Execution.__table__.update().where(Execution.id == dry.id).values(status="waiting_approval"))
    session.commit()
    session.expire_all()
    assert gated["olga"].post(f"/api/v1/executions/{dry.id}/dry-run")[0] in (404, 409)
    # Once finished, relaunching the dry run would make it a live run: refused.
    session.execute(Execution.__table__.update().where(Execution.id == dry.id).values(status="failed"))
    session.commit()
    before = session.execute(select(Execution.id)).scalars().all()
    for who in ("olga", "admin"):
        status, err = gated[who].post(f"/api/v1/executions/{dry.id}/relaunch", {"failed_only": False})
        assert status == 409 and "dry run" in err["error"]["message"], (who, err)
    session.expire_all()
    assert session.execute(select(Execution.id)).scalars().all() == before


# ---------------------------------------------------------------- edit within the editor's rights


@pytest.fixture
def estate(api, api_as, session):
    """An operator with view+execute+edit on 'mine' and only view on 'theirs'; 'hidden' he cannot see."""
    host(api, "mine1", groups=["mine-group"])
    host(api, "theirs1", groups=["theirs-group"])
    host(api, "hidden1")
    credential(api, "mine-cred")
    credential(api, "theirs-cred")
    credential(api, "hidden-cred")
    mine = task(api, "mine", hosts=["mine1"], credential="mine-cred")
    task(api, "theirs", hosts=["theirs1"], groups=["theirs-group"], credential="theirs-cred")
    task(api, "hidden", hosts=["hidden1"], credential="hidden-cred")
    olga = api_as("olga", "operator")
    assert api.post("/api/v1/policies", {"name": "olga edits mine", "users": ["olga"], "tasks": ["mine"],
                                         "permissions": ["view", "execute", "edit"]})[0] == 201
    assert api.post("/api/v1/policies", {"name": "olga sees theirs", "users": ["olga"], "tasks": ["theirs"],
                                         "permissions": ["view"]})[0] == 201
    return {"mine": mine, "olga": olga, "admin": api}


def _unchanged(session, task_id: int) -> None:
    session.expire_all()
    t = session.get(Task, task_id)
    assert [h.name for h in t.hosts] == ["mine1"] and t.groups == [] and t.credential.name == "mine-cred"
    assert audit_actions(session, "task.update") == []


@pytest.mark.parametrize("patch,status,field,named", [
    ({"hosts": ["mine1", "theirs1"]}, 403, "hosts", "'theirs1'"),
    ({"groups": ["theirs-group"]}, 403, "groups", "'theirs-group'"),
    ({"credential": "theirs-cred"}, 403, "credential", "'theirs-cred'"),
    # What he may not even see is reported like a name that does not exist.
    ({"hosts": ["hidden1"]}, 422, "hosts", "unknown host: hidden1"),
    ({"credential": "hidden-cred"}, 422, "credential", "unknown credential: hidden-cred"),
])
def test_an_editor_cannot_retarget_a_task_beyond_his_own_rights(estate, session, patch, status, field, named):
    got, err = estate["olga"].patch(f"/api/v1/tasks/{estate['mine']['id']}", {**patch, "description": "x"})
    assert got == status and err["error"]["field"] == field and named in err["error"]["message"], err
    _unchanged(session, estate["mine"]["id"])


def test_an_editor_may_use_what_he_may_execute_and_keep_what_is_there(estate, api, session):
    olga = estate["olga"]
    tid = estate["mine"]["id"]
    # Keeping the current targets and credential is always fine.
    status, body = olga.patch(f"/api/v1/tasks/{tid}", {"hosts": ["mine1"], "credential": "mine-cred",
                                                       "commands": ["uptime", "df -h"]})
    assert status == 200 and body["commands"] == ["uptime", "df -h"]
    # Given execute on 'theirs', its host, group and credential become his to use.
    assert api.patch("/api/v1/policies/2", {"permissions": ["view", "execute"]})[0] == 200
    status, body = olga.patch(f"/api/v1/tasks/{tid}", {"hosts": ["mine1", "theirs1"], "groups": ["theirs-group"],
                                                       "credential": "theirs-cred"})
    assert status == 200 and body["hosts"] == ["mine1", "theirs1"] and body["credential"] == "theirs-cred"


def test_the_web_form_refuses_the_same_and_offers_only_usable_targets(estate, app, session):
    olga = browser(app, "olga")
    tid = estate["mine"]["id"]
    page = olga.get(f"/tasks/{tid}/edit").get_data(as_text=True)
    assert 'value="mine1"' in page and 'value="theirs1"' not in page and 'value="hidden1"' not in page
    assert 'value="mine-cred"' in page and 'value="theirs-cred"' not in page
    resp = post_form(olga, f"/tasks/{tid}/edit", f"/tasks/{tid}/edit", {
        "name": "mine", "kind": "commands", "commands": "uptime", "hosts": ["mine1", "theirs1"],
        "credential": "mine-cred", "timeout_s": "3600", "retry_attempts": "1", "retry_delay_s": "10"})
    assert resp.status_code == 403 and "theirs1" in resp.get_data(as_text=True)
    _unchanged(session, tid)


def test_an_editor_cannot_attach_a_vault_password_he_may_not_use(api, api_as, app, tmp_path, session):
    """A vault password is a credential like a login: only the vault credentials of tasks he may
    execute, never one as a login (it would be sent to the hosts), the same in the web form."""
    make_playbook_dir(app, tmp_path)
    host(api, "pb1")
    for name in ("my-vault", "their-vault", "hidden-vault"):
        credential(api, name, kind="vault_password", username="", secret=f"pw-{name}")
    mine = task(api, "pb", kind="playbook", commands=[], playbook="site.yml", hosts=["pb1"],
                vault_credential="my-vault")
    task(api, "their-pb", kind="playbook", commands=[], playbook="site.yml", hosts=["pb1"],
         vault_credential="their-vault")
    task(api, "hidden-pb", kind="playbook", commands=[], playbook="site.yml", hosts=["pb1"],
         vault_credential="hidden-vault")
    olga = api_as("olga", "operator")
    assert api.post("/api/v1/policies", {"name": "olga edits pb", "users": ["olga"], "tasks": ["pb"],
                                         "permissions": ["view", "execute", "edit"]})[0] == 201
    assert api.post("/api/v1/policies", {"name": "olga sees their-pb", "users": ["olga"], "tasks": ["their-pb"],
                                         "permissions": ["view"]})[0] == 201
    url = f"/api/v1/tasks/{mine['id']}"
    for patch, status, field, named in [
        ({"vault_credential": "their-vault"}, 403, "vault_credential", "'their-vault'"),
        ({"vault_credential": "hidden-vault"}, 422, "vault_credential", "unknown credential: hidden-vault"),
        ({"credential": "my-vault"}, 422, "credential", "'my-vault' is a vault_password"),
    ]:
        got, err = olga.patch(url, {**patch, "description": "x"})
        assert got == status and err["error"]["field"] == field and named in err["error"]["message"], err
    olga_web = browser(app, "olga")
    page = olga_web.get(f"/tasks/{mine['id']}/edit").get_data(as_text=True)
    assert 'value="my-vault"' in page and 'value="their-vault"' not in page and 'value="hidden-vault"' not in page
    resp = post_form(olga_web, f"/tasks/{mine['id']}/edit", f"/tasks/{mine['id']}/edit", {
        "name": "pb", "kind": "playbook", "playbook": "site.yml", "hosts": ["pb1"], "vault_credential": "their-vault",
        "timeout_s": "3600", "retry_attempts": "1", "retry_delay_s": "10"})
    assert resp.status_code == 403 and "their-vault" in resp.get_data(as_text=True)
    session.expire_all()
    assert session.get(Task, mine["id"]).vault_credential.name == "my-vault"
    assert audit_actions(session, "task.update") == []
    # Given execute on 'their-pb', its vault password becomes his to name (and the change is audited).
    assert api.patch("/api/v1/policies/2", {"permissions": ["view", "execute"]})[0] == 200
    status, body = olga.patch(url, {"vault_credential": "their-vault"})
    assert status == 200 and body["vault_credential"] == "their-vault", body
    [row] = audit_actions(session, "task.update")
    assert row.actor == "olga" and row.detail["changed"] == ["vault_credential"]


# ---------------------------------------------------------------- local hosts are admin-only targets


@pytest.fixture
def controller(api, api_as, session):
    host(api, "ctl", protocol="local", address="localhost", groups=["ctl-group"])
    host(api, "remote1")
    return api_as("alice", "author")


def test_an_author_cannot_target_a_local_host_and_an_admin_can(controller, api, session):
    alice = controller
    for fields, field in (({"hosts": ["remote1", "ctl"]}, "hosts"), ({"groups": ["ctl-group"]}, "groups")):
        status, err = alice.post("/api/v1/tasks", {"name": "own the box", "kind": "commands",
                                                   "commands": ["cat instance/vault_key"], **fields})
        assert status == 403 and err["error"]["field"] == field and "'ctl'" in err["error"]["message"], err
        assert "local protocol" in err["error"]["message"]
    assert session.execute(select(Task)).first() is None
    # The author's own task cannot be pointed there either.
    t = task(alice, "harmless", hosts=["remote1"])
    status, err = alice.patch(f"/api/v1/tasks/{t['id']}", {"hosts": ["ctl"]})
    assert status == 403 and err["error"]["field"] == "hosts"
    # An admin may.
    status, body = api.post("/api/v1/tasks", {"name": "controller upkeep", "kind": "commands",
                                              "commands": ["uptime"], "hosts": ["ctl"]})
    assert status == 201, body
    # ...and an author may not then change that task, not even its commands.
    status, err = alice.patch(f"/api/v1/tasks/{body['id']}", {"commands": ["cat instance/vault_key"]})
    assert status == 403 and "only admins" in err["error"]["message"]
    session.expire_all()
    assert session.get(Task, body["id"]).commands == ["uptime"]
    assert [r.actor for r in audit_actions(session, "task.update")] == []


def test_the_web_form_hides_local_hosts_from_authors_and_refuses_them(controller, app, session):
    alice = browser(app, "alice")
    page = alice.get("/tasks/new").get_data(as_text=True)
    assert 'value="remote1"' in page and 'value="ctl"' not in page
    resp = post_form(alice, "/tasks/new", "/tasks/new", {
        "name": "sneaky", "kind": "commands", "commands": "id", "hosts": ["ctl"],
        "timeout_s": "3600", "retry_attempts": "1", "retry_delay_s": "10"})
    assert resp.status_code == 403 and "local protocol" in resp.get_data(as_text=True)
    assert session.execute(select(Task)).first() is None


# ---------------------------------------------------------------- schedules keep their owner's rights


@pytest.fixture
def scheduled(api, api_as, session):
    host(api, "cron1")
    t = task(api, "nightly", hosts=["cron1"])
    olga = api_as("olga", "operator")
    alice = api_as("alice", "author")
    status, pol = api.post("/api/v1/policies", {"name": "olga runs nightly", "users": ["olga"], "tasks": ["nightly"],
                                                "permissions": ["view", "execute", "schedule"]})
    assert status == 201, pol
    by = {}
    for who, client in (("olga", olga), ("alice", alice)):
        status, sch = client.post(f"/api/v1/tasks/{t['id']}/schedules", {"cron": "0 6 * * *", "timezone": "UTC"})
        assert status == 201, sch
        by[who] = sch["id"]
    return {"task": t, "policy": pol, "schedules": by}


def fire(session, schedule_id: int, day: int) -> ScheduleFire:
    due = datetime(2030, 1, day, 6, 0, tzinfo=U)
    session.expire_all()
    for row in session.execute(select(Schedule)).scalars():
        row.next_fire_at = due
    session.commit()
    scheduler.tick(session, due)
    session.expire_all()
    return session.execute(select(ScheduleFire).where(ScheduleFire.schedule_id == schedule_id,
                                                      ScheduleFire.due_at == due)).scalar_one()


def assert_suspended(session, f: ScheduleFire, *words: str) -> None:
    assert f.outcome == "suspended" and f.execution_id is None, (f.outcome, f.detail)
    for word in words:
        assert word in f.detail, f.detail
    rows = [r for r in audit_actions(session, "schedule.suspended") if r.target_id == str(f.schedule_id)]
    assert rows and rows[-1].actor == "scheduler" and rows[-1].detail["detail"] == f.detail


def test_a_schedule_fires_while_its_owner_keeps_his_rights(scheduled, session):
    for sid in scheduled["schedules"].values():
        f = fire(session, sid, 1)
        assert f.outcome == "fired" and session.get(Execution, f.execution_id).status == "queued"


def test_policy_removed_suspends_the_fire_until_the_right_is_back(scheduled, api, session):
    sid = scheduled["schedules"]["olga"]
    assert api.delete(f"/api/v1/policies/{scheduled['policy']['id']}")[0] == 204
    f = fire(session, sid, 2)
    assert_suspended(session, f, "'olga'", "may no longer execute or schedule task 'nightly'")
    assert fire(session, scheduled["schedules"]["alice"], 3).outcome == "fired"  # the author's still runs
    # Rights back: the schedule fires again (it was not parked).
    assert api.post("/api/v1/policies", {"name": "again", "users": ["olga"], "tasks": ["nightly"],
                                         "permissions": ["view", "execute", "schedule"]})[0] == 201
    assert fire(session, sid, 4).outcome == "fired"


def test_execute_removed_from_the_policy_suspends_the_fire(scheduled, api, session):
    assert api.patch(f"/api/v1/policies/{scheduled['policy']['id']}",
                     {"permissions": ["view", "schedule"]})[0] == 200
    assert_suspended(session, fire(session, scheduled["schedules"]["olga"], 2), "may no longer execute task")


def test_a_disabled_owner_suspends_the_fire(scheduled, api, session):
    olga = session.execute(select(User).where(User.username == "olga")).scalar_one()
    assert api.delete(f"/api/v1/users/{olga.id}")[0] == 204
    assert_suspended(session, fire(session, scheduled["schedules"]["olga"], 2), "'olga' is disabled")


def test_a_role_change_suspends_the_fire(scheduled, api, session):
    alice = session.execute(select(User).where(User.username == "alice")).scalar_one()
    assert api.patch(f"/api/v1/users/{alice.id}", {"role": "auditor"})[0] == 200
    assert_suspended(session, fire(session, scheduled["schedules"]["alice"], 2), "'alice' (auditor)",
                     "may no longer execute or schedule")
    assert fire(session, scheduled["schedules"]["olga"], 3).outcome == "fired"


def test_the_owner_check_costs_the_same_for_a_burst_as_for_one_fire(scheduled, api, session):
    """The owners and their policies are read once per batch, not once per fire."""
    from sqlalchemy import event

    from server.scheduling.schedules import create_schedule

    olga = session.execute(select(User).where(User.username == "olga")).scalar_one()
    task_row = session.get(Task, scheduled["task"]["id"])

    def user_reads(n_extra: int, day: int) -> int:
        for _ in range(n_extra):
            create_schedule(session, task_row, olga, {"cron": "0 6 * * *", "timezone": "UTC"})
        session.commit()
        statements: list[str] = []

        def count(conn, cursor, statement, parameters, context, executemany) -> None:
            statements.append(statement)

        engine = session.get_bind()
        event.listen(engine, "before_cursor_execute", count)
        try:
            fire(session, scheduled["schedules"]["olga"], day)
        finally:
            event.remove(engine, "before_cursor_execute", count)
        return sum(1 for s in statements if "FROM users" in s or "policy_users" in s)

    few = user_reads(0, 2)
    many = user_reads(30, 3)
    assert many == few and few <= 3, (few, many)
    fired = session.execute(select(ScheduleFire).where(ScheduleFire.outcome == "fired",
                                                       ScheduleFire.due_at == datetime(2030, 1, 3, 6, tzinfo=U)))
    assert len(fired.scalars().all()) == 32


# ---------------------------------------------------------------- relaunch reveals nothing


def test_relaunch_of_an_execution_one_may_not_see_is_a_404(api, api_as, session):
    host(api, "r1")
    secret = task(api, "secret task", hosts=["r1"])
    shown = task(api, "shown task", hosts=["r1"])
    ex_id = api.post(f"/api/v1/tasks/{secret['id']}/executions", {})[1]["id"]
    seen_id = api.post(f"/api/v1/tasks/{shown['id']}/executions", {})[1]["id"]
    for eid in (ex_id, seen_id):
        session.execute(Execution.__table__.update().where(Execution.id == eid).values(status="failed"))
    session.commit()
    olga = api_as("olga", "operator")
    assert api.post("/api/v1/policies", {"name": "olga views", "users": ["olga"], "tasks": ["shown task"],
                                         "permissions": ["view"]})[0] == 201
    invisible = olga.post(f"/api/v1/executions/{ex_id}/relaunch", {"failed_only": False})
    missing = olga.post("/api/v1/executions/987654/relaunch", {"failed_only": False})
    assert invisible[0] == missing[0] == 404
    assert invisible[1]["error"]["code"] == missing[1]["error"]["code"] == "not_found"
    # Other endpoints on the same execution answer alike.
    for path in (f"/api/v1/executions/{ex_id}", f"/api/v1/executions/{ex_id}/approval"):
        assert olga.get(path)[0] == 404, path
    for path in (f"/api/v1/executions/{ex_id}/approve", f"/api/v1/executions/{ex_id}/dry-run",
                 f"/api/v1/executions/{ex_id}/cancel"):
        assert olga.post(path, {})[0] == 404, path
    # A bad body does not reveal it either (the visibility check comes first).
    assert olga.post(f"/api/v1/executions/{ex_id}/relaunch", {"failed_only": "yes"})[0] == 404
    # One he may see but not execute: 403, saying why.
    status, err = olga.post(f"/api/v1/executions/{seen_id}/relaunch", {"failed_only": False})
    assert status == 403 and "execute" in err["error"]["message"]
    session.expire_all()
    assert session.execute(select(Execution).where(Execution.parent_id.is_not(None))).first() is None


def test_scheduling_needs_execute_too(api, api_as, session):
    """A schedule's fires run with its owner's rights: ``schedule`` alone cannot create one."""
    host(api, "cron2")
    t = task(api, "weekly", hosts=["cron2"])
    sam = api_as("sam", "operator")
    assert api.post("/api/v1/policies", {"name": "sam schedules", "users": ["sam"], "tasks": ["weekly"],
                                         "permissions": ["view", "schedule"]})[0] == 201
    status, body = sam.post(f"/api/v1/tasks/{t['id']}/schedules", {"cron": "0 6 * * *", "timezone": "UTC"})
    assert status == 403 and "execute" in body["error"]["message"], body
    assert session.execute(select(Schedule)).first() is None


def test_an_execution_one_may_not_see_is_a_404_page_like_the_api(gated, api_as, app):
    status, run = gated["olga"].post(f"/api/v1/tasks/{gated['task']['id']}/executions", {"reason": "CHG-1"})
    assert status == 202, run
    api_as("otto", "operator")  # no policy names him
    otto = browser(app, "otto")
    assert otto.get(f"/executions/{run['id']}").status_code == 404
    assert otto.get("/executions/999999").status_code == 404
    assert browser(app, "olga").get(f"/executions/{run['id']}").status_code == 200
