"""Executions that never get stuck and never run twice, end to end: real worker processes
(``flask --app wsgi worker``, with their reaper thread), real Redis, real sshd servers
(tests/sshlab.py), SQLite or PostgreSQL. Cancel, timeout, kill -9 of a worker, Redis
flushed under queued executions, per-task concurrency, retries of unreachable hosts.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from server.runs import procs
from server.core.models import AuditLog, Execution
from tests.sshlab import SSHLab

REPO = Path(__file__).resolve().parent.parent
FAST = {  # seconds, so that the tests stay short
    "TASKMANAGER_HEARTBEAT_S": "1",
    "TASKMANAGER_LOST_AFTER_S": "4",
    "TASKMANAGER_REAPER_INTERVAL_S": "1",
    "TASKMANAGER_REQUEUE_GRACE_S": "1",
    "TASKMANAGER_LOG_LEVEL": "INFO",  # each run's account in the worker logs a failure shows
}


@pytest.fixture(scope="module")
def lab():
    with SSHLab(3) as lab:
        yield lab


class Workers:
    """Real worker processes; stopped (and their runs with them) at the end of the test."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env = {**os.environ, **env, **FAST}
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []

    def start(self, n: int = 1, names: list[str] | None = None, **extra: str) -> list[subprocess.Popen]:
        started = []
        for i in range(n):
            log = open(self.tmp / f"worker-{len(self.procs)}.log", "wb")
            proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "flask"), "--app", "wsgi", "worker",
                 *(["--name", names[i]] if names else [])],
                cwd=REPO, env={**self.env, **extra}, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.procs.append(proc)
            started.append(proc)
        return started

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.tmp.glob("worker-*.log")))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)


@pytest.fixture
def workers(env, tmp_path):
    w = Workers(env, tmp_path)
    yield w
    w.stop()


def setup_hosts(api, lab: SSHLab, servers=None) -> tuple[list[str], str]:
    names = []
    for srv in servers or lab.servers:
        status, body = api.post("/api/v1/hosts", {"name": srv.name, "address": srv.address, "port": srv.port})
        assert status == 201, body
        names.append(srv.name)
    status, body = api.post("/api/v1/credentials", {"name": "lab-key", "kind": "ssh_key", "username": lab.user,
                                                    "secret": lab.private_key})
    assert status == 201, body
    return names, "lab-key"


def add_task(api, **fields) -> int:
    status, body = api.post("/api/v1/tasks", {"kind": "commands", **fields})
    assert status == 201, body
    return body["id"]


def start(api, task_id: int) -> int:
    status, body = api.post(f"/api/v1/tasks/{task_id}/executions")
    assert status == 202, body
    return body["id"]


def execution(session, ex_id: int) -> Execution:
    session.rollback()
    session.expire_all()
    return session.get(Execution, ex_id)


def wait_for(pred, timeout: float, what: str, workers: Workers | None = None, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}" + (f"\n{workers.logs()}" if workers else ""))


def running_step(session, ex_id: int, name: str) -> bool:
    ex = execution(session, ex_id)
    return ex.status == "running" and any(
        s.name.endswith(name) and s.status == "running" for op in ex.operations for s in op.steps
    )


def all_sleeping(session, ex_id: int, name: str, n: int) -> bool:
    ex = execution(session, ex_id)
    return ex.status == "running" and sum(
        1 for op in ex.operations for s in op.steps if s.name.endswith(name) and s.status == "running") == n


def run_processes(ex_id: int, workers: Workers) -> list[procs.Proc]:
    """Local processes of this test's runs of ``ex_id``, other than ssh ControlPersist masters.

    (Other tests on the machine have their own databases, hence the same execution ids:
    the marker's worker pid tells ours apart.)"""
    mine = {f"{ex_id}:{p.pid}:" for p in workers.procs}
    return [p for m, ps in procs.marked().items() if any(m.startswith(x) for x in mine)
            for p in ps if not p.is_ssh_master]


