"""Hostile robustness: aborted exports, an exhausted connection pool, dates out of range.

Streams are tested against the app over real HTTP (werkzeug, threaded, on loopback), with
clients that abandon their downloads midway, as a browser tab closed during an export does.
"""
from __future__ import annotations

import gc
import socket
import threading
import time
from datetime import timedelta

import pytest
import requests
from sqlalchemy import insert

from server.core import audit, db
from server.core.models import Execution, Operation, utcnow
from tests.reportdata import make_task

EXPORTS = ("/api/v1/reports/executions.csv", "/api/v1/reports/operations.csv", "/api/v1/audit/export.jsonl")


def _history(session, executions: int = 1500, hosts: int = 8) -> None:
    """Enough rows that each export is megabytes: it cannot sit in the socket buffers."""
    task = make_task(session, "big-history")
    start = utcnow() - timedelta(days=2)
    session.execute(insert(Execution), [
        {"task_id": task.id, "status": "succeeded", "trigger": "manual", "created_at": start + timedelta(seconds=i),
         "started_at": start + timedelta(seconds=i + 1), "finished_at": start + timedelta(seconds=i + 9),
         "host_count": hosts, "hosts_done": hosts, "revision": "abc123", "reason": "nightly " * 8, "vars": {}}
        for i in range(executions)
    ])
    ids = [row[0] for row in session.execute(Execution.__table__.select().with_only_columns(Execution.id))]
    session.execute(insert(Operation), [
        {"execution_id": ex_id, "host_name": f"web-{h:03d}.example.internal", "status": "succeeded", "rc": 0,
         "started_at": start, "finished_at": start + timedelta(seconds=8), "message": "done " * 10,
         "stdout": "", "stderr": ""}
        for ex_id in ids for h in range(hosts)
    ])
    audit.record_many(session, [("test.filler", {"actor": "bench", "n": i, "pad": "x" * 200}) for i in range(6000)])
    session.commit()


def _abandon(url: str, token: str, keep: int = 8192) -> int:
    """Start a download, read ``keep`` bytes of the body, then drop the connection."""
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    path = "/" + url.split("//", 1)[1].split("/", 1)[1]
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                     f"Connection: close\r\n\r\n".encode())
        got = b""
        while len(got) < keep:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
    assert got.startswith(b"HTTP/1.1 200"), got[:200]
    return len(got)


def _wait_pool_idle(baseline: int, seconds: float = 15) -> int:
    deadline = time.monotonic() + seconds
    while True:
        out = db.engine().pool.checkedout()
        if out <= baseline or time.monotonic() > deadline:
            return out
        time.sleep(0.1)


def test_abandoned_exports_give_their_connections_back(api, session, live_server):
    """60 downloads from 4 clients, each abandoned midway: afterwards no connection is still
    checked out and ``/api/v1/me`` answers at once. Garbage collection is off while they
    run, so only a deterministic release counts."""
    _history(session)
    session.close()
    baseline = db.engine().pool.checkedout()
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            for i in range(15):
                _abandon(live_server + EXPORTS[(n + i) % len(EXPORTS)], api.token)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    gc.disable()
    try:
        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not errors, errors
        assert _wait_pool_idle(baseline) <= baseline, "an abandoned export still holds a database connection"
        started = time.monotonic()
        me = requests.get(f"{live_server}/api/v1/me", headers={"Authorization": f"Bearer {api.token}"}, timeout=30)
        assert me.status_code == 200 and time.monotonic() - started < 5
    finally:
        gc.enable()


def test_a_complete_export_still_has_every_row(api, session, live_server):
    _history(session, executions=300, hosts=3)
    session.close()
    baseline = db.engine().pool.checkedout()
    headers = {"Authorization": f"Bearer {api.token}"}
    ops = requests.get(f"{live_server}/api/v1/reports/operations.csv", headers=headers, timeout=60)
    assert ops.status_code == 200 and len(ops.text.strip().splitlines()) == 1 + 300 * 3
    exe = requests.get(f"{live_server}/api/v1/reports/executions.csv", headers=headers, timeout=60)
    assert exe.status_code == 200 and len(exe.text.strip().splitlines()) == 1 + 300
    lines = requests.get(f"{live_server}/api/v1/audit/export.jsonl", headers=headers, timeout=60).text.splitlines()
    assert len(lines) >= 6000 and all(line.startswith("{") for line in lines)
    assert _wait_pool_idle(baseline) <= baseline


