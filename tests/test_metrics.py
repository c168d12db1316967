"""/metrics (Prometheus) and the rq-dashboard mounted at /admin/rq: real Redis, real RQ
objects, access control on pages and on the JSON endpoints."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from rq import Queue, Worker

from server.core.redis_conn import redis
from tests.conftest import make_user
from tests.reportdata import make_execution, make_task
from tests.test_reports import login


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_from_database_and_redis(app, session, api, env, monkeypatch):
    task = make_task(session)
    make_execution(session, task, "succeeded", duration_s=3)
    make_execution(session, task, "succeeded", duration_s=40)
    make_execution(session, task, "failed", duration_s=400)
    make_execution(session, task, "running")
    session.commit()
    Queue(env["TASKMANAGER_QUEUE"], connection=redis()).enqueue_call("server.runs.worker.run_execution_job", args=(999,))

    resp = api.client.get("/metrics", headers={"Authorization": f"Bearer {api.token}"})
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    m = samples(resp.get_data(as_text=True))
    assert m[("taskmanager_executions", (("status", "succeeded"),))] == 2
    assert m[("taskmanager_executions", (("status", "failed"),))] == 1
    assert m[("taskmanager_executions", (("status", "running"),))] == 1
    assert m[("taskmanager_executions", (("status", "lost"),))] == 0
    h = "taskmanager_execution_duration_seconds"
    assert m[(h + "_count", ())] == 3
    assert abs(m[(h + "_sum", ())] - 443) < 0.01
    assert m[(h + "_bucket", (("le", "5.0"),))] == 1
    assert m[(h + "_bucket", (("le", "60.0"),))] == 2
    assert m[(h + "_bucket", (("le", "600.0"),))] == 3
    assert m[(h + "_bucket", (("le", "+Inf"),))] == 3
    assert m[("taskmanager_queue_jobs", (("queue", env["TASKMANAGER_QUEUE"]), ("state", "queued")))] == 1
    assert m[("taskmanager_redis_up", ())] == 1
    assert m[("taskmanager_objects", (("kind", "tasks"),))] == 1


def test_metrics_access(app, session, api, api_as, monkeypatch):
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    operator = api_as("olga", "operator")
    assert client.get("/metrics", headers={"Authorization": f"Bearer {operator.token}"}).status_code == 403
    monkeypatch.setenv("TASKMANAGER_METRICS_TOKEN", "scrape-me-0123456789")
    resp = client.get("/metrics", headers={"Authorization": "Bearer scrape-me-0123456789"})
    assert resp.status_code == 200 and b"taskmanager_executions" in resp.data
    # an admin's browser session works too
    login(client, "admin")
    assert client.get("/metrics").status_code == 200


def test_rq_dashboard_works_with_rq3_for_admins(app, session, admin_user, env):
    q = Queue(env["TASKMANAGER_QUEUE"], connection=redis())
    job = q.enqueue_call("server.runs.worker.run_execution_job", args=(12345,), job_id="execution-12345")
    worker = Worker([q], connection=redis(), name="test-worker-rq-dashboard")
    worker.register_birth()
    try:
        client = app.test_client()
        login(client, "admin")
        assert client.get("/admin/rq/").status_code == 200
        queues = client.get("/admin/rq/0/data/queues.json").get_json()["queues"]
        ours = next(x for x in queues if x["name"] == q.name)
        assert ours["count"] == 1
        jobs = client.get(f"/admin/rq/0/data/jobs/{q.name}/queued/8/asc/1.json").get_json()
        assert [j["id"] for j in jobs["jobs"]] == ["execution-12345"]
        info = client.get("/admin/rq/0/data/job/execution-12345.json").get_json()
        assert info["status"] == "queued" and "12345" in info["description"]
        workers = client.get("/admin/rq/0/data/workers.json").get_json()["workers"]
        assert "test-worker-rq-dashboard" in [w["name"] for w in workers]
        for page in ("/admin/rq/0/view/workers", f"/admin/rq/0/view/jobs/{q.name}/queued/8/asc/1",
                     "/admin/rq/0/view/job/execution-12345"):
            assert client.get(page).status_code == 200, page

        # writes: POST from our own origin only
        assert client.post("/admin/rq/job/execution-12345/delete").status_code == 403
        resp = client.post("/admin/rq/job/execution-12345/delete", headers={"Origin": "http://localhost"})
        assert resp.status_code == 200 and resp.get_json()["status"] == "OK"
        assert q.count == 0
        assert client.get(f"/admin/rq/requeue/{q.name}").status_code == 405
    finally:
        worker.register_death()
    assert job.id == "execution-12345"


def test_rq_dashboard_refuses_everyone_else(app, session):
    anon = app.test_client()
    assert anon.get("/admin/rq/0/data/queues.json").status_code == 401
    assert anon.get("/admin/rq/0/data/workers.json").status_code == 401
    resp = anon.get("/admin/rq/")
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]
    assert anon.post("/admin/rq/queue/x/failed/empty", headers={"Origin": "http://localhost"}).status_code == 401

    make_user(session, "olga", "operator")
    operator = app.test_client()
    login(operator, "olga")
    assert operator.get("/admin/rq/").status_code == 403
    assert operator.get("/admin/rq/0/data/queues.json").status_code == 403
    assert operator.get("/admin/rq/0/data/jobs/x/queued/8/asc/1.json").status_code == 403
    assert operator.post("/admin/rq/queue/x/queued/empty", headers={"Origin": "http://localhost"}).status_code == 403
