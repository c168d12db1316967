"""Reports: dashboard aggregates, keyset history pages, filters, CSV exports and the pages
that show them (rendered by the real app over the test client)."""
from __future__ import annotations

import csv
import io
import re
from urllib.parse import quote
from datetime import timedelta

import pytest

from server.reporting import reports
from server.core.models import Policy, utcnow
from tests.conftest import ADMIN_PASSWORD, make_user
from tests.reportdata import make_execution, make_task


def login(client, username: str, password: str = ADMIN_PASSWORD) -> None:
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    resp = client.post("/login", data={"username": username, "password": password, "csrf_token": token})
    assert resp.status_code == 302, resp.get_data(as_text=True)


def read_csv(body: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body.decode())))


@pytest.fixture
def history(session, admin_user):
    """Two tasks over 40 days: backup fails on db-02 twice; deploy mostly succeeds."""
    now = utcnow()
    backup = make_task(session, "backup")
    deploy = make_task(session, "deploy")
    made = []
    made.append(make_execution(session, backup, "succeeded", hosts={"db-01": "succeeded", "db-02": "succeeded"},
                               created_at=now - timedelta(days=35), duration_s=100))
    made.append(make_execution(session, backup, "failed", hosts={"db-01": "succeeded", "db-02": "failed"},
                               created_at=now - timedelta(days=6), duration_s=50, errors={"db-02": "disk full"}))
    made.append(make_execution(session, backup, "failed", hosts={"db-01": "succeeded", "db-02": "unreachable"},
                               created_at=now - timedelta(hours=2), duration_s=30,
                               errors={"db-02": "ssh: connect to host db-02 port 22: Connection refused"}))
    for i in range(4):
        made.append(make_execution(session, deploy, "succeeded", hosts={"web-01": "succeeded", "web-02": "succeeded"},
                                   created_at=now - timedelta(days=i * 3, hours=1), duration_s=10 + i, user=admin_user,
                                   trigger="schedule" if i % 2 else "manual"))
    made.append(make_execution(session, deploy, "running", hosts={"web-01": "succeeded", "web-02": "running"},
                               created_at=now - timedelta(minutes=1)))
    session.commit()
    return {"backup": backup, "deploy": deploy, "executions": made, "now": now}


# --- services ---------------------------------------------------------------------------------

def test_dashboard_aggregates(session, admin_user, history):
    d = reports.dashboard(session, admin_user, "7d", now=history["now"])
    assert d["counts"]["24h"] == {"failed": 1, "succeeded": 1, "running": 1}
    assert d["counts"]["7d"] == {"failed": 2, "succeeded": 3, "running": 1}
    assert d["counts"]["30d"] == {"failed": 2, "succeeded": 4, "running": 1}
    by_task = {t["task"]: t for t in d["tasks"]}
    assert by_task["backup"]["runs"] == 2 and by_task["backup"]["rate"] == 0.0
    assert by_task["deploy"]["runs"] == 3 and by_task["deploy"]["rate"] == 1.0
    assert abs(by_task["deploy"]["avg_s"] - 11.0) < 0.01  # 10, 11, 12 s
    assert d["tasks"][0]["task"] == "backup"  # worst first
    assert d["hosts"] == [{"host": "db-02", "failures": 2, "last_id": history["executions"][2].id}]
    assert len(d["trend"]) == 31
    assert sum(p["runs"] for p in d["trend"]) == 7
    assert sum(p["failed"] for p in d["trend"]) == 2
    assert [a.status for a in d["active"]] == ["running"]
    with pytest.raises(reports.ValidationError):
        reports.dashboard(session, admin_user, "1y")


def test_host_summary_is_exact_even_when_ids_and_times_disagree(session, admin_user, history):
    # deploy's runs were created newest first, so an id range alone would include the
    # 9-day-old one in a 7-day window: it must be left out.
    rows = reports.host_summary(session, admin_user, history["now"] - timedelta(days=7))
    got = {r["host"]: (r["runs"], r["succeeded"], r["failed"]) for r in rows}
    assert got == {"db-01": (2, 2, 0), "db-02": (2, 0, 2), "web-01": (4, 4, 0), "web-02": (4, 3, 0)}
    assert rows[0]["host"] == "db-02" and rows[0]["rate"] == 0.0
    assert reports.host_summary(session, admin_user, history["now"] + timedelta(days=1)) == []
    # an operator sees only the hosts of tasks granted to them (here: none)
    olga = make_user(session, "olga", "operator")
    assert reports.host_summary(session, olga, history["now"] - timedelta(days=30)) == []