# --- an exhausted pool is "busy, retry", never a 500 ----------------------------------------------


def test_pool_exhaustion_is_503_with_retry_after_for_api_and_pages(api, app, session):
    from tests.test_reports import login

    web = app.test_client()
    login(web, "admin")
    engine = db.engine()
    capacity = engine.pool.size() + max(engine.pool._max_overflow, 0)
    session.close()
    held = [engine.connect() for _ in range(capacity - engine.pool.checkedout())]
    try:
        started = time.monotonic()
        resp = api.client.get("/api/v1/me", headers={"Authorization": f"Bearer {api.token}"})
        assert time.monotonic() - started < db.DEFAULT_POOL_TIMEOUT_S + 5, "fails fast, not after 30 s"
        assert resp.status_code == 503 and resp.headers["Retry-After"].isdigit()
        assert resp.get_json()["error"]["code"] == "unavailable"
        token = api.client.post("/api/v1/auth/token", json={"username": "admin", "password": "x" * 12})
        assert token.status_code == 503 and "error" in token.get_json()
        page = web.get("/dashboard")
        assert page.status_code == 503 and page.headers["Retry-After"].isdigit()
        assert "busy" in page.get_data(as_text=True) and page.mimetype == "text/html"
    finally:
        for conn in held:
            conn.close()
    assert api.get("/api/v1/me")[0] == 200
    assert web.get("/dashboard").status_code == 200


# --- dates out of range are a 422 naming the field, never a 500 ---------------------------------

EXTREMES = [
    ("to", "9999-12-31"), ("from", "0001-01-01"), ("from", "9999-12-31"), ("to", "0001-01-01"),
    ("from", "0001-01-01T00:00:00+01:00"), ("to", "9999-12-31T23:59:59-01:00"), ("to", "9999-12-31T23:59:59Z"),
    ("from", "99999-01-01"), ("to", "1899-12-31"), ("from", "3000-01-02"), ("from", "2024-13-40"),
]
API_DATED = ("/api/v1/reports/executions.csv", "/api/v1/reports/operations.csv", "/api/v1/audit",
             "/api/v1/audit/export.jsonl")


@pytest.mark.parametrize("name,value", EXTREMES)
def test_api_dates_out_of_range_are_422(api, session, name, value):
    from urllib.parse import quote

    for path in API_DATED:
        status, body = api.get(f"{path}?{name}={quote(value)}")
        assert status == 422, (path, value, status, body)
        assert body["error"]["field"] == name and name in body["error"]["message"], body


def test_web_dates_out_of_range_are_4xx_pages(api, app, session):
    from urllib.parse import quote

    from tests.reportdata import make_execution
    from tests.test_reports import login

    task = make_task(session, "dated")
    ex = make_execution(session, task, "running", hosts={"web-01": "running"})
    session.commit()
    web = app.test_client()
    login(web, "admin")
    for name, value in EXTREMES:
        for path in ("/executions", "/reports/hosts/web-01", "/audit"):
            page = web.get(f"{path}?{name}={quote(value)}")
            assert page.status_code == 422, (path, value, page.status_code)
            assert f"&#39;{name}&#39; must" in page.get_data(as_text=True) or f"'{name}' must" in page.get_data(as_text=True)
        live = web.get(f"/executions/{ex.id}/live?since={quote(value)}")
        assert live.status_code == 422 and live.get_json()["error"]["field"] == "since", (value, live.status_code)
    # In range, each still answers.
    for path in ("/executions?from=2020-01-01&to=2999-12-31", "/reports/hosts/web-01?from=1900-01-01", "/audit?to=2999-12-31",
                 f"/executions/{ex.id}/live?since=2020-01-01T00:00:00%2B02:00"):
        assert web.get(path).status_code == 200, path
    for path in API_DATED:
        assert api.get(f"{path}?from=1900-01-01&to=2999-12-31")[0] == 200, path
