"""Real time, real processes: ``flask --app wsgi scheduler`` fires a ``* * * * *`` schedule
and ``flask --app wsgi worker`` runs it against a real sshd (tests/sshlab.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from server.core.models import Execution, EXECUTION_FINAL, ScheduleFire
from tests.sshlab import SSHLab

REPO = Path(__file__).resolve().parent.parent
FLASK = str(Path(sys.executable).parent / "flask")

pytestmark = pytest.mark.slow


def start(*args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([FLASK, "--app", "wsgi", *args], cwd=REPO, env=dict(os.environ),
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen, timeout: float = 15) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return proc.returncode


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_scheduler_process_fires_every_minute_schedule_and_worker_runs_it(api, session, tmp_path):
    with SSHLab(1) as lab:
        srv = lab.servers[0]
        assert api.post("/api/v1/hosts", {"name": srv.name, "address": srv.address, "port": srv.port})[0] == 201
        status, body = api.post("/api/v1/credentials", {"name": "lab-key", "kind": "ssh_key", "username": lab.user,
                                                        "secret": lab.private_key})
        assert status == 201, body
        status, task = api.post("/api/v1/tasks", {"name": "minutely", "kind": "commands", "hosts": [srv.name],
                                                  "credential": "lab-key", "commands": ["echo scheduled-hello"]})
        assert status == 201, task
        scheduler = start("scheduler", log=tmp_path / "scheduler.log")
        worker = start("worker", log=tmp_path / "worker.log")
        try:
            live = wait_for(lambda: api.get("/api/v1/scheduler")[1]["schedulers"], 30, "the scheduler's heartbeat")
            assert live[0]["next_fire_at"] is None  # nothing to do: it sleeps
            status, sched = api.post(f"/api/v1/tasks/{task['id']}/schedules", {"cron": "* * * * *", "timezone": "UTC"})
            assert status == 201, sched
            # the API's change notification wakes it at once (its idle poll is 30 s)
            due = datetime.fromisoformat(sched["next_fire_at"])
            wait_for(lambda: any(h["next_fire_at"] and datetime.fromisoformat(h["next_fire_at"]) == due
                                 for h in api.get("/api/v1/scheduler")[1]["schedulers"]), 3,
                     "the scheduler to notice the new schedule")
            def fired():
                session.expire_all()
                return session.execute(
                    select(Execution).where(Execution.schedule_id == sched["id"]).order_by(Execution.id)
                ).scalars().first()

            ex = wait_for(fired, 75, "the scheduler to fire")
            assert ex.trigger == "schedule" and ex.scheduled_for.second == 0
            # woken at the due instant, not by a coarse poll
            assert ex.queued_at - ex.scheduled_for < timedelta(seconds=2), (ex.queued_at, ex.scheduled_for)

            def finished():
                session.expire_all()
                row = session.get(Execution, ex.id)
                return row if row.status in EXECUTION_FINAL else None

            done = wait_for(finished, 90, "the worker to finish the scheduled run")
            assert done.status == "succeeded", (done.status, done.message, (tmp_path / "worker.log").read_text()[-3000:])
            status, detail = api.get(f"/api/v1/executions/{ex.id}")
            assert "scheduled-hello" in detail["operations"][0]["stdout"]
            fires = session.execute(select(ScheduleFire).where(ScheduleFire.schedule_id == sched["id"])).scalars().all()
            assert [(f.outcome, f.execution_id) for f in fires][:1] == [("fired", ex.id)]
            assert len({f.due_at for f in fires}) == len(fires)
            # a SIGTERM while sleeping until the next minute stops it promptly
            t0 = time.monotonic()
            assert stop(scheduler) == 0
            assert time.monotonic() - t0 < 5
        finally:
            stop(scheduler)
            stop(worker)
        log = (tmp_path / "scheduler.log").read_text()
        assert "Traceback" not in log, log[-3000:]
