"""The RQ worker: claims one execution by id, runs it, records the outcome.

The job carries only the execution id; everything else is read from the database, so a
duplicated or re-enqueued job is harmless: the atomic claim (``queued`` -> ``running`` in
one conditional UPDATE) lets exactly one worker run an execution.
"""
from __future__ import annotations

import logging
import os
import socket
from typing import Any

from flask import Flask, current_app, has_app_context
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from server.executions import approvals, concurrency, reaper
from server.core import audit, db
from server.reporting import notify
from server.runs import project_jobs, retries, runner, slicing, warm
from server.runs.heartbeat import Heartbeat
from server.core.config import Settings
from server.core.errors import ValidationError
from server.executions.fingerprint import git_project, revision_of, target_hosts
from server.core.models import OPERATION_OPEN, Execution, ExecutionStatus, Operation, OperationStatus, Step, utcnow

log = logging.getLogger(__name__)

ACTOR = "worker"
_app: Flask | None = None
_engine_pid: int | None = None


# --------------------------------------------------------------------------- app and DB

def _get_app() -> Flask:
    """The app of this process: the worker's (flask CLI), or one made once and kept."""
    global _app
    if has_app_context():
        return current_app._get_current_object()  # type: ignore[attr-defined]
    if _app is None:
        from server import create_app

        _app = create_app()
    return _app


def _after_fork() -> None:
    """A forked work horse must not reuse its parent's database connections."""
    global _engine_pid
    pid = os.getpid()
    if _engine_pid is None:
        _engine_pid = pid
    elif _engine_pid != pid:
        db.engine().dispose(close=False)
        db.session.remove()
        _engine_pid = pid


def _worker_name() -> str:
    try:
        from rq import get_current_job

        job = get_current_job()
        if job is not None and job.worker_name:
            return job.worker_name
    except Exception:  # noqa: BLE001 - outside RQ
        pass
    return f"{socket.gethostname()}:{os.getpid()}"


# --------------------------------------------------------------------------- the job

def run_execution_job(execution_id: int) -> str:
    """RQ job: run execution ``execution_id`` if it is still queued. Returns what happened."""
    app = _get_app()
    with app.app_context():
        _after_fork()
        try:
            return _run(app, int(execution_id))
        finally:
            db.session.remove()


def _claim(session: Session, execution_id: int) -> Execution | str:
    """Atomically move the execution from queued to running; a string says why not."""
    row = session.execute(
        select(Execution.task_id, Execution.status).where(Execution.id == execution_id)
    ).first()
    session.rollback()
    if row is None:
        return "no such execution"
    if row.status != ExecutionStatus.QUEUED:
        return f"not queued ({row.status})"
    concurrency.lock_task(session, row.task_id)  # first statement of the claim transaction
    ex = session.get(Execution, execution_id, populate_existing=True)
    if ex is None or ex.status != ExecutionStatus.QUEUED:
        session.rollback()
        return "claimed elsewhere"
    now = utcnow()
    if ex.cancel_requested:
        ex.status = ExecutionStatus.CANCELLED
        ex.finished_at = now
        ex.message = "cancelled before it started"
        audit.record(session, "execution.finish", actor=ACTOR, target=ex, status=ExecutionStatus.CANCELLED, hosts=0)
        session.commit()
        return "cancelled before start"
    blocking = concurrency.blocker(session, ex)
    if blocking is not None:
        session.rollback()
        return f"waits for execution {blocking}"
    claimed = db.rowcount(session.execute(
        update(Execution)
        .where(Execution.id == execution_id, Execution.status == ExecutionStatus.QUEUED)
        .values(status=ExecutionStatus.RUNNING, worker_name=_worker_name(), started_at=now, heartbeat_at=now)
        .execution_options(synchronize_session=False)
    ))
    if claimed != 1:
        session.rollback()
        return "claimed elsewhere"
    session.refresh(ex)
    return ex