def starts(session, ex_id: int) -> int:
    session.rollback()
    return len(session.execute(select(AuditLog.id).where(
        AuditLog.action == "execution.start", AuditLog.target_id == str(ex_id))).all())


# ------------------------------------------------------------------ cancel


def test_cancel_stops_a_sleeping_run_within_5_s(api, session, lab, workers):
    hosts, cred = setup_hosts(api, lab)
    task = add_task(api, name="sleepy", hosts=hosts, credential=cred, commands=["echo before", "sleep 60"])
    workers.start(1)
    ex_id = start(api, task)
    wait_for(lambda: all_sleeping(session, ex_id, "sleep 60", len(hosts)), 60, "sleep 60 on every host", workers)
    running = run_processes(ex_id, workers)
    assert any(p.cmdline.find("ansible-playbook") >= 0 for p in running)
    assert any("warm_process.py" in p.cmdline for p in running)  # started warm (runs/warm.py), marked as the run

    t0 = time.monotonic()
    status, body = api.post(f"/api/v1/executions/{ex_id}/cancel")
    assert status in (200, 202), body
    wait_for(lambda: execution(session, ex_id).status == "cancelled", 10, "status cancelled", workers, step=0.02)
    latency = time.monotonic() - t0
    print(f"\ncancel latency: {latency:.2f} s")
    assert latency < 5

    ex = execution(session, ex_id)
    assert ex.finished_at is not None
    for op in ex.operations:
        assert op.status == "cancelled", (op.host_name, op.status)
        first, second = op.steps
        assert first.status == "succeeded" and first.stdout.strip() == "before"  # partial results kept
        assert second.status == "cancelled"
    # No ansible-playbook, fork worker or per-host ssh client of the run is left; only the
    # shared ssh ControlPersist masters may remain (see server/runs/procs.py for why).
    leftovers = run_processes(ex_id, workers)
    assert leftovers == [], leftovers
    assert starts(session, ex_id) == 1


# ------------------------------------------------------------------ timeout


def test_timeout_keeps_partial_results(api, session, lab, workers):
    hosts, cred = setup_hosts(api, lab)
    task = add_task(api, name="slow", hosts=hosts, credential=cred, timeout_s=8,
                    commands=["echo first-step", "sleep 60"])
    workers.start(1)
    ex_id = start(api, task)
    t0 = time.monotonic()
    wait_for(lambda: execution(session, ex_id).status not in ("queued", "running"), 30, "the timeout", workers)
    ex = execution(session, ex_id)
    assert ex.status == "timed_out", (ex.status, ex.message)
    assert "timed out" in ex.message
    assert time.monotonic() - t0 < 25
    for op in ex.operations:
        assert op.status == "failed" and "timed out" in (op.message or "")
        assert op.steps[0].status == "succeeded" and op.steps[0].stdout.strip() == "first-step"
        assert op.steps[1].status == "failed"
    assert run_processes(ex_id, workers) == []


# ------------------------------------------------------------------ worker loss


def test_killed_worker_becomes_lost_and_is_never_rerun(api, session, lab, workers):
    hosts, cred = setup_hosts(api, lab)
    task = add_task(api, name="doomed", hosts=hosts, credential=cred, commands=["echo partial", "sleep 60"])
    (victim,) = workers.start(1)
    ex_id = start(api, task)
    wait_for(lambda: all_sleeping(session, ex_id, "sleep 60", len(hosts)), 60, "sleep 60 on every host", workers)

    os.kill(victim.pid, signal.SIGKILL)  # SimpleWorker: the job runs in this very process
    t_kill = time.monotonic()
    victim.wait()
    # ansible-playbook outlives its worker until a reaper thread on this machine ends it
    # (any worker's: another test's worker may already have done it).
    workers.start(1)  # another worker (its reaper thread) notices
    wait_for(lambda: execution(session, ex_id).status == "lost", 90, "status lost", workers, step=0.1)
    detect = time.monotonic() - t_kill
    print(f"\nlost detected {detect:.1f} s after kill -9 (threshold {FAST['TASKMANAGER_LOST_AFTER_S']} s)")
    assert detect < 90

    ex = execution(session, ex_id)
    assert "heartbeat" in ex.message
    for op in ex.operations:
        assert op.steps[0].stdout.strip() == "partial"  # partial results kept
        assert op.status == "failed"
    # The orphaned run was ended on this machine, and nothing ran it again.
    wait_for(lambda: run_processes(ex_id, workers) == [], 10, "orphans of the dead worker ended", workers)
    time.sleep(2)
    assert starts(session, ex_id) == 1
    session.rollback()
    assert session.execute(select(Execution).where(Execution.parent_id == ex_id)).first() is None
    assert execution(session, ex_id).status == "lost"


