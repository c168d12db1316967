"""Hosts API: CRUD, groups on the fly, pagination, access, audit, history kept on delete."""
from __future__ import annotations

from sqlalchemy import select

from resource_factories import host, task
from server.core.models import AuditLog, Execution, Group, Host, Operation


def audit_actions(session, target_type: str) -> list[str]:
    session.expire_all()
    return [a for a in session.execute(
        select(AuditLog.action).where(AuditLog.target_type == target_type).order_by(AuditLog.id)).scalars()]


def test_create_defaults_and_groups_created_on_the_fly(api, session):
    status, body = api.post("/api/v1/hosts", {"name": "web1"})
    assert status == 201
    assert body["name"] == "web1" and body["address"] == "web1"  # address defaults to the name
    assert body["port"] is None and body["protocol"] == "ssh" and body["groups"] == [] and body["vars"] == {}
    assert body["created_at"].endswith("+00:00")

    body = host(api, "db1", address="10.0.0.5", port=2222, protocol="winrm", groups=["db", "prod", "db"],
                vars={"tier": "gold", "svc_user": "svc"})
    assert body["groups"] == ["db", "prod"] and body["port"] == 2222 and body["protocol"] == "winrm"
    assert body["vars"] == {"tier": "gold", "svc_user": "svc"}
    assert sorted(session.execute(select(Group.name)).scalars()) == ["db", "prod"]
    assert "group.create" in audit_actions(session, "group")


def test_get_patch_delete_and_audit(api, session):
    h = host(api, "app1", groups=["blue"])
    status, body = api.get(f"/api/v1/hosts/{h['id']}")
    assert status == 200 and body == h

    status, body = api.patch(f"/api/v1/hosts/{h['id']}", {"address": "app1.example.com", "groups": ["green", "blue"],
                                                          "port": None, "vars": {"a": [1, 2]}})
    assert status == 200
    assert body["address"] == "app1.example.com" and body["groups"] == ["blue", "green"] and body["vars"] == {"a": [1, 2]}
    assert body["name"] == "app1"  # untouched fields stay

    status, body = api.patch(f"/api/v1/hosts/{h['id']}", {})
    assert status == 200 and body["address"] == "app1.example.com"

    status, _ = api.delete(f"/api/v1/hosts/{h['id']}")
    assert status == 204
    assert api.get(f"/api/v1/hosts/{h['id']}")[0] == 404
    assert api.delete(f"/api/v1/hosts/{h['id']}")[0] == 404
    assert audit_actions(session, "host") == ["host.create", "host.update", "host.delete"]


def test_duplicate_name_conflict_on_create_and_rename(api):
    a = host(api, "dup")
    host(api, "other")
    status, body = api.post("/api/v1/hosts", {"name": "dup"})
    assert status == 409 and body["error"]["field"] == "name" and "dup" in body["error"]["message"]
    status, body = api.patch(f"/api/v1/hosts/{a['id']}", {"name": "other"})
    assert status == 409 and body["error"]["field"] == "name"
    status, body = api.patch(f"/api/v1/hosts/{a['id']}", {"name": "dup"})  # renaming to itself is fine
    assert status == 200


def test_list_paginated_sorted_and_filtered(api):
    for i in (5, 3, 1, 4, 2):
        host(api, f"node{i}", address=f"10.1.0.{i}", groups=["odd" if i % 2 else "even"])
    status, body = api.get("/api/v1/hosts?per_page=2")
    assert status == 200
    assert body["total"] == 5 and body["page"] == 1 and body["per_page"] == 2
    assert [h["name"] for h in body["items"]] == ["node1", "node2"]
    status, body = api.get("/api/v1/hosts?per_page=2&page=3")
    assert [h["name"] for h in body["items"]] == ["node5"]
    status, body = api.get("/api/v1/hosts?page=9")
    assert status == 200 and body["items"] == [] and body["total"] == 5
    status, body = api.get("/api/v1/hosts?group=odd")
    assert [h["name"] for h in body["items"]] == ["node1", "node3", "node5"]
    status, body = api.get("/api/v1/hosts?q=10.1.0.4")
    assert [h["name"] for h in body["items"]] == ["node4"]
    status, body = api.get("/api/v1/hosts?q=%25")  # LIKE wildcards are literal
    assert body["total"] == 0
    status, body = api.get("/api/v1/hosts?per_page=5000")
    assert status == 200 and body["per_page"] == 200


def test_access_by_role(api, api_as):
    h = host(api, "guarded")
    author, operator, auditor = api_as("alice", "author"), api_as("olga", "operator"), api_as("aud", "auditor")
    assert author.post("/api/v1/hosts", {"name": "by-author"})[0] == 201
    status, body = operator.post("/api/v1/hosts", {"name": "by-operator"})
    assert status == 403 and body["error"]["code"] == "forbidden"
    assert auditor.patch(f"/api/v1/hosts/{h['id']}", {"port": 22})[0] == 403
    assert auditor.delete(f"/api/v1/hosts/{h['id']}")[0] == 403
    assert auditor.get(f"/api/v1/hosts/{h['id']}")[0] == 200
    # An operator sees only the hosts of tasks a policy lets them see: none here.
    status, body = operator.get("/api/v1/hosts")
    assert status == 200 and body["total"] == 0
    assert operator.get(f"/api/v1/hosts/{h['id']}")[0] == 403
    anonymous = api.client.get("/api/v1/hosts")
    assert anonymous.status_code == 401


def test_delete_host_keeps_operations_and_drops_it_from_tasks(api, session):
    h1, h2 = host(api, "keep1"), host(api, "keep2")
    t = task(api, "uses-hosts", hosts=["keep1", "keep2"])
    status, run = api.post(f"/api/v1/tasks/{t['id']}/executions", {})
    assert status == 202
    # The worker is not running in this test: record the operation a worker would have written.
    session.add(Operation(execution_id=run["id"], host_id=h1["id"], host_name="keep1", status="succeeded", rc=0,
                          stdout="ok\n"))
    session.commit()

    assert api.delete(f"/api/v1/hosts/{h1['id']}")[0] == 204
    session.expire_all()
    op = session.execute(select(Operation).where(Operation.execution_id == run["id"])).scalar_one()
    assert op.host_id is None and op.host_name == "keep1" and op.stdout == "ok\n"
    assert session.get(Execution, run["id"]) is not None
    status, body = api.get(f"/api/v1/executions/{run['id']}")
    assert status == 200 and body["operations"][0]["host"] == "keep1"
    assert api.get(f"/api/v1/tasks/{t['id']}")[1]["hosts"] == ["keep2"]
    delete_row = session.execute(select(AuditLog).where(AuditLog.action == "host.delete")).scalar_one()
    assert delete_row.detail["removed_from_tasks"] == ["uses-hosts"]
    assert session.get(Host, h2["id"]) is not None