def _run(app: Flask, execution_id: int) -> str:
    session = db.session()
    settings: Settings = app.config["TM"]
    claimed = _claim(session, execution_id)
    if isinstance(claimed, str):
        log.info("execution %s: not run: %s", execution_id, claimed)
        return claimed
    ex = claimed
    task = ex.task
    hosts = target_hosts(task, ex.limit_hosts)
    existing = {op.host_name: op for op in ex.operations}
    ops: dict[str, Operation] = {}
    for host in hosts:
        op = existing.get(host.name)
        if op is None:
            op = Operation(host_id=host.id, host_name=host.name, status=OperationStatus.PENDING)
            ex.operations.append(op)
        ops[host.name] = op
    ex.host_count = len(hosts)
    ex.hosts_done = 0
    session.flush()
    audit.record(session, "execution.start", actor=ACTOR, target=ex, task=task.name, worker=ex.worker_name,
                 hosts=len(hosts))
    project_jobs.sync_on_launch(session, ex, settings.instance_dir)
    refusal = _verify(session, ex)
    if refusal:
        _refuse(session, ex, refusal)
        session.commit()
        _after_finish(session, ex)
        return f"refused: {refusal}"
    _revision_that_runs(ex)
    session.commit()
    slices = slicing.count(len(hosts))
    if slices > 1:  # a big execution: slices on several workers (slicing.py)
        return slicing.run_sliced(session, ex, hosts, ops, settings, slices, ex.worker_name or _worker_name(),
                                  _finish, _after_finish)

    result: runner.RunResult
    try:
        with Heartbeat(ex.id):
            if not hosts:
                result = runner.RunResult(ExecutionStatus.FAILED, "the task has no target hosts")
            else:
                result = retries.run_with_retries(session, ex, hosts, ops, settings)  # unreachable hosts again
            session.commit()  # the last batch of operations and steps
    except Exception as exc:  # noqa: BLE001 - a bug or a lost database: record it, never hang
        log.exception("execution %s: the run failed", ex.id)
        session.rollback()
        result = runner.RunResult(ExecutionStatus.FAILED, f"internal error in the worker: {type(exc).__name__}")
        _fail_unfinished(session, ex, result.message or "internal error")
        session.commit()
    _finish(session, ex, result)
    _after_finish(session, ex)
    return ex.status


def _revision_that_runs(ex: Execution) -> None:
    """A ``local`` playbook runs the directory as it is now: record its commit and content hash
    of now, not of the request (a git project's run has its pinned commit already)."""
    task = ex.task
    if task.kind != "playbook" or git_project(task) is not None:
        return
    try:
        commit, chash = revision_of(task)
    except (ValidationError, OSError):
        return  # the run fails in prepare with the reason
    ex.revision, ex.content_hash = commit or chash[:12], chash


def _verify(session: Session, ex: Execution) -> str | None:
    """Approval binding: what runs must be what was approved."""
    return approvals.verify_before_run(session, ex)


def _refuse(session: Session, ex: Execution, reason: str) -> None:
    approvals.refuse(session, ex, reason)
    ex.hosts_done = ex.host_count


def _fail_unfinished(session: Session, ex: Execution, message: str) -> None:
    now = utcnow()
    ops = session.execute(select(Operation).where(Operation.execution_id == ex.id)).scalars().all()
    for op in ops:
        if op.status in OPERATION_OPEN:
            op.status = OperationStatus.FAILED
            op.message = message
            op.finished_at = now
            running = select(Step).where(Step.operation_id == op.id, Step.status == OperationStatus.RUNNING)
            for step in session.execute(running).scalars():
                step.status = OperationStatus.FAILED
    ex.hosts_done = ex.host_count