def test_retry_on_lost_runs_a_new_execution(api, session, lab, workers, tmp_path):
    hosts, cred = setup_hosts(api, lab, lab.servers[:1])
    flag = f"/tmp/tm-retry-{uuid.uuid4().hex}"
    task = add_task(api, name="retrying", hosts=hosts, credential=cred, retry_on_lost=True,
                    commands=[f"if [ -e {flag} ]; then echo second-time; else touch {flag}; sleep 60; fi"])
    (victim,) = workers.start(1)
    ex_id = start(api, task)
    wait_for(lambda: os.path.exists(flag), 60, "the first run to start its command", workers)  # same machine
    os.kill(victim.pid, signal.SIGKILL)
    workers.start(1)
    wait_for(lambda: execution(session, ex_id).status == "lost", 60, "lost", workers)

    def child():
        session.rollback()
        return session.execute(select(Execution).where(Execution.parent_id == ex_id)).scalar_one_or_none()

    retry = wait_for(lambda: (c := child()) is not None and c.status == "succeeded" and c, 60, "the retry", workers)
    assert retry.attempt == 2 and retry.parent_id == ex_id
    assert retry.operations[0].stdout.strip() == "second-time"
    actions = set(session.execute(select(AuditLog.action)).scalars())
    assert {"execution.lost", "execution.retry"} <= actions
    os.path.exists(flag) and os.unlink(flag)


def test_sigterm_lets_the_running_execution_finish(api, session, lab, workers):
    """What ``systemctl stop`` does (KillMode=mixed): the worker finishes its run, then exits."""
    hosts, cred = setup_hosts(api, lab, lab.servers[:1])
    task = add_task(api, name="graceful", hosts=hosts, credential=cred, commands=["sleep 3", "echo done"])
    (worker,) = workers.start(1)
    ex_id = start(api, task)
    wait_for(lambda: running_step(session, ex_id, "sleep 3"), 60, "sleep 3", workers)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0, workers.logs()
    ex = execution(session, ex_id)
    assert ex.status == "succeeded", (ex.status, ex.message)
    assert ex.operations[0].steps[-1].stdout.strip() == "done"


# ------------------------------------------------------------------ Redis loss


def test_redis_flushed_under_queued_executions(api, session, lab, workers):
    from server.core.redis_conn import redis

    hosts, cred = setup_hosts(api, lab, lab.servers[:1])
    first = add_task(api, name="busy", hosts=hosts, credential=cred, commands=["sleep 3"])
    others = [add_task(api, name=f"queued-{i}", hosts=hosts, credential=cred, allow_simultaneous=True,
                       commands=[f"echo run-{i}"]) for i in range(3)]
    workers.start(1)
    busy = start(api, first)
    wait_for(lambda: execution(session, busy).status == "running", 60, "the busy run", workers)
    queued = [start(api, t) for t in others]
    redis().flushdb()  # Redis loses every queued job (and the worker's registration)

    for ex_id in [busy, *queued]:
        wait_for(lambda ex_id=ex_id: execution(session, ex_id).status == "succeeded", 60, f"execution {ex_id}", workers, 0.1)
    for ex_id in [busy, *queued]:
        assert starts(session, ex_id) == 1  # none lost, none run twice


