"""Executions API: run (202 + enqueued after commit), list/filter/paginate, detail, cancel.

No worker runs here: executions stay queued (helper A's tests run them end to end).
"""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select

from resource_factories import host, task
from server.executions import jobs
from server.core.models import AuditLog, Execution, Operation, Step, utcnow


def setup_task(api, name="ping-all", **fields):
    for h in ("e1", "e2", "e3"):
        if api.get(f"/api/v1/hosts?q={h}")[1]["total"] == 0:
            host(api, h)
    return task(api, name, hosts=["e1", "e2", "e3"], **fields)


def test_run_returns_202_and_enqueues_after_commit(api, session):
    t = setup_task(api)
    status, body = api.post(f"/api/v1/tasks/{t['id']}/executions", {"vars": {"who": "{{ lookup('pipe','id') }}"},
                                                                    "reason": "  weekly check  "})
    assert status == 202 and body["status"] == "queued" and body["url"] == f"/api/v1/executions/{body['id']}"
    queue = jobs.queue()
    assert f"execution-{body['id']}" in queue.job_ids  # pushed to real Redis once committed
    ex = session.get(Execution, body["id"])
    assert ex.reason == "weekly check" and ex.host_count == 3 and ex.requested_by.username == "admin"

    status, detail = api.get(f"/api/v1/executions/{body['id']}")
    assert status == 200
    assert detail["task"] == "ping-all" and detail["task_id"] == t["id"] and detail["trigger"] == "manual"
    assert detail["requested_by"] == "admin" and detail["status"] == "queued" and detail["operations"] == []
    assert detail["vars"] == {"who": "{{ lookup('pipe','id') }}"}  # stored as data, verbatim
    assert detail["revision"] and detail["started_at"] is None
    created = datetime.fromisoformat(detail["created_at"])
    assert created.utcoffset() is not None and created.utcoffset().total_seconds() == 0


def test_run_without_body_and_with_limit(api):
    t = setup_task(api)
    status, body = api.post(f"/api/v1/tasks/{t['id']}/executions")
    assert status == 202
    status, body = api.post(f"/api/v1/tasks/{t['id']}/executions", {"limit": ["e2"]})
    assert status == 202
    assert api.get(f"/api/v1/executions/{body['id']}")[1]["host_count"] == 1
    status, err = api.post(f"/api/v1/tasks/{t['id']}/executions", {"limit": ["not-a-target"]})
    assert status == 422 and err["error"]["field"] == "limit"  # the field that names no target
    status, err = api.post(f"/api/v1/tasks/{t['id']}/executions", {"vars": ["x"]})
    assert status == 422 and err["error"]["field"] == "vars"
    for body, field in (({"reason": 5}, "reason"), ({"reason": "x" * 2001}, "reason"), ({"limit": 5}, "limit"),
                        ({"vars": {"ansible_connection": "local"}}, "vars"), ({"reason": "nul\x00"}, "reason"),
                        ({"dry_run": "yes"}, "dry_run")):
        status, err = api.post(f"/api/v1/tasks/{t['id']}/executions", body)
        assert status == 422 and err["error"]["field"] == field, (body, err)
    status, err = api.post(f"/api/v1/tasks/{t['id']}/executions", {"force": True})
    assert status == 422 and err["error"]["code"] == "unknown_fields"
    empty = task(api, "no-targets")
    status, err = api.post(f"/api/v1/tasks/{empty['id']}/executions", {})
    assert status == 422 and "no target hosts" in err["error"]["message"]
    assert api.post("/api/v1/tasks/999999/executions", {})[0] == 404


def test_detail_carries_operations_and_steps(api, session):
    t = setup_task(api)
    run = api.post(f"/api/v1/tasks/{t['id']}/executions", {})[1]
    now = utcnow()
    op = Operation(execution_id=run["id"], host_name="e1", status="failed", rc=2, stdout="out", stderr="err",
                   message="step 1 failed", started_at=now, finished_at=now)
    op.steps = [Step(seq=1, name="command 1: false", status="failed", rc=2, stdout="", stderr="boom", duration_s=0.25)]
    session.add(op)
    session.commit()
    detail = api.get(f"/api/v1/executions/{run['id']}")[1]
    (got,) = detail["operations"]
    assert got["host"] == "e1" and got["status"] == "failed" and got["rc"] == 2 and got["message"] == "step 1 failed"
    assert got["stdout"] == "out" and got["stderr"] == "err" and got["finished_at"].endswith("+00:00")
    assert isinstance(got["steps"][0].pop("id"), int)  # the step's output can be followed by id
    assert got["steps"] == [{"name": "command 1: false", "status": "failed", "rc": 2, "stdout": "", "stderr": "boom",
                             "changed": False, "duration_s": 0.25, "started_at": None}]
    listing = api.get("/api/v1/executions")[1]
    assert "operations" not in listing["items"][0]  # lists stay light


