"""The reaper: the periodic repairs that keep executions from getting stuck.

``sweep(session, now)`` runs in a background thread of every worker process (at most one
at a time across processes and machines, by a Redis lock). Every transition it makes is a
conditional UPDATE on the database row, so a sweep that runs twice, or concurrently with a
worker, changes nothing twice. It:

* marks ``running`` executions whose worker stopped heartbeating ``lost`` (and, if the task
  opts in with ``retry_on_lost``, requests a NEW execution: never a silent re-run);
* re-enqueues ``queued`` executions that Redis no longer holds (flushed or restarted Redis,
  a worker that died between dequeue and claim) — the worker's atomic claim guarantees at
  most one run, so a duplicate job is harmless;
* starts executions waiting for a concurrent run of their task to end;
* prunes raw output older than the retention period, in batches;
* expires approval requests whose time ran out (``approvals.expire_due``).

Besides, without the lock, each worker's thread ends the local leftovers of runs whose
worker process died (``procs.reap_orphans``): an ``ansible-playbook`` orphaned by a
``kill -9`` must not keep working on hosts after its execution was declared lost; and
removes the private directories such a worker left behind (``sandbox.remove_stale_dirs``).
"""
from __future__ import annotations

import logging
import os
import random
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import Flask
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from server.core import audit, db
from server.core.models import (
    EXECUTION_FINAL,
    OPERATION_OPEN,
    Execution,
    ExecutionSlice,
    ExecutionStatus,
    Operation,
    OperationStatus,
    Step,
    utcnow,
)
from server.core.redis_conn import redis
from server.executions import approvals, concurrency, jobs
from server.executions.fingerprint import fingerprint, launch_inputs, project_files, revision_of, target_hosts
from server.executions.request import request_execution
from server.reporting import notify
from server.runs import procs, sandbox

log = logging.getLogger(__name__)

ACTOR = "reaper"
MAX_LOST_ATTEMPTS = 3  # retry_on_lost never loops forever on a run that kills its worker
PRUNED_MARKER = "[output removed by the retention policy]"


@dataclass
class ReaperConfig:
    lost_after_s: float = 60.0  # no heartbeat for this long -> lost (the worker beats every ~10 s)
    requeue_grace_s: float = 5.0  # leave just-committed executions to enqueue_after_commit
    retention_days: float = 90.0
    retention_every_s: float = 600.0  # pruning is cheap but needn't run on every sweep
    prune_batch: int = 50  # executions per pruning transaction
    prune_max_batches: int = 20  # per sweep: the lock is never held for long
    interval_s: float = 15.0

    @classmethod
    def from_env(cls) -> "ReaperConfig":
        env = os.environ
        return cls(
            lost_after_s=float(env.get("TASKMANAGER_LOST_AFTER_S", 60)),
            requeue_grace_s=float(env.get("TASKMANAGER_REQUEUE_GRACE_S", 5)),
            retention_days=float(env.get("TASKMANAGER_RETENTION_DAYS", 90)),
            retention_every_s=float(env.get("TASKMANAGER_RETENTION_EVERY_S", 600)),
            interval_s=float(env.get("TASKMANAGER_REAPER_INTERVAL_S", 15)),
        )


# ------------------------------------------------------------------ lost executions


def mark_lost(session: Session, now: datetime, lost_after_s: float) -> list[int]:
    """Running executions without a heartbeat for ``lost_after_s`` become ``lost``.

    Partial results stay: finished operations keep their status and output; the ones that
    were still pending or running become ``failed`` with a message saying why.
    """
    cutoff = now - timedelta(seconds=lost_after_s)
    stale = or_(
        Execution.heartbeat_at < cutoff,
        and_(Execution.heartbeat_at.is_(None), Execution.started_at < cutoff),
        and_(Execution.heartbeat_at.is_(None), Execution.started_at.is_(None)),
        # a sliced run is lost as soon as one of its slices stops beating (slicing.py)
        Execution.id.in_(select(ExecutionSlice.execution_id).where(
            ExecutionSlice.status == ExecutionStatus.RUNNING, ExecutionSlice.heartbeat_at < cutoff)),
    )
    ids = list(
        session.execute(select(Execution.id).where(Execution.status == ExecutionStatus.RUNNING, stale).order_by(Execution.id)).scalars()
    )
    session.rollback()
    lost: list[int] = []
    for ex_id in ids:
        try:
            if _mark_one_lost(session, ex_id, now, cutoff, stale):
                lost.append(ex_id)
            session.commit()
        except Exception:
            session.rollback()
            log.exception("reaper: could not mark execution %s lost", ex_id)
    return lost