# ------------------------------------------------------------------ concurrency


def test_second_run_waits_for_the_first(api, session, lab, workers):
    hosts, cred = setup_hosts(api, lab, lab.servers[:2])
    task = add_task(api, name="exclusive", hosts=hosts, credential=cred, commands=["sleep 2"])
    workers.start(2)  # a free worker must not start the second run early
    a, b = start(api, task), start(api, task)
    try:
        wait_for(lambda: all(execution(session, x).status == "succeeded" for x in (a, b)), 90, "both runs", workers, 0.1)
    except AssertionError as exc:
        raise AssertionError(f"statuses {[(x, execution(session, x).status) for x in (a, b)]}; {exc}") from None
    ea, eb = execution(session, a), execution(session, b)
    first, second = sorted([ea, eb], key=lambda e: e.started_at)
    assert second.started_at >= first.finished_at  # never at the same time
    assert starts(session, a) == starts(session, b) == 1


# ------------------------------------------------------------------ retries of unreachable hosts


def test_unreachable_host_is_retried_within_the_execution(api, session, lab, workers):
    hosts, cred = setup_hosts(api, lab, lab.servers[:2])
    down = lab.servers[1]
    task = add_task(api, name="flaky", hosts=hosts, credential=cred, retry_attempts=3, retry_delay_s=2,
                    commands=["echo hello"])
    lab.stop_server(down.index)
    try:
        workers.start(1)
        ex_id = start(api, task)

        def first_attempt_unreachable():
            ex = execution(session, ex_id)
            return any(op.host_name == down.name and op.steps and op.steps[-1].status == "unreachable"
                       for op in ex.operations)

        wait_for(first_attempt_unreachable, 60, "attempt 1 unreachable", workers)
        lab.start_server(down.index)
    finally:
        lab.start_server(down.index)
    wait_for(lambda: execution(session, ex_id).status not in ("queued", "running"), 60, "the end", workers)
    ex = execution(session, ex_id)
    assert ex.status == "succeeded", ex.message
    ops = {op.host_name: op for op in ex.operations}
    flaky = ops[down.name]
    assert flaky.status == "succeeded" and "hello" in flaky.stdout
    statuses = [s.status for s in flaky.steps]
    assert statuses[0] == "unreachable" and statuses[-1] == "succeeded"  # every attempt stays visible
    assert [s.seq for s in flaky.steps] == list(range(1, len(flaky.steps) + 1))
    assert "attempt" in flaky.steps[-1].name
    # The reachable host ran once.
    assert len(ops[hosts[0]].steps) == 1 and ops[hosts[0]].status == "succeeded"
    assert starts(session, ex_id) == 1


@pytest.mark.slow
def test_lost_within_90_s_with_default_settings(api, session, lab, workers):
    """The production thresholds: heartbeat 10 s, lost after 60 s, sweep every 15 s."""
    hosts, cred = setup_hosts(api, lab, lab.servers[:1])
    task = add_task(api, name="doomed-default", hosts=hosts, credential=cred, commands=["sleep 120"])
    defaults = {"TASKMANAGER_HEARTBEAT_S": "10", "TASKMANAGER_LOST_AFTER_S": "60",
                "TASKMANAGER_REAPER_INTERVAL_S": "15", "TASKMANAGER_REQUEUE_GRACE_S": "5"}
    (victim,) = workers.start(1, **defaults)
    ex_id = start(api, task)
    wait_for(lambda: running_step(session, ex_id, "sleep 120"), 60, "sleep 120", workers)
    time.sleep(8)  # somewhere inside a heartbeat period
    os.kill(victim.pid, signal.SIGKILL)
    t_kill = time.monotonic()
    workers.start(1, **defaults)
    wait_for(lambda: execution(session, ex_id).status == "lost", 95, "status lost", workers, step=0.5)
    detect = time.monotonic() - t_kill
    print(f"\nlost detected {detect:.1f} s after kill -9 with the default settings")
    assert detect < 90
    assert starts(session, ex_id) == 1
