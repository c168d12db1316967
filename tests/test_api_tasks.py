"""Tasks API: commands and playbook tasks, name resolution, kind switches, visibility, delete."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from resource_factories import credential, host, make_playbook_dir, task
from server.core.models import AuditLog, Execution, Policy, Task, User, policy_tasks, policy_users


@pytest.fixture
def books(app, tmp_path):
    return make_playbook_dir(app, tmp_path)


def test_commands_task_defaults_and_names(api):
    host(api, "h1", groups=["web"])
    host(api, "h2")
    credential(api, "ops")
    status, body = api.post("/api/v1/tasks", {"name": "restart nginx", "kind": "commands",
                                              "commands": ["sudo systemctl restart nginx", "  uptime  "],
                                              "hosts": ["h2", "h1", "h2"], "groups": ["web"], "credential": "ops",
                                              "vars": {"svc": "nginx"}})
    assert status == 201, body
    assert body["commands"] == ["sudo systemctl restart nginx", "uptime"]
    assert body["hosts"] == ["h1", "h2"] and body["groups"] == ["web"] and body["credential"] == "ops"
    assert body["playbook"] is None and body["timeout_s"] == 3600 and body["become"] is False
    assert body["retry_attempts"] == 1 and body["allow_simultaneous"] is False and body["vars"] == {"svc": "nginx"}
    status, detail = api.get(f"/api/v1/tasks/{body['id']}")
    assert status == 200 and detail["permissions"] == ["edit", "execute", "schedule", "view"]
    assert {k: v for k, v in detail.items() if k != "permissions"} == body


def test_playbook_task_and_kind_switches(api, books):
    status, body = api.post("/api/v1/tasks", {"name": "deploy", "kind": "playbook", "playbook": "web/restart.yaml",
                                              "timeout_s": 600, "become": True, "retry_attempts": 3,
                                              "retry_delay_s": 30})
    assert status == 201, body
    assert body["playbook"] == "web/restart.yaml" and body["commands"] == [] and body["timeout_s"] == 600
    tid = body["id"]
    # playbook -> commands: the playbook is dropped, commands are required.
    status, err = api.patch(f"/api/v1/tasks/{tid}", {"kind": "commands"})
    assert status == 422 and err["error"]["field"] == "commands"
    status, body = api.patch(f"/api/v1/tasks/{tid}", {"kind": "commands", "commands": ["id"]})
    assert status == 200 and body["playbook"] is None and body["commands"] == ["id"]
    # commands -> playbook: commands are dropped, the playbook is checked.
    status, err = api.patch(f"/api/v1/tasks/{tid}", {"kind": "playbook", "playbook": "missing.yml"})
    assert status == 422 and err["error"]["field"] == "playbook"
    status, body = api.patch(f"/api/v1/tasks/{tid}", {"kind": "playbook", "playbook": "site.yml"})
    assert status == 200 and body["commands"] == [] and body["playbook"] == "site.yml"
    # A playbook field on a commands task (and vice versa) is refused, not ignored.
    status, err = api.patch(f"/api/v1/tasks/{tid}", {"commands": ["ls"]})
    assert status == 422 and err["error"]["field"] == "commands"


def test_patch_replaces_lists_and_reports_unknown_names(api, session):
    host(api, "a1")
    host(api, "a2")
    t = task(api, "t", hosts=["a1"])
    status, body = api.patch(f"/api/v1/tasks/{t['id']}", {"hosts": ["a2"], "description": "nightly"})
    assert status == 200 and body["hosts"] == ["a2"] and body["description"] == "nightly"
    status, err = api.patch(f"/api/v1/tasks/{t['id']}", {"hosts": ["a1", "ghost", "phantom"], "groups": ["nope"],
                                                         "credential": "none-such"})
    assert status == 422
    assert err["error"]["fields"] == {"hosts": "unknown hosts: ghost, phantom", "groups": "unknown group: nope",
                                      "credential": "unknown credential: none-such"}
    session.expire_all()
    assert [h.name for h in session.get(Task, t["id"]).hosts] == ["a2"]  # nothing half-applied
    changed = [r.detail["changed"] for r in session.execute(
        select(AuditLog).where(AuditLog.action == "task.update")).scalars()]
    assert changed == [["description", "hosts"]]


def test_list_filter_and_visibility_through_policies(api, api_as, session):
    for name in ("b-task", "a-task", "c-task"):
        task(api, name)
    status, body = api.get("/api/v1/tasks?per_page=2")
    assert body["total"] == 3 and [t["name"] for t in body["items"]] == ["a-task", "b-task"]
    assert [t["name"] for t in api.get("/api/v1/tasks?q=c-")[1]["items"]] == ["c-task"]

    operator = api_as("olga", "operator")
    assert operator.get("/api/v1/tasks")[1]["total"] == 0
    a_task = api.get("/api/v1/tasks?q=a-task")[1]["items"][0]
    assert operator.get(f"/api/v1/tasks/{a_task['id']}")[0] == 404  # not revealed
    # A policy granting view+execute on a-task makes it visible (but not editable).
    user = session.execute(select(User).where(User.username == "olga")).scalar_one()
    policy = Policy(name="olga-a", permissions=["execute"])
    session.add(policy)
    session.flush()
    session.execute(policy_users.insert().values(policy_id=policy.id, user_id=user.id))
    session.execute(policy_tasks.insert().values(policy_id=policy.id, task_id=a_task["id"]))
    session.commit()
    status, body = operator.get("/api/v1/tasks")
    assert [t["name"] for t in body["items"]] == ["a-task"]
    status, body = operator.get(f"/api/v1/tasks/{a_task['id']}")
    assert status == 200 and body["permissions"] == ["execute", "view"]
    assert operator.patch(f"/api/v1/tasks/{a_task['id']}", {"description": "x"})[0] == 403
    assert operator.delete(f"/api/v1/tasks/{a_task['id']}")[0] == 403
    assert operator.post("/api/v1/tasks", {"name": "mine", "kind": "commands", "commands": ["ls"]})[0] == 403


def test_delete_refused_while_running_then_removes_history(api, session):
    host(api, "d1")
    t = task(api, "to-delete", hosts=["d1"])
    status, run = api.post(f"/api/v1/tasks/{t['id']}/executions")
    assert status == 202
    status, err = api.delete(f"/api/v1/tasks/{t['id']}")
    assert status == 409 and f"#{run['id']}" in err["error"]["message"]
    assert api.post(f"/api/v1/executions/{run['id']}/cancel")[0] == 200
    assert api.delete(f"/api/v1/tasks/{t['id']}")[0] == 204
    session.expire_all()
    assert session.get(Task, t["id"]) is None and session.get(Execution, run["id"]) is None
    row = session.execute(select(AuditLog).where(AuditLog.action == "task.delete")).scalar_one()
    assert row.detail == {"name": "to-delete", "executions_deleted": 1}
    assert api.get(f"/api/v1/tasks/{t['id']}")[0] == 404


def test_duplicate_task_name(api):
    task(api, "same")
    status, body = api.post("/api/v1/tasks", {"name": "same", "kind": "commands", "commands": ["ls"]})
    assert status == 409 and body["error"]["field"] == "name"