def _mark_one_lost(session: Session, ex_id: int, now: datetime, cutoff: datetime, stale) -> bool:
    message = f"worker lost: no heartbeat for more than {int((now - cutoff).total_seconds())} s"
    changed = db.rowcount(session.execute(
        update(Execution)
        .where(Execution.id == ex_id, Execution.status == ExecutionStatus.RUNNING, stale)
        # cancel_requested: should that worker still be alive (a network partition), it stops.
        .values(status=ExecutionStatus.LOST, finished_at=now, message=message, cancel_requested=True)
        .execution_options(synchronize_session=False)
    ))
    if not changed:
        return False  # the worker finished (or another sweep won) in the meantime
    session.execute(
        update(Operation)
        .where(Operation.execution_id == ex_id, Operation.status.in_(OPERATION_OPEN))
        .values(status=OperationStatus.FAILED, finished_at=now, message="the worker was lost before this host finished")
        .execution_options(synchronize_session=False)
    )
    ex = session.get_one(Execution, ex_id, populate_existing=True)
    audit.record(
        session,
        "execution.lost",
        actor=ACTOR,
        target=ex,
        outcome="failed",
        worker=ex.worker_name,
        last_heartbeat=ex.heartbeat_at,
    )
    if ex.task.retry_on_lost:
        retry_lost(session, ex)
    _notify_finished(session, ex)
    return True


def retry_lost(session: Session, parent: Execution) -> Execution | None:
    """A NEW execution of a lost one (opt-in per task): parent_id, attempt + 1, audited.

    Refused (and audited) when the task changed since the lost run was requested, because
    its approval bound the old definition, or after ``MAX_LOST_ATTEMPTS``.
    """
    task = parent.task
    if parent.attempt >= MAX_LOST_ATTEMPTS:
        audit.record(session, "execution.retry_skipped", actor=ACTOR, target=parent, reason="too many attempts")
        return None
    if parent.check_mode:  # a dry run for approvers: its retry would be a real run
        audit.record(session, "execution.retry_skipped", actor=ACTOR, target=parent, reason="dry run")
        return None
    try:
        _revision, chash = revision_of(task)
        hosts = target_hosts(task, parent.limit_hosts)
        same = parent.fingerprint == fingerprint(task, chash, parent.vars or {}, hosts, launch_inputs(parent),
                                                 project_files(task))
    except Exception as exc:  # e.g. the playbook disappeared
        same, why = False, str(exc)
    else:
        why = "the task changed since the lost run was requested"
    if not same:
        audit.record(session, "execution.retry_skipped", actor=ACTOR, target=parent, reason=why)
        return None
    child = request_execution(
        session,
        task,
        None,  # the lost run was already authorised (and approved, if it had to be)
        run_vars=parent.vars,
        reason=parent.reason,
        trigger=parent.trigger,
        limit_hosts=parent.limit_hosts,
        parent_id=parent.id,
        ticket=parent.ticket, tags=parent.tags, skip_tags=parent.skip_tags, secret_enc=parent.secret_vars_enc,
    )
    child.requested_by_id = parent.requested_by_id
    child.attempt = parent.attempt + 1
    child.message = f"automatic retry of lost execution #{parent.id}"
    audit.record(
        session, "execution.retry", actor=ACTOR, target=child, parent=parent.id, attempt=child.attempt
    )
    return child


def _notify_finished(session: Session, ex: Execution) -> None:
    """Record the ``execution.failed`` notification (server.notify, when present)."""
    try:
        notify.execution_finished(session, ex)
    except Exception:  # a notification problem must never keep an execution running
            log.exception("reaper: notification for execution %s failed", ex.id)


# ------------------------------------------------------------------ queued executions