def test_keyset_pages_walk_the_whole_history(session, admin_user, history):
    f = reports.Filters()
    seen, before = [], None
    while True:
        page = reports.execution_page(session, f, before=before, limit=3)
        seen += [e.id for e in page.items]
        if page.older is None:
            break
        before = page.older
    assert seen == sorted((e.id for e in history["executions"]), reverse=True)
    # and back again with ?after=
    last = reports.execution_page(session, f, before=seen[5], limit=3)
    assert [e.id for e in last.items] == seen[6:8] and last.older is None and last.newer == seen[6]
    back = reports.execution_page(session, f, after=last.newer, limit=3)
    assert [e.id for e in back.items] == seen[3:6] and back.newer == seen[3] and back.older == seen[5]


def test_filters_validate_and_restrict(session, admin_user, history):
    def ids(**args):
        f = reports.parse_filters(session, admin_user, args)
        return {e.id for e in reports.execution_page(session, f, limit=100).items}

    ex = history["executions"]
    assert ids(task="backup") == {e.id for e in ex[:3]}
    assert ids(task=str(history["deploy"].id), trigger="schedule") == {ex[4].id, ex[6].id}
    assert ids(host="db-02", status="failed") == {ex[1].id, ex[2].id}
    day = (history["now"] - timedelta(days=6)).date().isoformat()
    assert ex[1].id in ids(**{"from": day, "to": day})
    assert ids(**{"from": "2000-01-01", "to": "2000-01-02"}) == set()
    for bad in ({"from": "yesterday"}, {"status": "exploded"}, {"task": "nope"},
                {"from": "2030-01-02", "to": "2030-01-01"}):
        with pytest.raises(reports.ValidationError):
            reports.parse_filters(session, admin_user, bad)


# --- CSV ---------------------------------------------------------------------------------------

def test_csv_exports(api, history):
    status, body = api.get("/api/v1/reports/executions.csv")
    assert status == 200
    rows = read_csv(body)
    assert [int(r["id"]) for r in rows] == sorted(e.id for e in history["executions"])
    assert list(rows[0].keys()) == reports.EXECUTION_COLUMNS
    failed = next(r for r in rows if r["id"] == str(history["executions"][1].id))
    assert failed["task"] == "backup" and failed["status"] == "failed" and failed["hosts_failed"] == "1"
    assert failed["duration_s"] == "50.000" and failed["created_at"].endswith("+00:00")

    status, body = api.get("/api/v1/reports/executions.csv?task=deploy&from=" +
                           (history["now"] - timedelta(days=4)).date().isoformat())
    assert {r["task"] for r in read_csv(body)} == {"deploy"} and len(read_csv(body)) == 3

    status, body = api.get("/api/v1/reports/operations.csv?task=backup")
    ops = read_csv(body)
    assert list(ops[0].keys()) == reports.OPERATION_COLUMNS
    assert len(ops) == 6 and {o["host"] for o in ops} == {"db-01", "db-02"}
    assert ops[0]["started_at"].endswith("+00:00") and ops[0]["rc"] == "0" and ops[0]["task"] == "backup"
    assert {o["duration_s"] for o in ops} >= {"100.000", "50.000", "30.000"}
    bad = [o for o in ops if o["status"] in ("failed", "unreachable")]
    assert {o["host"] for o in bad} == {"db-02"}
    assert any("Connection refused" in o["message"] for o in bad)

    status, body = api.get("/api/v1/reports/operations.csv?host=web-02&status=running")
    assert [o["status"] for o in read_csv(body)] == ["running"]

    status, body = api.get("/api/v1/reports/executions.csv?from=not-a-date")
    assert status == 422 and body["error"]["field"] == "from"
    status, body = api.get("/api/v1/reports/executions.csv?from=2030-01-01")
    assert status == 200 and body.decode().strip() == ",".join(reports.EXECUTION_COLUMNS)


def test_csv_is_streamed_in_batches_and_safe_for_spreadsheets(app, session, api, monkeypatch):
    task = make_task(session, "=HYPERLINK(\"http://evil\")")
    for _ in range(7):
        make_execution(session, task, "succeeded", hosts={f"h{j}": "succeeded" for j in range(3)})
    session.commit()
    monkeypatch.setattr(reports, "CSV_BATCH", 2)
    monkeypatch.setattr(reports, "CSV_OPS_PER_BATCH", 4)
    resp = api.client.get("/api/v1/reports/executions.csv", headers={"Authorization": f"Bearer {api.token}"})
    assert resp.is_streamed and resp.mimetype == "text/csv"
    assert "attachment" in resp.headers["Content-Disposition"]
    chunks = list(resp.response)
    assert len(chunks) >= 4  # header + batches, not one big string
    rows = read_csv(b"".join(c if isinstance(c, bytes) else c.encode() for c in chunks))
    assert len(rows) == 7 and rows[0]["task"].startswith("'=HYPERLINK")
    status, body = api.get("/api/v1/reports/operations.csv")
    assert len(read_csv(body)) == 21


