"""The reaper's repairs against a real database and a real Redis (no worker needed):
lost detection, re-enqueueing after Redis loss, concurrency gating, retention, relaunch."""
from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from rq import Queue
from sqlalchemy import select

from server.executions import concurrency, jobs, reaper
from server.core.models import AuditLog, Execution, Host, Operation, Step, Task, utcnow
from server.core.redis_conn import redis

CFG = reaper.ReaperConfig(lost_after_s=5, requeue_grace_s=0, retention_days=90)


def make_task(session, name="t1", hosts=("h1", "h2", "h3"), **kw) -> Task:
    host_rows = []
    for n in hosts:
        h = session.execute(select(Host).where(Host.name == n)).scalar_one_or_none()
        if h is None:
            h = Host(name=n, address="127.0.0.1")
            session.add(h)
        host_rows.append(h)
    task = Task(name=name, kind="commands", commands=["true"], **kw)
    task.hosts = host_rows
    session.add(task)
    session.commit()
    return task


def make_execution(session, task, status="queued", limit_hosts=None, **kw) -> Execution:
    now = utcnow()
    ex = Execution(task=task, task_id=task.id, status=status, created_at=now, queued_at=now,
                   limit_hosts=limit_hosts, vars={}, **kw)
    session.add(ex)
    session.commit()
    return ex


def job_ids(app) -> list[str]:
    return Queue(app.config["TM"].queue_name, connection=redis()).get_job_ids()


# ------------------------------------------------------------------ lost


def test_stale_running_execution_becomes_lost_with_partial_results(app, session):
    task = make_task(session)
    now = utcnow()
    ex = make_execution(session, task, "running", started_at=now - timedelta(seconds=30),
                        heartbeat_at=now - timedelta(seconds=20), worker_name="w1")
    done = Operation(execution_id=ex.id, host_name="h1", status="succeeded", rc=0, stdout="ok\n")
    half = Operation(execution_id=ex.id, host_name="h2", status="running", stdout="partial\n")
    todo = Operation(execution_id=ex.id, host_name="h3", status="pending")
    session.add_all([done, half, todo])
    session.commit()
    session.add(Step(operation_id=half.id, seq=1, name="first", status="succeeded", stdout="step out"))
    session.commit()

    assert reaper.mark_lost(session, now, CFG.lost_after_s) == [ex.id]
    session.expire_all()
    ex = session.get(Execution, ex.id)
    assert ex.status == "lost" and ex.finished_at is not None and "heartbeat" in ex.message
    by_host = {op.host_name: op for op in ex.operations}
    assert by_host["h1"].status == "succeeded" and by_host["h1"].stdout == "ok\n"
    assert by_host["h2"].status == "failed" and by_host["h2"].stdout == "partial\n"
    assert by_host["h2"].steps[0].stdout == "step out"
    assert by_host["h3"].status == "failed" and "lost" in by_host["h3"].message
    actions = session.execute(select(AuditLog.action).where(AuditLog.target_id == str(ex.id))).scalars().all()
    assert "execution.lost" in actions
    # Idempotent: a second sweep changes nothing, and nothing was re-run or re-queued.
    assert reaper.mark_lost(session, utcnow(), CFG.lost_after_s) == []
    assert session.execute(select(Execution).where(Execution.parent_id == ex.id)).first() is None
    assert job_ids(app) == []


def test_fresh_heartbeat_is_not_lost(app, session):
    task = make_task(session)
    now = utcnow()
    ex = make_execution(session, task, "running", started_at=now - timedelta(minutes=10), heartbeat_at=now)
    assert reaper.mark_lost(session, now + timedelta(seconds=4), CFG.lost_after_s) == []
    assert session.get(Execution, ex.id).status == "running"


def test_retry_on_lost_requests_a_new_execution(app, session):
    task = make_task(session, retry_on_lost=True)
    from server.executions.request import request_execution

    first = request_execution(session, task, None, trigger="manual", enqueue=False)
    session.commit()
    now = utcnow()
    session.execute(
        Execution.__table__.update().where(Execution.id == first.id).values(
            status="running", started_at=now - timedelta(seconds=60), heartbeat_at=now - timedelta(seconds=60)
        )
    )
    session.commit()

    result = reaper.sweep(session, now, CFG)
    assert result["lost"] == 1
    session.expire_all()
    child = session.execute(select(Execution).where(Execution.parent_id == first.id)).scalar_one()
    assert child.status == "queued" and child.attempt == 2
    assert session.get(Execution, first.id).status == "lost"
    assert f"execution-{child.id}" in job_ids(app)
    actions = set(session.execute(select(AuditLog.action)).scalars())
    assert {"execution.lost", "execution.retry"} <= actions


