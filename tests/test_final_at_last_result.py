"""The execution is final when its last host's result is in, not when ansible-playbook has exited.

Seen with a real worker process: the worker's own account of the run says the execution
was made final before ansible-playbook's exit (a run made final only at the exit has no
such line), the database agrees, and the final status, audit row and operations are all
there. Watching for the run's process while polling the database stopped working once
the commands ran on threads: ansible-playbook now exits within milliseconds of its last
result.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, select

from server.core.models import EXECUTION_FINAL, AuditLog, Execution, Operation

REPO = Path(__file__).resolve().parent.parent


def _worker(env: dict[str, str]) -> subprocess.Popen:
    flask = str(Path(sys.executable).parent / "flask")
    return subprocess.Popen([flask, "--app", "wsgi", "worker", "--burst"], cwd=REPO,
                            env={**os.environ, **env, "TASKMANAGER_LOG_LEVEL": "INFO"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_final_at_the_last_hosts_result_not_at_ansibles_exit(api, session, env):
    assert api.post("/api/v1/hosts", {"name": "controller", "address": "localhost", "protocol": "local"})[0] == 201
    status, task = api.post("/api/v1/tasks", {"name": "quick", "kind": "commands", "hosts": ["controller"],
                                              "commands": ["echo one", "echo two"]})
    assert status == 201, task
    status, ex = api.post(f"/api/v1/tasks/{task['id']}/executions", None)
    assert status == 202, ex
    engine = create_engine(env["TASKMANAGER_DATABASE_URL"])
    worker = _worker(env)
    final_seen = None
    try:
        deadline = time.monotonic() + 120
        with engine.connect() as conn:
            while time.monotonic() < deadline and worker.poll() is None:
                now = conn.execute(select(Execution.status).where(Execution.id == ex["id"])).scalar()
                conn.rollback()
                if now in EXECUTION_FINAL:
                    final_seen = now
                    break
                time.sleep(0.003)
        out, _ = worker.communicate(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
        engine.dispose()
    assert final_seen == "succeeded", out[-3000:]
    before_exit = re.search(rf"execution {ex['id']}: succeeded .* final ([0-9.]+) s before ansible-playbook's exit", out)
    assert before_exit, out[-3000:]
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
