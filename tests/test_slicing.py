"""One execution split into slices that two real worker processes run at once (runs/slicing.py).

Hosts are ``local`` (they run inside each slice's sandbox on this machine), two hosts per
slice (``TASKMANAGER_SLICE_HOSTS=2``), so four hosts make two slices.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from server.core.models import EXECUTION_FINAL, AuditLog, Execution, ExecutionSlice, Operation
from server.runs import procs

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def workers(env):
    """Two long-running workers, both registered before the test requests anything."""
    from rq import Worker

    from server.core.redis_conn import redis

    env = {**os.environ, **env, "TASKMANAGER_SLICE_HOSTS": "2", "TASKMANAGER_HEARTBEAT_S": "0.5"}
    flask = str(Path(sys.executable).parent / "flask")
    started = [subprocess.Popen([flask, "--app", "wsgi", "worker", "--name", f"slicer-{i}-{os.getpid()}"], cwd=REPO,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in (1, 2)]
    deadline = time.monotonic() + 60
    while len([w for w in Worker.all(connection=redis()) if w.name.startswith("slicer-")]) < 2:
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.2)
    yield started
    for proc in started:
        proc.send_signal(signal.SIGTERM)
    for proc in started:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _setup(api, commands: list[str], **task) -> int:
    status, body = api.post("/api/v1/hosts", [{"name": f"local{i}", "address": "localhost", "protocol": "local"}
                                              for i in range(4)])
    assert status == 201, body
    status, task = api.post("/api/v1/tasks", {"name": "sliced", "kind": "commands", "commands": commands,
                                              "hosts": [f"local{i}" for i in range(4)], **task})
    assert status == 201, task
    status, ex = api.post(f"/api/v1/tasks/{task['id']}/executions", None)
    assert status == 202, ex
    return ex["id"]


def _wait(env, ex_id: int, until, timeout: float = 120):
    engine = create_engine(env["TASKMANAGER_DATABASE_URL"])
    try:
        deadline = time.monotonic() + timeout
        with engine.connect() as conn:
            while True:
                ex = conn.execute(select(Execution.status).where(Execution.id == ex_id)).scalar()
                slices = conn.execute(select(ExecutionSlice.status).where(ExecutionSlice.execution_id == ex_id)
                                      .order_by(ExecutionSlice.index)).scalars().all()
                conn.rollback()
                if until(ex, slices):
                    return ex, slices
                assert time.monotonic() < deadline, (ex, slices)
                time.sleep(0.05)
    finally:
        engine.dispose()


def test_two_workers_run_the_slices_of_one_execution(api, session, env, workers):
    ex_id = _setup(api, ["sleep 2", "echo slice-of-$(hostname)"])
    status, slices = _wait(env, ex_id, lambda ex, sl: ex in EXECUTION_FINAL)
    assert status == "succeeded" and slices == ["succeeded", "succeeded"]
    session.expire_all()
    rows = session.execute(select(ExecutionSlice).where(ExecutionSlice.execution_id == ex_id)
                           .order_by(ExecutionSlice.index)).scalars().all()
    assert [r.hosts for r in rows] == [2, 2]
    assert len({r.worker_name for r in rows}) == 2  # each worker ran one slice
    assert all(r.heartbeat_at > r.started_at for r in rows)  # each slice beat its own heartbeat
    ops = session.execute(select(Operation).where(Operation.execution_id == ex_id)
                          .order_by(Operation.host_name)).scalars().all()
    assert [(o.host_name, o.slice, o.status) for o in ops] == [
        ("local0", 0, "succeeded"), ("local1", 0, "succeeded"), ("local2", 1, "succeeded"), ("local3", 1, "succeeded")]
    assert all(o.steps[-1].stdout == "slice-of-taskmanager-run\n" for o in ops)
    status, body = api.get(f"/api/v1/executions/{ex_id}")
    assert body["status"] == "succeeded" and body["host_count"] == 4 and body["hosts_done"] == 4
    actions = session.execute(select(AuditLog.action).where(
        AuditLog.target_type == "execution", AuditLog.target_id == str(ex_id)).order_by(AuditLog.id)).scalars().all()
    assert actions == ["execution.request", "execution.start", "execution.slice", "execution.finish"]


def test_cancel_ends_every_slice_and_its_whole_tree(api, session, env, workers):
    ex_id = _setup(api, ["sleep 120"])
    _wait(env, ex_id, lambda ex, sl: sl == ["running", "running"])
    time.sleep(2)  # ansible-playbook and the sleeps are up in both slices
    mine = tuple(f"{ex_id}:{w.pid}:" for w in workers)  # other tests on the machine have an execution 1 too
    assert any(m.startswith(mine) for m in procs.marked())
    began = time.monotonic()
    status, body = api.post(f"/api/v1/executions/{ex_id}/cancel", None)
    assert status == 202, body
    status, slices = _wait(env, ex_id, lambda ex, sl: ex in EXECUTION_FINAL, timeout=30)
    assert status == "cancelled" and slices == ["cancelled", "cancelled"]
    assert time.monotonic() - began < 15
    assert not [m for m in procs.marked() if m.startswith(mine)]  # no process of either slice is left
    session.expire_all()
    ops = session.execute(select(Operation.status).where(Operation.execution_id == ex_id)).scalars().all()
    assert sorted(ops) == ["cancelled"] * 4


def test_timeout_ends_every_slice(api, session, env, workers):
    ex_id = _setup(api, ["sleep 120"], timeout_s=8)
    status, slices = _wait(env, ex_id, lambda ex, sl: ex in EXECUTION_FINAL, timeout=90)
    assert status == "timed_out" and slices == ["timed_out", "timed_out"]
    assert not [m for m in procs.marked() if m.startswith(tuple(f"{ex_id}:{w.pid}:" for w in workers))]
    session.expire_all()
    ops = session.execute(select(Operation).where(Operation.execution_id == ex_id)).scalars().all()
    assert {o.status for o in ops} == {"failed"} and all("timed out" in (o.message or "") for o in ops)


def test_a_slice_without_heartbeat_makes_the_execution_lost(api, session, env):
    from datetime import timedelta

    from server.core.models import utcnow
    from server.executions import reaper

    ex_id = _setup(api, ["true"])
    session.expire_all()
    ex = session.get(Execution, ex_id)
    now = utcnow()
    ex.status, ex.started_at, ex.heartbeat_at = "running", now, now  # the other slice still beats
    session.add_all([ExecutionSlice(execution_id=ex_id, index=0, hosts=2, status="running", heartbeat_at=now),
                     ExecutionSlice(execution_id=ex_id, index=1, hosts=2, status="running",
                                    heartbeat_at=now - timedelta(seconds=300))])
    session.commit()
    assert reaper.mark_lost(session, utcnow(), 60) == [ex_id]
    session.expire_all()
    ex = session.get(Execution, ex_id)
    assert ex.status == "lost" and ex.cancel_requested  # the live slice sees it and stops