def test_retry_on_lost_refuses_when_task_changed(app, session):
    task = make_task(session, retry_on_lost=True)
    from server.executions.request import request_execution

    first = request_execution(session, task, None, trigger="manual", enqueue=False)
    session.commit()
    task.commands = ["rm -rf /tmp/something-else"]
    first.status, first.heartbeat_at = "running", utcnow() - timedelta(minutes=5)
    session.commit()
    reaper.sweep(session, utcnow(), CFG)
    assert session.execute(select(Execution).where(Execution.parent_id == first.id)).first() is None
    row = session.execute(select(AuditLog).where(AuditLog.action == "execution.retry_skipped")).scalar_one()
    assert "changed" in row.detail["reason"]


# ------------------------------------------------------------------ Redis loss


def test_queued_executions_are_reenqueued_after_redis_flush(app, session):
    task_a = make_task(session, "a", hosts=("h1",))
    task_b = make_task(session, "b", hosts=("h2",))
    exs = [make_execution(session, task_a), make_execution(session, task_b)]
    for ex in exs:
        jobs.enqueue(ex.id)
    redis().flushdb()  # Redis lost everything
    assert job_ids(app) == []

    pushed = reaper.requeue(session, utcnow(), CFG)
    assert sorted(pushed) == sorted(e.id for e in exs)
    assert sorted(job_ids(app)) == sorted(f"execution-{e.id}" for e in exs)
    # Jobs that are still queued are left alone: no duplicates.
    assert reaper.requeue(session, utcnow(), CFG) == []
    assert len(job_ids(app)) == 2


def test_requeue_skips_young_and_finished_executions(app, session):
    task = make_task(session)
    young = make_execution(session, task)
    done = make_execution(session, make_task(session, "t2", hosts=("h9",)), "succeeded")
    cfg = reaper.ReaperConfig(lost_after_s=5, requeue_grace_s=30)
    assert reaper.requeue(session, utcnow(), cfg) == []
    assert job_ids(app) == []
    assert young.id and done.id


def test_job_dead_in_redis_is_reenqueued(app, session):
    """A job Redis thinks finished/failed while the database still says queued."""
    task = make_task(session)
    ex = make_execution(session, task)
    jobs.enqueue(ex.id)
    redis().hset(f"rq:job:execution-{ex.id}", "status", "failed")
    redis().delete(jobs.queue().key)
    assert reaper.requeue(session, utcnow(), CFG) == [ex.id]


# ------------------------------------------------------------------ concurrency


def test_second_run_waits_until_the_first_ends(app, session):
    task = make_task(session)
    first = make_execution(session, task, "running", heartbeat_at=utcnow())
    second = make_execution(session, task)
    third = make_execution(session, task)
    assert concurrency.blocker(session, second) == first.id
    assert reaper.requeue(session, utcnow(), CFG) == []  # waits in queued, no job pushed

    first.status, first.finished_at = "succeeded", utcnow()
    session.commit()
    assert reaper.release_waiting(session, task.id) == [second.id]  # oldest first, one at a time
    assert job_ids(app) == [f"execution-{second.id}"]
    assert third.status == "queued"


def test_simultaneous_runs_never_share_a_host(app, session):
    task = make_task(session, allow_simultaneous=True)
    first = make_execution(session, task, "running", limit_hosts=["h1"], heartbeat_at=utcnow())
    disjoint = make_execution(session, task, limit_hosts=["h2", "h3"])
    overlapping = make_execution(session, task, limit_hosts=["h1", "h2"])
    everything = make_execution(session, task)
    assert concurrency.blocker(session, disjoint) is None
    assert concurrency.blocker(session, overlapping) == first.id
    assert concurrency.blocker(session, everything) == first.id
    assert reaper.requeue(session, utcnow(), CFG) == [disjoint.id]


# ------------------------------------------------------------------ retention


def test_retention_prunes_old_output_only(app, session):
    task = make_task(session)
    now = utcnow()
    old = make_execution(session, task, "succeeded", finished_at=now - timedelta(days=91))
    new = make_execution(session, task, "failed", finished_at=now - timedelta(days=89))
    for ex in (old, new):
        op = Operation(execution_id=ex.id, host_name="h1", status="succeeded", rc=0, stdout="out " * 100, stderr="err")
        session.add(op)
        session.flush()
        session.add(Step(operation_id=op.id, seq=1, name="s", status="succeeded", rc=0, stdout="x" * 500, stderr="y"))
    session.commit()

    cfg = reaper.ReaperConfig(retention_days=90, prune_batch=1)
    assert reaper.prune_output(session, now, cfg) == 1
    session.expire_all()
    old_op, new_op = session.get(Execution, old.id).operations[0], session.get(Execution, new.id).operations[0]
    assert old_op.stdout == reaper.PRUNED_MARKER and old_op.stderr == ""
    assert old_op.status == "succeeded" and old_op.rc == 0  # the summary stays
    assert old_op.steps[0].stdout is None and old_op.steps[0].stderr is None and old_op.steps[0].rc == 0
    assert session.get(Execution, old.id).output_pruned_at is not None
    assert new_op.stdout.startswith("out ") and new_op.steps[0].stdout == "x" * 500
    assert reaper.prune_output(session, now, cfg) == 0  # done, nothing twice