def _finish(session: Session, ex: Execution, result: runner.RunResult) -> None:
    """Final status + audit (+ notification) in one transaction; only if still ours."""
    now = utcnow()
    counts: dict[str, int] = {}
    for status in session.execute(select(Operation.status).where(Operation.execution_id == ex.id)).scalars():
        counts[status] = counts.get(status, 0) + 1

    def write(with_notify: bool) -> bool:
        done = db.rowcount(session.execute(
            update(Execution)
            .where(Execution.id == ex.id, Execution.status == ExecutionStatus.RUNNING)
            .values(status=result.status, finished_at=now, message=result.message, hosts_done=ex.host_count,
                    secret_vars_enc=None)
            .execution_options(synchronize_session=False)
        ))
        if done != 1:
            return False
        session.refresh(ex)
        audit.record(session, "execution.finish", actor=ACTOR, target=ex, task=ex.task.name, status=result.status,
                     outcome="ok" if result.status == ExecutionStatus.SUCCEEDED else "failed", operations=counts,
                     message=result.message)
        if with_notify:
            _notify(session, ex)
        return True

    try:
        ours = write(with_notify=True)
        session.commit()
    except Exception:  # noqa: BLE001 - e.g. a notification problem: record the outcome without it
        log.exception("execution %s: recording the outcome with its notification failed", ex.id)
        session.rollback()
        ours = write(with_notify=False)
        session.commit()
    if not ours:
        session.refresh(ex)
        if ex.status == result.status and ex.finished_at is not None:
            return  # made final at its last host's result (runner._final_now)
        log.warning("execution %s: finished as %s but is already %s; left as is", ex.id, result.status, ex.status)


def _notify(session: Session, ex: Execution) -> None:
    notify.execution_finished(session, ex)


def _after_finish(session: Session, ex: Execution) -> None:
    """Start executions of the same task that waited for this one."""
    try:
        reaper.release_waiting(session, ex.task_id)
        session.rollback()
    except Exception:  # noqa: BLE001 - the reaper's sweep will catch up
        session.rollback()
        log.warning("execution %s: could not release waiting executions", ex.id, exc_info=True)


# --------------------------------------------------------------------------- the worker process

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _jobs_waiting(queue: Any) -> bool:
    try:
        return bool(queue.count)
    except Exception:  # noqa: BLE001 - Redis away: a run never fails for warm start's sake
        return False


def run_worker(settings: Settings, burst: bool = False, name: str | None = None) -> None:
    """Run an RQ worker on ``settings.queue_name`` until stopped (or the queue is empty).

    ``SimpleWorker`` (the job runs in this process) rather than RQ's forking ``Worker``,
    because measuring says so: enqueue -> job finished for a job that only claims (one
    SELECT) took a median 18 ms with SimpleWorker and 413 ms with the forking Worker (15
    jobs each, same machine, same load; ``bench/seed_usecase.py --only w`` measures
    it). Forking the app-sized process, re-opening
    the database and Redis connections in the work horse and RQ's horse monitoring cost
    more than the ~1 s Ansible run it would isolate. The isolation a fork would buy is
    already there: Ansible runs in its own ``ansible-playbook`` process tree; this
    process only records events. The job timeout still applies (SimpleWorker uses the
    same SIGALRM death penalty) and a worker that dies is caught by the reaper through
    the missing heartbeat.
    """
    from rq import Queue, SimpleWorker

    from server.core.redis_conn import redis

    level = os.environ.get("TASKMANAGER_LOG_LEVEL", "WARNING").upper()
    level = level if level in LOG_LEVELS else "WARNING"
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")  # unless `serve` set one up
    logging.getLogger("server").setLevel(level)
    app = _get_app()
    _after_fork()
    conn = redis()
    queue = Queue(settings.queue_name, connection=conn)
    worker = SimpleWorker([queue], connection=conn, name=name)
    stop_reaper = None if burst else reaper.start_thread(app)
    # the next run's warm process (runs/warm.py); a burst worker only while jobs are left
    warm.keep_ready = not burst
    warm.jobs_waiting = lambda: _jobs_waiting(queue)
    if warm.keep_ready or warm.jobs_waiting():
        warm.ready_next(settings)
    try:
        worker.work(burst=burst, with_scheduler=False, logging_level="WARNING")
    finally:
        warm.close()
        if stop_reaper is not None:
            stop_reaper.set()
