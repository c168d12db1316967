"""One execution over many hosts, run as slices by several workers at once (like AWX's job slicing).

Why: one ``ansible-playbook`` drives all its hosts from one single-threaded strategy loop,
and its memory grows with the inventory. Past ``TASKMANAGER_SLICE_HOSTS`` hosts (default
1,000) the worker that claims an execution splits it:

* the execution stays ONE record with one operation per host; each operation's ``slice``
  says which slice runs it (contiguous chunks of the hosts in name order);
* slice 0 runs in the claiming job; slices 1..n-1 are RQ jobs (``run_slice_job``) that any
  worker takes; each is its own ansible-runner process tree in its own sandbox, with its
  own heartbeat on its ``ExecutionSlice`` row;
* cancel: every slice's recorder polls the execution's ``cancel_requested`` and ends its
  tree; a slice not yet started ends at once. Timeout: every slice gets what is left of
  the task's timeout counted from the execution's start. Lost: the reaper declares the
  execution lost when one slice's heartbeat stops (and sets ``cancel_requested``, which
  stops the others);
* the slice that ends last (each one looks after committing its own outcome) writes the
  execution's final status from all operations: cancelled or timed out if a slice was.
"""
from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable
from typing import Any

from rq import Queue
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from server.core import audit, db
from server.core.config import Settings
from server.core.models import (
    EXECUTION_FINAL,
    OPERATION_OPEN,
    Execution,
    ExecutionSlice,
    ExecutionStatus,
    Host,
    Operation,
    OperationStatus,
    utcnow,
)
from server.executions import jobs
from server.runs import recorder, retries, runner
from server.runs.heartbeat import Heartbeat

log = logging.getLogger(__name__)

SLICE_JOB = "server.runs.slicing.run_slice_job"
ACTOR = "worker"


def slice_hosts() -> int:
    """Hosts per slice (``TASKMANAGER_SLICE_HOSTS``, at least 1)."""
    try:
        return max(1, int(os.environ.get("TASKMANAGER_SLICE_HOSTS", "1000")))
    except ValueError:
        return 1000


def count(n_hosts: int) -> int:
    """How many slices ``n_hosts`` hosts make (1: not sliced)."""
    return max(1, math.ceil(n_hosts / slice_hosts()))


def remaining_s(ex: Execution) -> int:
    """What is left of the task's timeout, counted from the execution's start."""
    budget = int(ex.task.timeout_s or 3600)
    if ex.started_at is None:
        return budget
    return int(budget - (utcnow() - ex.started_at).total_seconds())


def run_sliced(session: Session, ex: Execution, hosts: list[Host], ops: dict[str, Operation], settings: Settings,
               n: int, worker_name: str, finish: Callable[[Session, Execution, runner.RunResult], None],
               after_finish: Callable[[Session, Execution], None]) -> str:
    """Split ``ex`` into ``n`` slices, enqueue slices 1..n-1, run slice 0 here."""
    size = math.ceil(len(hosts) / n)
    now = utcnow()
    for i in range(n):
        for host in hosts[i * size:(i + 1) * size]:
            ops[host.name].slice = i
        session.add(ExecutionSlice(execution_id=ex.id, index=i, hosts=len(hosts[i * size:(i + 1) * size]),
                                   status=ExecutionStatus.RUNNING if i == 0 else ExecutionStatus.QUEUED,
                                   worker_name=worker_name if i == 0 else None, started_at=now if i == 0 else None,
                                   heartbeat_at=now if i == 0 else None))
    audit.record(session, "execution.slice", actor=ACTOR, target=ex, slices=n, hosts_per_slice=size)
    session.commit()
    timeout = int(ex.task.timeout_s or 3600)
    jobs.queue().enqueue_many([Queue.prepare_data(
        SLICE_JOB, args=(ex.id, i), job_id=f"execution-{ex.id}-slice-{i}", timeout=timeout + 300,
        result_ttl=3600, failure_ttl=86400) for i in range(1, n)])
    mine = hosts[:size]
    return _run_and_close(session, ex, 0, mine, {h.name: ops[h.name] for h in mine}, settings, finish,
                          after_finish)


def _run_and_close(session: Session, ex: Execution, index: int, hosts: list[Host], ops: dict[str, Operation],
                   settings: Settings, finish, after_finish) -> str:
    try:
        with Heartbeat(ex.id, index):
            run = functools.partial(runner.run, timeout_s=max(1, remaining_s(ex)))
            result = retries.run_with_retries(session, ex, hosts, ops, settings, run=run)
            session.commit()
    except Exception as exc:  # noqa: BLE001 - a bug or a lost database: record it, never hang
        log.exception("execution %s slice %s: the run failed", ex.id, index)
        session.rollback()
        result = runner.RunResult(ExecutionStatus.FAILED, f"internal error in the worker: {type(exc).__name__}")
        _close_ops(session, ex.id, index, OperationStatus.FAILED, result.message or "internal error")
    return close(session, ex, index, result, finish, after_finish)


def _close_ops(session: Session, ex_id: int, index: int, status: str, message: str) -> None:
    session.execute(update(Operation).where(Operation.execution_id == ex_id, Operation.slice == index,
                                            Operation.status.in_(OPERATION_OPEN))
                    .values(status=status, message=message, finished_at=utcnow())
                    .execution_options(synchronize_session=False))