def test_retention_batches_many_executions(app, session):
    task = make_task(session)
    old = utcnow() - timedelta(days=200)
    for _ in range(7):
        ex = make_execution(session, task, "succeeded", finished_at=old)
        session.add(Operation(execution_id=ex.id, host_name="h1", status="succeeded", stdout="data"))
    session.commit()
    cfg = reaper.ReaperConfig(retention_days=90, prune_batch=3, prune_max_batches=2)
    assert reaper.prune_output(session, utcnow(), cfg) == 6
    assert reaper.prune_output(session, utcnow(), cfg) == 1
    left = session.execute(select(Operation.stdout).where(Operation.stdout == "data")).all()
    assert left == []


# ------------------------------------------------------------------ sweep / lock


def test_sweep_once_is_exclusive_across_processes(app, session):
    lock = redis().lock(reaper._lock_name(app), timeout=30)
    assert lock.acquire(blocking=False)
    try:
        assert reaper.sweep_once(app, CFG) is None  # somebody else is sweeping
    finally:
        lock.release()
    task = make_task(session)
    old = make_execution(session, task, "succeeded", finished_at=utcnow() - timedelta(days=100))
    session.add(Operation(execution_id=old.id, host_name="h1", status="succeeded", stdout="old output"))
    session.commit()
    result = reaper.sweep_once(app, CFG)
    assert result is not None and result["lost"] == 0 and result["requeued"] == 0
    assert result["pruned"] == 1  # retention runs from the reaper loop...
    assert "pruned" not in reaper.sweep_once(app, CFG)  # ...at most every retention_every_s, cluster-wide
    session.expire_all()
    assert session.get(Execution, old.id).operations[0].stdout == reaper.PRUNED_MARKER


def test_a_sweeper_killed_mid_sweep_holds_the_others_back_two_intervals_at_most(app, monkeypatch):
    """kill -9 during a sweep leaves the lock behind: it must expire soon, or the dead worker's
    own run would be declared lost only when a long lock ran out."""
    left: list[int] = []
    real = reaper.sweep

    def sweep_noting_the_lock(*args, **kwargs):
        left.append(redis().pttl(reaper._lock_name(app)))  # what a holder dying now would leave
        return real(*args, **kwargs)

    monkeypatch.setattr(reaper, "sweep", sweep_noting_the_lock)
    assert reaper.sweep_once(app, replace(CFG, interval_s=1.0)) is not None
    assert reaper.sweep_once(app, replace(CFG, interval_s=15.0)) is not None
    assert 0 < left[0] <= 5000 and 5000 < left[1] <= 30000, left


# ------------------------------------------------------------------ relaunch


def _finished_with_failures(session, task) -> Execution:
    ex = make_execution(session, task, "failed", finished_at=utcnow())
    session.add_all([
        Operation(execution_id=ex.id, host_name="h1", status="succeeded", rc=0),
        Operation(execution_id=ex.id, host_name="h2", status="failed", rc=2),
        Operation(execution_id=ex.id, host_name="h3", status="unreachable"),
    ])
    session.commit()
    return ex


def test_relaunch_failed_hosts_only(app, session, api):
    task = make_task(session)
    parent = _finished_with_failures(session, task)
    status, body = api.post(f"/api/v1/executions/{parent.id}/relaunch", {"failed_only": True})
    assert status == 202, body
    assert body["status"] == "queued" and body["parent_id"] == parent.id
    child = session.get(Execution, body["id"])
    assert child.parent_id == parent.id and child.limit_hosts == ["h2", "h3"] and child.host_count == 2
    assert job_ids(app) == [f"execution-{child.id}"]
    row = session.execute(select(AuditLog).where(AuditLog.action == "execution.relaunch")).scalar_one()
    assert row.detail["parent"] == parent.id

    status, body = api.post(f"/api/v1/executions/{parent.id}/relaunch", {"failed_only": False})
    assert status == 202 and session.get(Execution, body["id"]).limit_hosts is None


def test_relaunch_refusals(app, session, api, api_as):
    task = make_task(session)
    running = make_execution(session, task, "running", heartbeat_at=utcnow())
    status, body = api.post(f"/api/v1/executions/{running.id}/relaunch", {})
    assert status == 409 and body["error"]["code"] == "conflict"

    clean = make_execution(session, task, "succeeded", finished_at=utcnow())
    session.add(Operation(execution_id=clean.id, host_name="h1", status="succeeded", rc=0))
    session.commit()
    status, body = api.post(f"/api/v1/executions/{clean.id}/relaunch", {"failed_only": True})
    assert status == 422 and body["error"]["field"] == "failed_only"
    status, body = api.post(f"/api/v1/executions/{clean.id}/relaunch", {"failed_only": "yes"})
    assert status == 422
    status, body = api.post("/api/v1/executions/999999/relaunch", {})
    assert status == 404

    parent = _finished_with_failures(session, task)
    operator = api_as("olga", "operator")  # no policy grants her this task: she cannot see it
    status, body = operator.post(f"/api/v1/executions/{parent.id}/relaunch", {})
    assert status == 404
    assert session.execute(select(Execution).where(Execution.parent_id == parent.id)).first() is None