def test_list_newest_first_paginated_and_filtered(api, session):
    a, b = setup_task(api, "task-a"), setup_task(api, "task-b")
    ids = [api.post(f"/api/v1/tasks/{t['id']}/executions", {})[1]["id"] for t in (a, b, a, b, a)]
    session.get(Execution, ids[0]).trigger = "schedule"
    session.get(Execution, ids[1]).status = "succeeded"
    session.commit()

    body = api.get("/api/v1/executions?per_page=2")[1]
    assert body["total"] == 5 and [e["id"] for e in body["items"]] == ids[::-1][:2]
    assert [e["id"] for e in api.get("/api/v1/executions?per_page=2&page=3")[1]["items"]] == [ids[0]]
    assert {e["id"] for e in api.get("/api/v1/executions?task=task-a")[1]["items"]} == {ids[0], ids[2], ids[4]}
    assert {e["id"] for e in api.get(f"/api/v1/executions?task={b['id']}")[1]["items"]} == {ids[1], ids[3]}
    assert [e["id"] for e in api.get("/api/v1/executions?status=succeeded")[1]["items"]] == [ids[1]]
    assert len(api.get("/api/v1/executions?status=queued,succeeded")[1]["items"]) == 5
    assert [e["id"] for e in api.get("/api/v1/executions?trigger=schedule")[1]["items"]] == [ids[0]]
    assert api.get("/api/v1/executions?task=no-such-task")[1]["total"] == 0
    for bad in ("status=bogus", "page=0", "page=abc", "per_page=-1", "trigger=DROP%20TABLE", "task=%00"):
        status, err = api.get(f"/api/v1/executions?{bad}")
        assert status == 422, bad
        assert err["error"]["field"] == bad.split("=")[0]


def test_cancel_queued_running_and_finished(api, session):
    t = setup_task(api)
    queued = api.post(f"/api/v1/tasks/{t['id']}/executions", {})[1]
    session.add(Operation(execution_id=queued["id"], host_name="e1", status="pending"))
    session.commit()
    status, body = api.post(f"/api/v1/executions/{queued['id']}/cancel")
    assert status == 200 and body["status"] == "cancelled" and body["finished_at"]
    session.expire_all()
    assert session.execute(select(Operation.status).where(Operation.execution_id == queued["id"])).scalar() == "cancelled"
    status, err = api.post(f"/api/v1/executions/{queued['id']}/cancel")
    assert status == 409 and "cancelled" in err["error"]["message"]

    running = api.post(f"/api/v1/tasks/{t['id']}/executions", {})[1]
    ex = session.get(Execution, running["id"])
    ex.status, ex.started_at = "running", utcnow()
    session.commit()
    status, body = api.post(f"/api/v1/executions/{running['id']}/cancel")
    assert status == 202 and body["status"] == "running" and body["cancel_requested"] is True
    assert api.post(f"/api/v1/executions/{running['id']}/cancel")[0] == 202  # asking twice is harmless
    actions = session.execute(select(AuditLog.detail).where(AuditLog.action == "execution.cancel")
                              .order_by(AuditLog.id)).scalars().all()
    assert [(d["previous"], d["immediate"]) for d in actions] == [("queued", True), ("running", False)]
    assert api.post("/api/v1/executions/424242/cancel")[0] == 404


def test_executions_visibility(api, api_as):
    t = setup_task(api)
    run = api.post(f"/api/v1/tasks/{t['id']}/executions", {})[1]
    operator = api_as("olga", "operator")
    assert operator.get("/api/v1/executions")[1]["total"] == 0
    assert operator.get(f"/api/v1/executions/{run['id']}")[0] == 404
    assert operator.post(f"/api/v1/executions/{run['id']}/cancel")[0] == 404
    assert operator.post(f"/api/v1/tasks/{t['id']}/executions", {})[0] == 404
    auditor = api_as("aud", "auditor")
    assert auditor.get(f"/api/v1/executions/{run['id']}")[0] == 200
    assert auditor.post(f"/api/v1/tasks/{t['id']}/executions", {})[0] == 403
    assert auditor.post(f"/api/v1/executions/{run['id']}/cancel")[0] == 403


def test_run_with_redis_down_is_accepted_and_a_rollback_enqueues_nothing(api, session, monkeypatch):
    """The database is the truth: with Redis unreachable the run is still accepted (the
    reaper enqueues it later), and an execution whose transaction rolled back is never pushed."""
    from redis import Redis

    from server.core import redis_conn
    from server.executions.request import request_execution
    from server.core.models import Task
    from server.executions.reaper import sweep

    t = setup_task(api)
    live = redis_conn.redis()
    monkeypatch.setattr(redis_conn, "_conn", Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5))
    status, body = api.post(f"/api/v1/tasks/{t['id']}/executions", {})
    assert status == 202 and body["status"] == "queued"
    monkeypatch.setattr(redis_conn, "_conn", live)
    assert f"execution-{body['id']}" not in jobs.queue().job_ids

    ex = request_execution(session, session.get(Task, t["id"]), None, trigger="manual")
    rolled_back = ex.id
    session.rollback()
    session.commit()  # a later commit of the same session must not push the rolled-back id
    assert f"execution-{rolled_back}" not in jobs.queue().job_ids

    sweep(session, utcnow() + timedelta(seconds=60))
    assert f"execution-{body['id']}" in jobs.queue().job_ids  # re-enqueued from the database