def close(session: Session, ex: Execution, index: int, result: runner.RunResult, finish, after_finish) -> str:
    """Record slice ``index``'s outcome; the slice that closes last makes the execution final."""
    session.execute(update(ExecutionSlice).where(ExecutionSlice.execution_id == ex.id, ExecutionSlice.index == index)
                    .values(status=result.status, message=result.message, finished_at=utcnow()))
    session.commit()
    cancelled = session.execute(select(Execution.cancel_requested).where(Execution.id == ex.id)).scalar()
    if cancelled:  # slices no worker took yet end now, not whenever a worker gets to them
        queued = list(session.execute(select(ExecutionSlice.index).where(
            ExecutionSlice.execution_id == ex.id, ExecutionSlice.status == ExecutionStatus.QUEUED)).scalars())
        for i in queued:
            if _claim(session, ex.id, i, "", to=ExecutionStatus.CANCELLED):
                _close_ops(session, ex.id, i, OperationStatus.CANCELLED, "cancelled before this host started")
        session.commit()
    open_slices = session.execute(select(func.count()).select_from(ExecutionSlice).where(
        ExecutionSlice.execution_id == ex.id, ExecutionSlice.status.not_in(list(EXECUTION_FINAL)))).scalar()
    if open_slices:
        session.rollback()
        return f"slice {index}: {result.status}"
    statuses = set(session.execute(select(ExecutionSlice.status).where(ExecutionSlice.execution_id == ex.id)).scalars())
    session.rollback()
    ex = session.get(Execution, ex.id, populate_existing=True) or ex
    if ExecutionStatus.CANCELLED in statuses:
        final = runner.RunResult(ExecutionStatus.CANCELLED, "cancelled on request")
    elif ExecutionStatus.TIMED_OUT in statuses:
        final = runner.RunResult(ExecutionStatus.TIMED_OUT, f"timed out after {ex.task.timeout_s} s")
    else:
        ops = session.execute(select(Operation).where(Operation.execution_id == ex.id)).scalars().all()
        n = session.execute(select(func.count()).select_from(ExecutionSlice).where(
            ExecutionSlice.execution_id == ex.id)).scalar()
        final = recorder.outcome(ops, note=f"in {n} slices")
    finish(session, ex, final)
    after_finish(session, ex)
    return ex.status


def _claim(session: Session, ex_id: int, index: int, worker_name: str, to: str = ExecutionStatus.RUNNING) -> bool:
    now = utcnow()
    values: dict[str, Any] = {"status": to, "worker_name": worker_name or None}
    values.update(started_at=now, heartbeat_at=now) if to == ExecutionStatus.RUNNING else values.update(finished_at=now)
    return db.rowcount(session.execute(update(ExecutionSlice).where(
        ExecutionSlice.execution_id == ex_id, ExecutionSlice.index == index,
        ExecutionSlice.status == ExecutionStatus.QUEUED).values(**values)
        .execution_options(synchronize_session=False))) == 1


def run_slice_job(execution_id: int, index: int) -> str:
    """RQ job: run slice ``index`` of execution ``execution_id`` if it is still queued."""
    from server.runs.worker import _after_finish, _after_fork, _finish, _get_app, _worker_name

    app = _get_app()
    with app.app_context():
        _after_fork()
        session = db.session()
        try:
            if not _claim(session, execution_id, index, _worker_name()):
                session.rollback()
                return "claimed elsewhere"
            session.commit()
            ex = session.get(Execution, execution_id)
            if ex is None:
                return "no such execution"
            if ex.status != ExecutionStatus.RUNNING or ex.cancel_requested:
                _close_ops(session, ex.id, index, OperationStatus.CANCELLED, "cancelled before this host started")
                return close(session, ex, index, runner.RunResult(ExecutionStatus.CANCELLED, "cancelled on request"),
                             _finish, _after_finish)
            if remaining_s(ex) < 1:
                _close_ops(session, ex.id, index, OperationStatus.FAILED,
                           f"the execution timed out after {ex.task.timeout_s} s")
                return close(session, ex, index, runner.RunResult(
                    ExecutionStatus.TIMED_OUT, f"timed out after {ex.task.timeout_s} s"), _finish, _after_finish)
            ops = {op.host_name: op for op in session.execute(select(Operation).where(
                Operation.execution_id == ex.id, Operation.slice == index).order_by(Operation.host_name)).scalars()}
            by_id = {h.id: h for h in session.execute(select(Host).where(
                Host.id.in_([op.host_id for op in ops.values() if op.host_id is not None]))).scalars()}
            hosts = [by_id[op.host_id] for op in ops.values() if op.host_id in by_id]
            gone = [name for name, op in ops.items() if op.host_id not in by_id]
            for name in gone:  # deleted since the execution started
                ops[name].status, ops[name].message = OperationStatus.FAILED, "the host was deleted"
            return _run_and_close(session, ex, index, hosts, {h.name: ops[h.name] for h in hosts},
                                  app.config["TM"], _finish, _after_finish)
        finally:
            db.session.remove()
