"""Who may start now: per-task concurrency for executions.

A task without ``allow_simultaneous`` runs one execution at a time; a task with it may run
several, but never two on the same host. A waiting execution simply stays ``queued``: the
worker's claim refuses it (without blocking the worker), and the reaper — or the worker
that finishes the blocking run — enqueues it again once nothing blocks it.

``lock_task`` must be the first statement of the claim transaction: it serialises claims
of one task (row lock on PostgreSQL; SQLite's single writer lock, taken by this UPDATE
before anything is read, so the check below sees every committed claim).
"""
from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from server.core.models import Execution, ExecutionStatus, Operation, Task
from server.executions.fingerprint import target_hosts


def lock_task(session: Session, task_id: int) -> None:
    """Serialise claims of ``task_id`` until the caller's transaction ends."""
    # Setting a column to itself (not ``updated_at``'s onupdate) takes the lock without a change.
    session.execute(update(Task).where(Task.id == task_id).values(updated_at=Task.updated_at))


def host_names(session: Session, ex: Execution) -> set[str]:
    """The hosts an execution works (or will work) on."""
    names = {h.name for h in target_hosts(ex.task, ex.limit_hosts)}
    names.update(
        session.execute(select(Operation.host_name).where(Operation.execution_id == ex.id)).scalars()
    )
    return names


def blocker(session: Session, ex: Execution) -> int | None:
    """The id of a running execution of the same task that ``ex`` must wait for, if any."""
    running = list(
        session.execute(
            select(Execution)
            .where(Execution.task_id == ex.task_id, Execution.status == ExecutionStatus.RUNNING, Execution.id != ex.id)
            .order_by(Execution.id)
        ).scalars()
    )
    if not running:
        return None
    if not ex.task.allow_simultaneous:
        return running[0].id
    mine = host_names(session, ex)
    for other in running:
        if mine & host_names(session, other):
            return other.id
    return None