def test_reports_respect_task_visibility(session, api_as, history):
    operator = api_as("olga", "operator")
    status, body = operator.get("/api/v1/reports/executions.csv")
    assert status == 200 and read_csv(body) == []
    status, body = operator.get("/api/v1/reports/executions.csv?task=backup")
    assert status == 422  # not a task olga can see
    from server.core.models import User
    olga = session.query(User).filter_by(username="olga").one()
    session.add(Policy(name="olga runs deploy", permissions=["execute"], users=[olga], tasks=[history["deploy"]]))
    session.commit()
    status, body = operator.get("/api/v1/reports/executions.csv")
    assert {r["task"] for r in read_csv(body)} == {"deploy"}
    assert session is not None


# --- pages -------------------------------------------------------------------------------------

def test_pages_render_with_data(app, session, admin_user, history):
    client = app.test_client()
    login(client, "admin")
    assert client.get("/").headers["Location"].endswith("/dashboard")
    for asset, marker in (("app.css", b".badge"), ("app.js", b"localizeTimes")):
        resp = client.get(f"/static/{asset}")
        assert resp.status_code == 200 and marker in resp.data
    html = client.get("/dashboard").get_data(as_text=True)
    assert "Success rate per task" in html and "db-02" in html and "<svg" in html and "backup" in html
    for window in ("24h", "7d", "30d"):
        assert client.get(f"/dashboard?window={window}").status_code == 200

    resp = client.get("/executions?task=backup&status=failed")
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200 and html.count('data-href="/executions/') == 2
    assert "/api/v1/reports/executions.csv?" in html
    resp = client.get("/executions?from=garbage")
    assert resp.status_code == 422 and "ISO date" in resp.get_data(as_text=True)
    assert "Older" in client.get("/executions?limit=2").get_data(as_text=True)

    ex = history["executions"][2]
    html = client.get(f"/executions/{ex.id}").get_data(as_text=True)
    assert "Connection refused" in html and 'class="badge status-unreachable"' in html and "db-01" in html
    assert client.get("/executions/999999").status_code == 404
    assert client.get("/executions/99999999999999999999999").status_code == 404
    assert client.get("/executions?before=99999999999999999999999").status_code == 422
    assert client.get("/executions?task=99999999999999").status_code == 422
    assert client.get("/reports/tasks/99999999999999999999").status_code == 404

    running = history["executions"][-1]
    live = client.get(f"/executions/{running.id}/live").get_json()
    assert live["status"] == "running" and live["final"] is False
    assert live["host_count"] == 2 and live["hosts_done"] == 1
    assert {h["name"] for h in live["hosts"]} == {"web-01", "web-02"}
    # a later poll only carries the hosts that can still change
    again = client.get(f"/executions/{running.id}/live?since={quote(live['server_time'])}").get_json()
    assert [h["name"] for h in again["hosts"]] == ["web-02"]

    for path in ("/reports/tasks", f"/reports/tasks/{history['backup'].id}", "/reports/hosts",
                 "/reports/hosts/db-02", "/reports/hosts/db-02?status=unreachable"):
        resp = client.get(path)
        assert resp.status_code == 200, path
    assert "disk full" in client.get("/reports/hosts/db-02").get_data(as_text=True)


def test_empty_states_say_what_to_do(app, session, admin_user):
    client = app.test_client()
    login(client, "admin")
    html = client.get("/dashboard").get_data(as_text=True)
    assert 'class="empty"' in html and "Go to tasks" in html
    html = client.get("/executions").get_data(as_text=True)
    assert "Nothing has run yet" in html
    html = client.get("/executions?status=failed").get_data(as_text=True)
    assert "No executions match" in html


def test_operator_sees_only_permitted_executions(app, session, history):
    make_user(session, "otto", "operator")
    client = app.test_client()
    login(client, "otto")
    html = client.get("/executions").get_data(as_text=True)
    assert "Nothing has run yet" in html
    assert client.get(f"/executions/{history['executions'][0].id}").status_code == 404  # not told it exists
    assert client.get(f"/reports/tasks/{history['backup'].id}").status_code == 403
    html = client.get("/dashboard").get_data(as_text=True)
    assert "backup" not in html
