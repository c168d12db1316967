"""Scale-out: several worker processes sharing one Redis and one database run every
execution exactly once (SQLite or PostgreSQL, per ``TM_TEST_DB``)."""
from __future__ import annotations

import collections
import time
import uuid

from sqlalchemy import select

from server.core.models import AuditLog, Execution
from tests.loopback import Listener
from tests.test_robustness_e2e import Workers, wait_for, workers  # noqa: F401  (fixture)

N_WORKERS = 3
N_EXECUTIONS = 30


def test_three_workers_thirty_executions_each_runs_once(api, session, workers):  # noqa: F811
    ledger = Listener()  # a run's file writes would stay in its sandbox: the ledger is on loopback
    ledger.start()
    send = ("python3 -c 'import socket,sys; "
            f"socket.create_connection((\"127.0.0.1\", {ledger.port})).sendall(sys.argv[1].encode())'")
    status, body = api.post("/api/v1/hosts", {"name": "controller", "address": "127.0.0.1", "protocol": "local"})
    assert status == 201, body
    # Ten tasks, three runs each; allow_simultaneous so the workers really run them in parallel.
    tasks = []
    for i in range(10):
        status, body = api.post("/api/v1/tasks", {
            "name": f"scale-{i}", "kind": "commands", "hosts": ["controller"], "allow_simultaneous": i % 2 == 0,
            "commands": [f"{send} task-{i}-$PPID-$$"],
        })
        assert status == 201, body
        tasks.append(body["id"])

    names = [f"scale-{uuid.uuid4().hex[:8]}-{i}" for i in range(N_WORKERS)]
    procs = workers.start(N_WORKERS, names=names)
    from server.core.redis_conn import redis

    # Connection names, not RQ's registry keys: other tests on this machine flush the
    # shared Redis database (which this test survives: the reaper re-enqueues).
    wait_for(lambda: set(names) <= {c.get("name") for c in redis().client_list()}, 60,
             "the workers to connect", workers, 0.1)
    t0 = time.monotonic()
    ids = []
    for k in range(N_EXECUTIONS):
        status, body = api.post(f"/api/v1/tasks/{tasks[k % 10]}/executions")
        assert status == 202, body
        ids.append(body["id"])

    def finished() -> bool:
        session.rollback()
        rows = session.execute(select(Execution.status).where(Execution.id.in_(ids))).scalars().all()
        return all(s not in ("queued", "running") for s in rows)

    wait_for(finished, 240, "every execution to finish", workers, 0.2)
    elapsed = time.monotonic() - t0
    session.rollback()
    exs = session.execute(select(Execution).where(Execution.id.in_(ids))).scalars().all()
    assert len(exs) == N_EXECUTIONS
    assert all(e.status == "succeeded" for e in exs), [(e.id, e.status, e.message) for e in exs if e.status != "succeeded"]

    # Exactly once: one start in the audit trail per execution, one ledger line per run.
    starts = collections.Counter(session.execute(
        select(AuditLog.target_id).where(AuditLog.action == "execution.start")).scalars())
    assert sorted(starts) == sorted(str(i) for i in ids) and set(starts.values()) == {1}
    ledger.stop()
    lines = [data.decode() for data in ledger.received]
    per_task = collections.Counter(line.split("-")[1] for line in lines)
    assert len(lines) == N_EXECUTIONS and set(per_task.values()) == {3}, per_task
    # The work really was shared, and every worker stayed alive.
    by_worker = collections.Counter(e.worker_name for e in exs)
    assert len(by_worker) == N_WORKERS, by_worker
    assert all(p.poll() is None for p in procs)
    print(f"\n{N_EXECUTIONS} executions on {N_WORKERS} workers in {elapsed:.1f} s: {dict(by_worker)}")