class _Jobs:
    """What Redis holds for some executions: one LRANGE and one pipelined HMGET per call,
    so that a long queue costs O(n), not a round trip (or an LPOS scan) per execution."""

    def __init__(self, conn, queue_key, execution_ids: list[int]) -> None:
        self.conn = conn
        self.in_queue = {x.decode() for x in conn.lrange(queue_key, 0, -1)}
        pipe = conn.pipeline(transaction=False)
        for ex_id in execution_ids:
            pipe.hmget(f"rq:job:execution-{ex_id}", "status", "worker_name")
        self.fields = dict(zip(execution_ids, pipe.execute(), strict=True))

    def pending(self, ex: Execution, now: datetime, lost_after_s: float) -> bool:
        """Whether Redis still holds a job that will (or does) run this execution."""
        status_raw, worker_raw = self.fields.get(ex.id) or (None, None)
        status = status_raw.decode() if status_raw else None
        if status is None:
            return False  # Redis flushed or restarted without the job
        if status == "queued":
            return f"execution-{ex.id}" in self.in_queue
        if status in ("scheduled", "deferred", "created"):
            return True
        if status == "started":
            # A worker took it but has not claimed it (yet): wait, unless that worker is gone
            # or never got to its claim.
            worker = worker_raw.decode() if worker_raw else ""
            queued_for = (now - (ex.queued_at or ex.created_at)).total_seconds()
            return bool(worker) and bool(self.conn.exists(f"rq:worker:{worker}")) and queued_for < lost_after_s
        return False  # finished / failed / stopped / canceled while the database says queued


def requeue(session: Session, now: datetime, cfg: ReaperConfig) -> list[int]:
    """Enqueue again what the database says is queued but Redis will not run.

    Covers a flushed or restarted Redis and executions that waited for a concurrent run of
    their task: per task without ``allow_simultaneous`` only the oldest waiting one is
    pushed, and only once nothing blocks it.
    """
    conn = redis()
    queue_key = jobs.queue().key
    grace = now - timedelta(seconds=cfg.requeue_grace_s)
    queued = list(
        session.execute(
            select(Execution).where(Execution.status == ExecutionStatus.QUEUED).order_by(Execution.created_at, Execution.id)
        ).scalars()
    )
    pushed: list[int] = []
    seen_tasks: set[int] = set()
    held = _Jobs(conn, queue_key, [ex.id for ex in queued])
    for ex in queued:
        if (ex.queued_at or ex.created_at) > grace:
            continue
        exclusive = not ex.task.allow_simultaneous
        if exclusive and ex.task_id in seen_tasks:
            continue  # an older one of this task goes first
        seen_tasks.add(ex.task_id)
        if held.pending(ex, now, cfg.lost_after_s):
            continue
        if concurrency.blocker(session, ex) is not None:
            continue  # waits; the run it waits for releases it when it ends
        jobs.enqueue(ex.id, ex.task.timeout_s or 3600)
        pushed.append(ex.id)
    session.rollback()  # read-only here; end the snapshot
    if pushed:
        log.info("reaper: re-enqueued executions %s", pushed)
    return pushed


def release_waiting(session: Session, task_id: int) -> list[int]:
    """Called by the worker when an execution of ``task_id`` ends: start who waited for it."""
    conn = redis()
    queue_key = jobs.queue().key
    now = utcnow()
    pushed: list[int] = []
    waiting = list(session.execute(
        select(Execution)
        .where(Execution.task_id == task_id, Execution.status == ExecutionStatus.QUEUED)
        .order_by(Execution.created_at, Execution.id)
    ).scalars())
    held = _Jobs(conn, queue_key, [ex.id for ex in waiting])
    for ex in waiting:
        if not held.pending(ex, now, 3600) and concurrency.blocker(session, ex) is None:
            jobs.enqueue(ex.id, ex.task.timeout_s or 3600)
            pushed.append(ex.id)
        if not ex.task.allow_simultaneous:
            break
    return pushed


# ------------------------------------------------------------------ retention


def prune_output(session: Session, now: datetime, cfg: ReaperConfig) -> int:
    """Drop raw step and operation output of executions finished before the retention age.

    Summaries stay (statuses, return codes, timings, messages); the output columns get a
    marker and the execution ``output_pruned_at``. Batched, one transaction per batch.
    """
    if cfg.retention_days <= 0:
        return 0
    cutoff = now - timedelta(days=cfg.retention_days)
    total = 0
    for _ in range(cfg.prune_max_batches):
        ids = list(
            session.execute(
                select(Execution.id)
                .where(Execution.output_pruned_at.is_(None), Execution.finished_at < cutoff)
                .order_by(Execution.finished_at)
                .limit(cfg.prune_batch)
            ).scalars()
        )
        if not ids:
            break
        op_ids = select(Operation.id).where(Operation.execution_id.in_(ids)).scalar_subquery()
        session.execute(
            update(Step)
            .where(Step.operation_id.in_(op_ids), or_(Step.stdout.is_not(None), Step.stderr.is_not(None)))
            .values(stdout=None, stderr=None)
            .execution_options(synchronize_session=False)
        )
        session.execute(
            update(Operation)
            .where(Operation.execution_id.in_(ids), or_(Operation.stdout != "", Operation.stderr != ""))
            .values(stdout=PRUNED_MARKER, stderr="")
            .execution_options(synchronize_session=False)
        )
        session.execute(
            update(Execution)
            .where(Execution.id.in_(ids), Execution.output_pruned_at.is_(None))
            .values(output_pruned_at=now)
            .execution_options(synchronize_session=False)
        )
        audit.record(
            session, "retention.prune", actor=ACTOR, target_type="execution",
            executions=ids, older_than_days=cfg.retention_days,
        )
        session.commit()
        total += len(ids)
    return total


