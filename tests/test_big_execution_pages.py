"""A big execution is read one page of hosts at a time: API, page and its live endpoint."""
from __future__ import annotations

import time

import pytest
from sqlalchemy import insert, select

from server.core.models import Execution, Operation, Step, Task, utcnow
from tests.test_reports import login

HOSTS = 1200


@pytest.fixture
def big(api, session, admin_user):
    """A finished execution over 1,200 hosts (rows written directly: what a run leaves)."""
    status, body = api.post("/api/v1/hosts", [{"name": f"n{i:05d}", "address": f"10.9.{i // 200}.{i % 200 + 1}"}
                                              for i in range(HOSTS)])
    assert status == 201
    task = Task(name="big", kind="commands", commands=["uptime"])
    session.add(task)
    session.flush()
    now = utcnow()
    ex = Execution(task_id=task.id, status="failed", trigger="api", requested_by_id=admin_user.id, host_count=HOSTS,
                   hosts_done=HOSTS, started_at=now, finished_at=now)
    session.add(ex)
    session.flush()
    session.execute(insert(Operation), [
        {"execution_id": ex.id, "host_id": h["id"], "host_name": h["name"], "stdout": f"up {i}\n",
         "status": "failed" if i % 100 == 7 else "succeeded", "started_at": now, "finished_at": now}
        for i, h in enumerate(body)])
    ids = session.execute(select(Operation.id).where(Operation.execution_id == ex.id)).scalars().all()
    session.execute(insert(Step), [{"operation_id": op_id, "seq": 1, "name": "command 1: uptime", "status": "succeeded",
                                    "stdout": "up\n", "started_at": now} for op_id in ids])
    session.commit()
    return ex.id


def test_api_pages_a_big_execution(api, big):
    status, body = api.get(f"/api/v1/executions/{big}")
    assert status == 200
    assert len(body["operations"]) == 100 and body["operations"][0]["host"] == "n00000"
    assert body["operations_page"] == {"page": 1, "per_page": 100, "total": HOSTS, "pages": 12, "status": None}
    status, body = api.get(f"/api/v1/executions/{big}?ops_page=12&ops_per_page=100")
    assert [op["host"] for op in body["operations"]][-1] == "n01199" and len(body["operations"]) == 100
    status, body = api.get(f"/api/v1/executions/{big}?ops_status=failed&ops_per_page=500")
    assert body["operations_page"]["total"] == 12 and {op["status"] for op in body["operations"]} == {"failed"}
    for query, field in (("ops_per_page=501", "ops_per_page"), ("ops_page=0", "ops_page"),
                         ("ops_status=weird", "ops_status"), ("ops_page=x", "ops_page")):
        status, body = api.get(f"/api/v1/executions/{big}?{query}")
        assert status == 422 and body["error"]["field"] == field, body


def test_page_shows_one_page_of_hosts_fast_and_small(app, big, admin_user):
    client = app.test_client()
    login(client, admin_user.username)
    client.get(f"/executions/{big}")  # templates compiled
    began = time.perf_counter()
    resp = client.get(f"/executions/{big}")
    elapsed = time.perf_counter() - began
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert elapsed < 1.0 and len(html) < 200_000, (elapsed, len(html))
    assert "Hosts 1–50 of 1200" in html and "n00049" in html and "n00050" not in html
    assert f'data-live-url="/executions/{big}/live/1"' in html
    assert "Only failed (12)" in html
    html = client.get(f"/executions/{big}?page=2").get_data(as_text=True)
    assert "n00050" in html and "n00049" not in html
    html = client.get(f"/executions/{big}?status=failed").get_data(as_text=True)
    assert "n00007" in html and "n00008" not in html and "Hosts 1–12 of 12 (failed)" in html
    assert client.get(f"/executions/{big}?page=99").status_code == 404
    live = client.get(f"/executions/{big}/live/2").get_json()
    assert len(live["hosts"]) == 50 and min(h["name"] for h in live["hosts"]) == "n00050" and live["host_count"] == HOSTS
