"""The execution is final when its last host's result is in, not when ansible-playbook has exited.

Seen from outside with a real worker process: the moment the database says the execution
is final, the run's ansible-playbook (found by its process marker, procs.py) is still
exiting, and the final status, audit row and operations are all there already.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, select

from server.core.models import EXECUTION_FINAL, AuditLog, Execution, Operation
from server.runs import procs

REPO = Path(__file__).resolve().parent.parent


def _worker(env: dict[str, str]) -> subprocess.Popen:
    flask = str(Path(sys.executable).parent / "flask")
    return subprocess.Popen([flask, "--app", "wsgi", "worker", "--burst"], cwd=REPO, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run_alive(ex_id: int, worker_pid: int) -> bool:
    return any(mark.startswith(f"{ex_id}:{worker_pid}:") and any(not p.is_ssh_master for p in found)
               for mark, found in procs.marked().items())


def test_final_at_the_last_hosts_result_not_at_ansibles_exit(api, session, env):
    assert api.post("/api/v1/hosts", {"name": "controller", "address": "localhost", "protocol": "local"})[0] == 201
    status, task = api.post("/api/v1/tasks", {"name": "quick", "kind": "commands", "hosts": ["controller"],
                                              "commands": ["echo one", "echo two"]})
    assert status == 201, task
    status, ex = api.post(f"/api/v1/tasks/{task['id']}/executions", None)
    assert status == 202, ex
    engine = create_engine(env["TASKMANAGER_DATABASE_URL"])
    # started cold: a warm run's ansible-playbook (runs/warm.py) ends within milliseconds of its
    # last result, too soon to be seen alive here; the final status comes from the recorder either way
    worker = _worker({**env, "TASKMANAGER_WARM": "0"})
    final_seen, alive_then = None, None
    try:
        deadline = time.monotonic() + 120
        with engine.connect() as conn:
            while time.monotonic() < deadline and worker.poll() is None:
                now = conn.execute(select(Execution.status).where(Execution.id == ex["id"])).scalar()
                conn.rollback()
                if now in EXECUTION_FINAL:
                    alive_then = _run_alive(ex["id"], worker.pid)
                    final_seen = now
                    break
                time.sleep(0.003)
        out, _ = worker.communicate(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
        engine.dispose()
    assert final_seen == "succeeded", out[-3000:]
    assert alive_then, "the execution turned final only after ansible-playbook had exited"
    assert "already" not in out  # the worker's own finish found it final and said nothing
    session.expire_all()
    row = session.get(Execution, ex["id"])
    assert row.status == "succeeded" and row.hosts_done == 1 and row.finished_at is not None
    op = session.execute(select(Operation).where(Operation.execution_id == ex["id"])).scalar_one()
    assert op.status == "succeeded" and [s.stdout for s in op.steps] == ["one\n", "two\n"]
    finishes = session.execute(select(AuditLog.action).where(
        AuditLog.target_type == "execution", AuditLog.target_id == str(ex["id"]),
        AuditLog.action == "execution.finish")).scalars().all()
    assert finishes == ["execution.finish"]  # once, by whichever call made it final