# ------------------------------------------------------------------ approvals


def expire_approvals(session: Session, now: datetime) -> int:
    expired = approvals.expire_due(session, now)
    session.commit()
    return expired


def erase_final_secrets(session: Session) -> int:
    """Secret launch values live (encrypted) only while a run may still start: any execution
    that ended on a path that did not erase them itself (rejected, expired, lost) loses them here."""
    erased = db.rowcount(session.execute(
        update(Execution)
        .where(Execution.secret_vars_enc.is_not(None), Execution.status.in_(EXECUTION_FINAL))
        .values(secret_vars_enc=None)
        .execution_options(synchronize_session=False)
    ))
    session.commit()
    return erased


# ------------------------------------------------------------------ the sweep

def sweep(
    session: Session, now: datetime | None = None, cfg: ReaperConfig | None = None, *, prune: bool = True
) -> dict[str, int]:
    """One pass of every repair; commits as it goes. Safe to run concurrently or twice."""
    now = now or utcnow()
    cfg = cfg or ReaperConfig.from_env()
    result: dict[str, int] = {}
    steps = [
        ("lost", lambda: len(mark_lost(session, now, cfg.lost_after_s))),
        ("requeued", lambda: len(requeue(session, now, cfg))),
        ("expired", lambda: expire_approvals(session, now)),
        ("secrets_erased", lambda: erase_final_secrets(session)),
    ]
    if prune:
        steps.append(("pruned", lambda: prune_output(session, now, cfg)))
    for name, step in steps:
        try:
            result[name] = step()
        except Exception:
            session.rollback()
            log.exception("reaper: %s step failed", name)
            result[name] = -1
    return result


# ------------------------------------------------------------------ the background thread


def _lock_name(app: Flask) -> str:
    return f"taskmanager:reaper:{app.config['TM'].queue_name}"


def sweep_once(app: Flask, cfg: ReaperConfig | None = None) -> dict[str, int] | None:
    """Run one sweep if no other process is sweeping right now (None if one is).

    The lock only saves duplicate work (sweeps are idempotent), so it expires after two
    intervals: a worker killed in the middle of its sweep must not hold back the others'
    detection of its own lost run for longer than that."""
    cfg = cfg or ReaperConfig.from_env()
    with app.app_context():
        lock = redis().lock(_lock_name(app), timeout=max(5.0, cfg.interval_s * 2), blocking=False)
        if not lock.acquire(blocking=False):
            return None
        try:
            # Pruning at most every retention_every_s across all processes and machines.
            prune = bool(redis().set(_lock_name(app) + ":pruned", "1", nx=True, ex=max(1, int(cfg.retention_every_s))))
            return sweep(db.session(), utcnow(), cfg, prune=prune)
        finally:
            db.session.remove()
            try:
                lock.release()
            except Exception:  # expired meanwhile: someone else may sweep now, which is fine
                pass


def start_thread(app: Flask, cfg: ReaperConfig | None = None) -> threading.Event:
    """Start the reaper loop in a daemon thread; set the returned event to stop it."""
    cfg = cfg or ReaperConfig.from_env()
    stop = threading.Event()

    def loop() -> None:
        # Jitter, so that many workers started together don't all contend for the lock.
        stop.wait(random.uniform(0, min(cfg.interval_s, 3)))
        while not stop.is_set():
            try:  # local, no lock: leftovers of runs whose worker on THIS machine died
                procs.reap_orphans()
                sandbox.remove_stale_dirs()
            except Exception:
                log.exception("reaper: orphan check failed")
            try:
                result = sweep_once(app, cfg)
                if result and any(result.values()):
                    log.info("reaper: %s", result)
            except Exception:
                log.exception("reaper: sweep failed")
            stop.wait(cfg.interval_s)

    threading.Thread(target=loop, name="taskmanager-reaper", daemon=True).start()
    return stop
